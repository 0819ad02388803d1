"""An installed wheel, not a checkout: the shipped recipes, launch configs and sbatch scripts travel inside the
package, `trainwright ls`/`cp` list and copy them, `train` takes a shipped recipe by name, and `sweep --slurm`
finds its script."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, cli_env

pytestmark = pytest.mark.slow
_BUILD_INPUTS = (
    "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "src", "recipes", "accelerate_configs", "slurm",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv holding the built wheel (its dependencies are the test interpreter's, through a .pth file),
    returned as its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in _BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(source), "-w", str(root / "dist")],
                   check=True, cwd=root, env=cli_env())
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run(
        [venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    # A plain path: the .pth files there (the checkout's editable install among them) are not run.
    (site / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel, = (root / "dist").glob("trainwright-*.whl")
    subprocess.run([*pip, "--python", str(venv / "bin/python"), "install", "--no-deps", str(wheel)], check=True,
                   env=cli_env())
    return venv / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(bin_dir / "trainwright"), *args], cwd=cwd, env=cli_env(), capture_output=True, text=True,
                          timeout=300)


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    out = subprocess.run([installed / "python", "-c", "import trainwright; print(trainwright.__file__)"], cwd=tmp_path,
                         env=cli_env(), capture_output=True, text=True, check=True).stdout
    assert Path(out.strip()).is_relative_to(installed.parent), out


def test_ls_lists_the_shipped_files_from_the_package(installed: Path, tmp_path: Path) -> None:
    result = _run(installed, "ls", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("heart", "tiny_gpt", "sweeps/heart_lr_width", "accelerate_configs/fsdp_cpu_2proc.yaml",
                 "slurm/train.sbatch"):
        assert name in result.stdout
    assert f"(from {installed.parent}" in result.stdout


def test_cp_copies_a_recipe_config_and_script_and_never_overwrites(installed: Path, tmp_path: Path) -> None:
    for name, copied in (("heart", "heart.yaml"), ("accelerate_configs/cpu_2proc.yaml", "cpu_2proc.yaml"),
                         ("slurm/train.sbatch", "train.sbatch")):
        result = _run(installed, "cp", name, ".", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        shipped = REPO / ("recipes/heart.yaml" if name == "heart" else name)
        assert (tmp_path / copied).read_bytes() == shipped.read_bytes()
    (tmp_path / "mine.yaml").write_text("my own recipe\n")
    result = _run(installed, "cp", "heart", "mine.yaml", cwd=tmp_path)
    assert result.returncode == 2 and "already exists" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "mine.yaml").read_text() == "my own recipe\n"
    result = _run(installed, "cp", "hart", ".", cwd=tmp_path)
    assert result.returncode == 2 and "did you mean 'heart'" in result.stderr


def test_a_shipped_recipe_trains_by_name_outside_a_checkout(installed: Path, tmp_path: Path) -> None:
    result = _run(installed, "train", "heart", "data.num_points=400", "trainer.epochs=1", "logging.wandb=false",
                  "--run-dir", "runs/heart", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Run complete" in result.stdout + result.stderr
    assert (tmp_path / "runs/heart/model.safetensors").is_file()
    result = _run(installed, "check", "hart", cwd=tmp_path)
    assert result.returncode == 2 and "did you mean 'heart'" in result.stderr


def test_sweep_slurm_finds_the_packaged_train_script(installed: Path, tmp_path: Path) -> None:
    out = subprocess.run([installed / "python", "-c", "from trainwright.tuning.slurm_array import train_script; "
                          "print(train_script())"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                         check=True).stdout
    script = Path(out.strip())
    assert script.is_relative_to(installed.parent) and script.read_bytes() == (REPO / "slurm/train.sbatch").read_bytes()
