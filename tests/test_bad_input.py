"""Bad input gives one `trainwright: error: ...` message, exit code 2 and no traceback.

Most cases call `trainwright.cli.main` in-process (fast); a few run the real CLI as a subprocess
(as module fixtures, see `workflow` in conftest.py).
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest
import torch

from conftest import RECIPES, assert_user_error, house_frame, run_cli, workflow
from trainwright.cli import main

HEART = RECIPES / "heart.yaml"
HOUSE = RECIPES / "house_prices.yaml"
# Small data so that a case which wrongly starts training still ends quickly.
TINY_HEART = ["data.num_points=200", "trainer.epochs=1", "logging.wandb=false"]


def call(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def user_error(capsys, *argv: object, fragments: tuple[str, ...] = ()) -> str:
    code, out, err = call(capsys, *argv)
    message = assert_user_error(code, err, *fragments)
    assert "Run complete" not in out
    return message


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (and '<dir>' for folders)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
        for p in sorted(folder.rglob("*"))
    }


# --- the recipe file ------------------------------------------------------------------------------


@workflow
def missing_recipe_cli(folder: Path):
    return folder, run_cli("train", folder / "nope.yaml", "logging.wandb=false", "--run-dir", folder / "run")


def test_missing_recipe_file_subprocess(missing_recipe_cli):
    folder, result = missing_recipe_cli
    assert_user_error(result.returncode, result.stderr, "not found", str(folder / "nope.yaml"))
    assert not (folder / "run").exists()


@pytest.mark.parametrize("command", ["train", "check"])
def test_recipe_path_is_a_directory(capsys, tmp_path, command):
    extra = ["--run-dir", str(tmp_path / "run")] if command == "train" else []
    user_error(capsys, command, RECIPES, *extra, fragments=(str(RECIPES), "folder"))
    assert not (tmp_path / "run").exists()


def test_yaml_syntax_error_names_file_and_line(capsys, tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("name: heart\nseed: 0\ndata:\n  name: heart: yes\n  batch_size: 64\n")
    message = user_error(capsys, "check", recipe, fragments=(str(recipe), "YAML syntax error"))
    assert "line 4" in message


@workflow
def yaml_error_cli(folder: Path):
    recipe = folder / "broken.yaml"
    lines = HEART.read_text().splitlines()
    lines.insert(7, "  batch_size: [64")  # an unclosed list on line 8
    recipe.write_text("\n".join(lines) + "\n")
    return folder, run_cli("train", recipe, "--run-dir", folder / "run")


def test_yaml_syntax_error_subprocess(yaml_error_cli):
    folder, result = yaml_error_cli
    message = assert_user_error(result.returncode, result.stderr, str(folder / "broken.yaml"), "YAML syntax error")
    assert "line " in message
    assert not (folder / "run").exists()


def test_recipe_that_is_not_a_mapping(capsys, tmp_path):
    recipe = tmp_path / "list.yaml"
    recipe.write_text("- name: heart\n")
    user_error(capsys, "check", recipe, fragments=(str(recipe), "mapping"))


# --- recipe keys and values -----------------------------------------------------------------------


def test_unknown_key_in_file_suggests_the_right_one(capsys, tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(HEART.read_text().replace("optimizer:", "optimiser:"))
    message = user_error(capsys, "check", recipe, fragments=(str(recipe), "optimiser", "did you mean 'optimizer'"))
    assert "optimizer: required key is missing" in message  # the consequence is reported in the same message


def test_unknown_key_in_override_suggests_the_right_one(capsys):
    user_error(capsys, "check", HEART, "trainer.epocs=3", fragments=("trainer.epocs", "did you mean 'epochs'"))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [("model.name=mlpp", "did you mean 'mlp'"), ("optimizer.name=adamm", "did you mean 'adam'"),
     ("loss.name=bce_logits", "did you mean 'bce_with_logits'"), ("data.name=hart", "did you mean 'heart'")],
)
def test_unknown_component_name_suggests_the_right_one(capsys, override, fragment):
    key = override.split("=")[0]
    user_error(capsys, "check", HEART, override, fragments=(key, fragment))


def test_unknown_component_name_via_train(capsys, tmp_path):
    user_error(capsys, "train", HEART, *TINY_HEART, "model.name=mlpp", "--run-dir", tmp_path / "run",
               fragments=("model.name", "did you mean 'mlp'"))
    assert not (tmp_path / "run").exists()


def test_wrong_type_names_key_path_and_file(capsys, tmp_path):
    recipe = tmp_path / "types.yaml"
    recipe.write_text(HEART.read_text().replace("epochs: 3", "epochs: three"))
    user_error(capsys, "check", recipe, fragments=(str(recipe), "trainer.epochs", "three"))


def test_wrong_type_in_override_names_key_path_and_file(capsys):
    user_error(capsys, "check", HEART, "trainer.epochs=many", fragments=(str(HEART), "trainer.epochs", "many"))


def test_out_of_range_values_name_every_key_path_and_the_file(capsys):
    message = user_error(capsys, "check", HEART, "optimizer.lr=-1", "trainer.epochs=0",
                         fragments=(str(HEART), "optimizer.lr", "trainer.epochs"))
    assert "greater than" in message


def test_out_of_range_choice(capsys):
    user_error(capsys, "check", HEART, "trainer.mixed_precision=fp8", fragments=("trainer.mixed_precision", "fp8"))


def test_unknown_model_argument_suggests_the_right_one(capsys):
    user_error(capsys, "check", HEART, "model.hiden=[8]",
               fragments=("model.hiden", "unknown argument for model 'mlp'", "did you mean 'hidden'"))


def test_a_misspelt_optimizer_lr_suggests_lr_and_lists_it(capsys):
    """lr is the optimizer's argument too (trainwright passes it from optimizer.lr)."""
    message = user_error(capsys, "check", HEART, "optimizer.lrr=0.1",
                         fragments=("optimizer.lrr", "unknown argument for optimizer 'sgd'", "did you mean 'lr'?"))
    assert "(it takes: lr, momentum" in message


@pytest.mark.parametrize("hidden", ["[0]", "[8, 0]", "[-4]"])
def test_an_mlp_layer_of_no_units_is_refused(capsys, tmp_path, hidden):
    """A layer of 0 units cuts the model off from its input: it would train on nothing but the last bias."""
    user_error(capsys, "train", HEART, *TINY_HEART, f"model.hidden={hidden}", "--run-dir", tmp_path / "run",
               fragments=("model.hidden", "at least 1 unit", hidden.replace(" ", "").replace(",", ", ")))
    assert not (tmp_path / "run").exists()


def test_unknown_model_argument_via_train(capsys, tmp_path):
    user_error(capsys, "train", HEART, *TINY_HEART, "model.dropout=0.5", "--run-dir", tmp_path / "run",
               fragments=("model.dropout", "unknown argument"))


@pytest.mark.parametrize("override", ["trainer.epochs", "=3", "trainer..epochs=3", ".epochs=3", "seed.value=3"])
def test_bad_override_syntax(capsys, override):
    user_error(capsys, "check", HEART, override, fragments=("bad override", override))


# --- data -------------------------------------------------------------------------------------------


@workflow
def fashion_missing_cli(folder: Path):
    root = folder / "empty"
    root.mkdir()
    return root, run_cli("train", RECIPES / "fashion_mnist_mlp.yaml", f"data.root={root}", "logging.wandb=false",
                         "--run-dir", folder / "run")


def test_fashion_mnist_missing_subprocess(fashion_missing_cli):
    """No files and no download: say where the files must be, and that downloading needs the network."""
    root, result = fashion_missing_cli
    message = assert_user_error(
        result.returncode, result.stderr, str(root / "FashionMNIST" / "raw"), "train-images-idx3-ubyte", "network",
    )
    assert "data.download" in message
    assert list(root.iterdir()) == []  # nothing was downloaded or created


def _house_csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "houses.csv"
    path.write_text(text)
    return path


def _train_house(capsys, tmp_path, csv_path: Path, *extra: str, fragments: tuple[str, ...]) -> str:
    return user_error(capsys, "train", HOUSE, f"data.path={csv_path}", "logging.wandb=false", *extra,
                      "--run-dir", tmp_path / "run", fragments=fragments)


def test_csv_non_numeric_value_in_numeric_column(capsys, tmp_path):
    frame = house_frame(30)
    frame["NumRooms"] = frame["NumRooms"].astype(object)
    frame.loc[5, "NumRooms"] = "three"
    path = tmp_path / "houses.csv"
    frame.to_csv(path, index=False)
    message = _train_house(capsys, tmp_path, path, fragments=(str(path), "NumRooms", "three"))
    assert "line 7" in message  # header is line 1, so data row 5 is line 7


def test_csv_non_numeric_value_in_target_column(capsys, tmp_path):
    path = _house_csv(tmp_path, "NumRooms,Alley,Price\n2,Pave,100\n3,,lots\n4,Grvl,300\n")
    _train_house(capsys, tmp_path, path, fragments=("Price", "lots"))


def test_csv_missing_target_column_suggests_the_right_one(capsys, tmp_path):
    frame = house_frame(30).rename(columns={"Price": "Prices"})
    path = tmp_path / "houses.csv"
    frame.to_csv(path, index=False)
    _train_house(capsys, tmp_path, path, fragments=("data.target", "'Price'", str(path), "did you mean 'Prices'"))


def test_csv_missing_feature_column_suggests_the_right_one(capsys, tmp_path):
    frame = house_frame(30).rename(columns={"Alley": "Aley"})
    path = tmp_path / "houses.csv"
    frame.to_csv(path, index=False)
    _train_house(capsys, tmp_path, path, fragments=("data.categorical", "'Alley'", "did you mean 'Aley'"))


def test_malformed_csv(capsys, tmp_path):
    path = _house_csv(tmp_path, "NumRooms,Alley,Price\n2,Pave,100\n3,Grvl,200,oops,more\n4,,300\n")
    _train_house(capsys, tmp_path, path, fragments=(str(path), "parse"))


def test_empty_csv(capsys, tmp_path):
    path = _house_csv(tmp_path, "")
    _train_house(capsys, tmp_path, path, fragments=(str(path), "empty"))


def test_csv_file_not_found(capsys, tmp_path):
    _train_house(capsys, tmp_path, tmp_path / "nowhere.csv", fragments=("data.path", "nowhere.csv", "not found"))


def test_batch_size_larger_than_the_data_set(capsys, tmp_path):
    # 100 points, 80 of them for training: a global batch of 128 can never be filled.
    user_error(capsys, "train", HEART, "data.num_points=100", "data.batch_size=128", "logging.wandb=false",
               "--run-dir", tmp_path / "run", fragments=("data.batch_size=128", "80"))
    assert not (tmp_path / "run" / "model.safetensors").exists()


# --- run dirs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["eval", "predict", "plot"])
def test_command_on_a_folder_that_is_not_a_run(capsys, tmp_path, command):
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine\n")
    before = snapshot(folder)
    user_error(capsys, command, folder, fragments=(str(folder), "not a trainwright run dir"))
    assert snapshot(folder) == before  # plot must not create plots/ in someone else's folder


@pytest.mark.parametrize("command", ["eval", "predict", "plot"])
def test_command_on_a_missing_folder(capsys, tmp_path, command):
    user_error(capsys, command, tmp_path / "missing", fragments=("run dir not found", "missing"))
    assert not (tmp_path / "missing").exists()


def _users_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "my_stuff"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.txt").write_text("years of work\n")
    (folder / "sub" / "data.csv").write_text("a,b\n1,2\n")
    (folder / "metrics.jsonl").write_text('{"mine": true}\n')  # a file name a run would also use
    return folder


@pytest.mark.parametrize("flags", [[], ["--restart"]], ids=["plain", "restart"])
def test_run_dir_that_is_a_foreign_folder_is_refused_and_left_alone(capsys, tmp_path, flags):
    folder = _users_folder(tmp_path)
    before = snapshot(folder)
    siblings = sorted(p.name for p in tmp_path.iterdir())
    user_error(capsys, "train", HEART, *TINY_HEART, "--run-dir", folder, *flags,
               fragments=(str(folder), "not a trainwright run dir"))
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == siblings  # not renamed or set aside either


@workflow
def foreign_run_dir_cli(parent: Path):
    folder = _users_folder(parent)
    before = snapshot(folder)
    return parent, before, run_cli("train", HEART, *TINY_HEART, "--run-dir", folder, "--restart")


def test_run_dir_that_is_a_foreign_folder_subprocess(foreign_run_dir_cli):
    parent, before, result = foreign_run_dir_cli
    folder = parent / "my_stuff"
    assert_user_error(result.returncode, result.stderr, str(folder), "not a trainwright run dir")
    assert snapshot(folder) == before
    assert sorted(p.name for p in parent.iterdir()) == ["my_stuff"]


def test_run_dir_that_is_a_file_is_refused(capsys, tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("keep me\n")
    user_error(capsys, "train", HEART, *TINY_HEART, "--run-dir", path, fragments=(str(path),))
    assert path.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt"]


def test_resume_from_a_missing_checkpoint(capsys, tmp_path):
    user_error(capsys, "train", HEART, *TINY_HEART, "--run-dir", tmp_path / "run", "--resume", tmp_path / "ckpt",
               fragments=("--resume", "ckpt"))


def test_override_value_that_is_broken_yaml(capsys):
    user_error(capsys, "check", HEART, "model.hidden=[8,", fragments=("model.hidden=[8,", "not valid YAML"))


@pytest.mark.parametrize("count", ["0", "-1"])
def test_predict_needs_a_positive_count(capsys, tmp_path, count):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(tmp_path), "-n", count])
    assert exit_info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


# Each damage has its own message: what is wrong, where, and what to do.
FASHION_DAMAGES = {
    "truncated": ("train-images-idx3-ubyte is damaged or truncated", "1000x28x28 values, it holds 984", "replace it"),
    "not_idx": ("train-images-idx3-ubyte is not an IDX file of unsigned bytes (bad header)", "replace it"),
    "not_gzip": ("cannot read", "train-images-idx3-ubyte.gz", "Not a gzipped file", "replace the damaged file"),
    "truncated_gzip": ("cannot read", "train-images-idx3-ubyte.gz", "ended before", "replace the damaged file"),
}


@pytest.mark.parametrize("damage", sorted(FASHION_DAMAGES))
def test_damaged_fashion_mnist_files(capsys, tmp_path, damage):
    from conftest import write_fashion_mnist

    write_fashion_mnist(tmp_path)
    raw = tmp_path / "FashionMNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    if damage == "truncated":
        images.write_bytes(images.read_bytes()[:1000])
    elif damage == "not_idx":
        images.write_bytes(b"<html>not found</html>" * 10)
    else:  # only the .gz of the official download is there, and it is damaged
        packed = gzip.compress(images.read_bytes())
        images.unlink()
        (raw / "train-images-idx3-ubyte.gz").write_bytes(
            b"<html>not found</html>" if damage == "not_gzip" else packed[:500]
        )
    message = user_error(
        capsys, "train", RECIPES / "fashion_mnist_mlp.yaml", f"data.root={tmp_path}", "logging.wandb=false",
        "--run-dir", tmp_path / "run", fragments=(str(raw), *FASHION_DAMAGES[damage]),
    )
    assert "()" not in message and "not found:" not in message
    assert not images.with_name(images.name + ".tmp").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="in process, the GPU is visible: fp16 runs there")
def test_fp16_on_the_cpu_is_refused(capsys, tmp_path):
    user_error(
        capsys, "train", HEART, *TINY_HEART, "trainer.mixed_precision=fp16", "--run-dir", tmp_path / "run",
        fragments=("fp16 needs a GPU",),
    )
