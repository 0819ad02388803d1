"""Temporary names never collide with users' files (issue 26, item 2): every temporary file or folder is made
with O_EXCL and a random part, beside its target, so a user's file at a name an older trainwright used
(`out.csv.tmp`, `.out.incomplete`) or at any other name survives untouched, and trainwright removes only what it
made. An output named by the user that appears while it is written is left as it is (one message)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from reliability_helpers import HEART, TINY, call, snapshot, train_ok
from trainwright.errors import UserError
from trainwright.run.files import atomic_open, atomic_path, is_temporary, publish_dir, temporary_beside

USER = "the user's own file\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    from trainwright.cli import main

    run_dir = tmp_path_factory.mktemp("heart") / "run"
    assert main(["train", str(HEART), *TINY, "--run-dir", str(run_dir)]) == 0
    return run_dir


def _users_files(folder: Path, *names: str) -> dict[str, str]:
    """A user's file at each name (a folder with a file for names ending in '/'); their snapshot."""
    for name in names:
        if name.endswith("/"):
            (folder / name).mkdir()
            (folder / name / "keep.txt").write_text(USER)
        else:
            (folder / name).write_text(USER)
    return snapshot(folder)


def _unchanged_but(folder: Path, before: dict[str, str], *made: str) -> None:
    """Every file of `before` is there as it was; the only new entries are `made` (and what they hold)."""
    after = snapshot(folder)
    assert {key: after.get(key) for key in before} == before
    assert {key.split("/")[0] for key in after.keys() - before.keys()} == set(made)


def test_predict_leaves_a_users_file_at_an_old_temporary_name(capsys, tmp_path, finished):
    (tmp_path / "pts.csv").write_text("x,y\n0.5,0.5\n-1,0.25\n")
    before = _users_files(tmp_path, "out2.csv.tmp", ".out2.csv.tmp", ".out2.csv.incomplete")
    code, out, err = call(
        capsys, "predict", finished, "--input", tmp_path / "pts.csv", "--output", tmp_path / "out2.csv"
    )
    assert code == 0, err
    _unchanged_but(tmp_path, before, "out2.csv")
    rows = list(csv.DictReader((tmp_path / "out2.csv").open()))
    assert [row["id"] for row in rows] == ["0", "1"] and all(row["prediction"] for row in rows)


def test_export_leaves_a_users_file_at_an_old_temporary_name(capsys, tmp_path, finished):
    before = _users_files(tmp_path, "w.safetensors.tmp", ".w.safetensors.tmp")
    code, _, err = call(capsys, "export", finished, "--out", tmp_path / "w.safetensors")
    assert code == 0, err
    _unchanged_but(tmp_path, before, "w.safetensors")
    assert load_file(tmp_path / "w.safetensors").keys() == load_file(finished / "model.safetensors").keys()


def test_plot_leaves_a_users_file_at_an_old_temporary_name(capsys, finished):
    plots = finished / "plots"
    plots.mkdir(exist_ok=True)
    for name in plots.iterdir():
        name.unlink()
    before = _users_files(plots, "loss_curves.png.tmp", "predictions.png.tmp", "confusion_matrix.png.tmp")
    code, _, err = call(capsys, "plot", finished)
    assert code == 0, err
    _unchanged_but(plots, before, "loss_curves.png", "predictions.png", "confusion_matrix.png")
    assert (plots / "loss_curves.png").read_bytes().startswith(b"\x89PNG")


def test_export_hf_leaves_a_users_folder_at_an_old_temporary_name(capsys, tmp_path):
    import transformers

    from test_hf_models import RECIPE

    recipe = tmp_path / "hf.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "trainer": {"max_steps": 2}, "checkpoint": {"every_steps": 2}}))
    train_ok(capsys, recipe, "--run-dir", tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    before = _users_files(out, ".gpt2.incomplete/", ".gpt2.incomplete-replaced/", "gpt2.tmp", ".gpt2.tmp")
    code, _, err = call(capsys, "export", tmp_path / "run", "--out", out / "gpt2", "--hf")
    assert code == 0, err
    _unchanged_but(out, before, "gpt2")
    assert (out / "gpt2").stat().st_mode & 0o777 == 0o777 & ~_umask()
    model = transformers.AutoModelForCausalLM.from_pretrained(out / "gpt2", local_files_only=True)
    assert model.config.n_layer == 2


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


# --- files.py -----------------------------------------------------------------------------------------------


def test_temporary_names_are_new_and_random(tmp_path):
    target = tmp_path / "x.json"
    first, second = temporary_beside(target), temporary_beside(target, folder=True)
    assert first != second and first.parent == second.parent == tmp_path
    assert is_temporary(first.name) and is_temporary(second.name) and first.name.startswith(".x.json.")
    assert first.is_file() and first.stat().st_size == 0 and second.is_dir()
    long = temporary_beside(tmp_path / ("n" * 255))  # a name at the system's limit still gets a temporary
    assert len(long.name) <= 255


@pytest.mark.parametrize("appears", ["file", "dangling link", "folder"])
def test_an_output_that_appears_while_it_is_written_is_left_as_it_is(tmp_path, appears):
    target = tmp_path / "out.csv"

    def make() -> None:
        if appears == "file":
            target.write_text(USER)
        elif appears == "folder":
            target.mkdir()
        else:
            target.symlink_to(tmp_path / "nowhere")

    with pytest.raises(UserError, match=f"{target} was made by something else while trainwright wrote it"):
        with atomic_open(target, replace=False) as file:
            file.write("rows\n")
            make()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]
    assert target.read_text() == USER if appears == "file" else os.path.lexists(target)
    folder = temporary_beside(tmp_path / "hf", folder=True)
    (tmp_path / "hf").mkdir()
    with pytest.raises(UserError, match="was made by something else"):
        publish_dir(folder, tmp_path / "hf")
    assert list((tmp_path / "hf").iterdir()) == []


def test_a_failed_write_removes_only_its_own_temporary_file(tmp_path):
    before = _users_files(tmp_path, "out.csv.tmp", ".out.csv.tmp", ".out.csv.abcdefgh.tmp")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("the writer failed")
    assert snapshot(tmp_path) == before
