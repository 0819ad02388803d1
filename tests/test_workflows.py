"""End to end: every shipped recipe trained on tiny data through the real CLI (`python -m trainwright`).

Each workflow trains once (a module fixture, see `workflow` in conftest.py), and several tests
read the same run.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import (
    FASHION_CLASSES,
    RECIPES,
    REPO,
    assert_ok,
    checkpoint_dir,
    checkpoint_problem,
    checkpoint_steps,
    cli_env,
    describe,
    read_jsonl,
    run_cli,
    workflow,
    write_fashion_mnist,
)
from trainwright.cli import main

STARTUP_LINE = "world_size=1 device=cpu precision=no strategy=ddp"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

# The recipe schema's defaults as the recipe reference (docs/recipes.md) lists them (written out here, not read
# from src/). `metrics: null` stands for "the task's default" (accuracy for classifiers, mae for regression).
README_DEFAULTS = {
    "seed": 0,
    "data": {"collate": None, "num_workers": 0, "prefetch_factor": None, "val_splits": None},
    "model": {"freeze": None},
    "adapter": None,
    "step": None,
    "optimizer": {"groups": None, "no_decay": False},
    "scheduler": {"name": "none"},
    "metrics": None,
    "trainer": {"epochs": 1, "max_steps": None, "mixed_precision": "auto", "grad_accum_steps": 1, "grad_clip": None,
                "log_every_steps": 50, "eval_every_epochs": 1, "eval_every_steps": None, "test_at_end": True,
                "record_samples": False,
                "compile": False, "compile_mode": "default", "deterministic": True, "early_stopping": None, "ema": None,
                "profile": None},
    "checkpoint": {"every_steps": None, "every_epochs": 1, "keep_last": 2, "keep_best": 0, "monitor": "val/loss",
                   "mode": "min", "async": True},
    "logging": {"wandb": {"mode": "auto", "project": "trainwright", "entity": None, "tags": [], "group": None,
                          "name": None, "notes": None, "job_type": None, "init_timeout": 10.0},
                "tensorboard": False, "progress": "auto", "peak_tflops": None},
    "distributed": {"strategy": "auto", "shard_modules": None, "reshard_after_forward": True,
                    "activation_checkpointing": None},
    "cv": None,
    "callbacks": None,
}


def _merge(base: dict, over: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in over.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def resolved_recipe(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """What `check` prints and `train` saves, worked out from the README: the YAML file, then the overrides
    (`key.path=value`, the value parsed as YAML), then the defaults for every key not given."""
    recipe = yaml.safe_load(path.read_text())
    for item in overrides:
        key, _, value = item.partition("=")
        *parents, last = key.split(".")
        section = recipe
        for name in parents:
            section = section.setdefault(name, {})
        section[last] = yaml.safe_load(value)
    for section in ("data", "model", "loss", "optimizer", "scheduler"):  # a component argument set to null is removed
        if isinstance(recipe.get(section), dict):
            recipe[section] = {k: v for k, v in recipe[section].items() if v is not None}
    wandb = recipe.get("logging", {}).get("wandb")
    if isinstance(wandb, bool):  # `logging.wandb: false` is short for `mode: disabled`, `true` for `mode: auto`
        recipe["logging"]["wandb"] = {"mode": "auto" if wandb else "disabled"}
    return _merge(README_DEFAULTS, recipe)


def file_contents(run_dir: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file in a run dir."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


# --- heart ----------------------------------------------------------------------------------------

HEART_OVERRIDES = [
    "data.num_points=4000",  # 3200 train / 800 val points instead of 100k
    "trainer.epochs=3",
    "data.batch_size=16",  # 200 steps per epoch: with the shipped 64 the small data set stops at ~84% accuracy
    "logging.wandb=false",
]
HEART_STEPS = 3 * (4000 * 8 // 10) // 16  # 600
PREDICT_HEART = re.compile(
    r"^\((-?\d+\.\d\d), (-?\d+\.\d\d)\) Predicted: (inside|outside) \(p=(\d\.\d\d)\), Actual: (inside|outside)$"
)


@workflow
def heart(folder: Path) -> dict:
    """Train heart, then run predict, plot, eval and the same train command again."""
    run_dir = folder / "run"
    train_args = ["train", "recipes/heart.yaml", *HEART_OVERRIDES, "--run-dir", run_dir]
    result = {"dir": run_dir, "train": run_cli(*train_args), "recipe": "heart", "overrides": HEART_OVERRIDES}
    if result["train"].returncode == 0:
        result["before_rerun"] = file_contents(run_dir)
        result["rerun"] = run_cli(*train_args)
        result["after_rerun"] = file_contents(run_dir)
        result["predict"] = run_cli("predict", run_dir, "-n", "5")
        result["plot_started_ns"] = time.time_ns()
        result["plot"] = run_cli("plot", run_dir)
        result["eval"] = run_cli("eval", run_dir)
    return result


def trained(job: dict) -> dict:
    """A workflow's results, once its training is known to have succeeded."""
    assert_ok(job["train"])
    return job


def test_heart_train_output(heart):
    heart = trained(heart)
    lines = heart["train"].stdout.splitlines()
    assert STARTUP_LINE in lines, describe(heart["train"])
    assert re.search(rf"^Run complete at step {HEART_STEPS}: .*val/accuracy=[01]\.\d{{4}}", heart["train"].stdout, re.M)
    assert f"Run dir: {heart['dir']}" in lines


def test_heart_run_dir_holds_the_resolved_recipe(heart):
    heart = trained(heart)
    saved = yaml.safe_load((heart["dir"] / "recipe.yaml").read_text())
    assert saved == resolved_recipe(RECIPES / "heart.yaml", HEART_OVERRIDES)
    assert saved["data"]["num_points"] == 4000 and saved["data"]["batch_size"] == 16
    assert saved["trainer"]["epochs"] == 3
    assert saved["logging"]["wandb"]["mode"] == "disabled"
    # resolved: defaults the YAML file never mentions are written out
    assert saved["trainer"]["mixed_precision"] == "auto"
    assert saved["scheduler"] == {"name": "none"}
    assert saved["optimizer"] == {"name": "sgd", "lr": 0.01, "groups": None, "no_decay": False, "momentum": 0.9}


def test_heart_metrics_jsonl(heart):
    heart = trained(heart)
    records = read_jsonl(heart["dir"] / "metrics.jsonl")
    assert records
    for record in records:
        assert isinstance(record["step"], int) and isinstance(record["epoch"], int)
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in record.values())
    keys = set().union(*records)
    assert {"train/loss", "val/loss", "val/accuracy", "train/epoch_seconds", "train/samples_per_second", "lr"} <= keys
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)

    val = [r for r in records if "val/loss" in r]
    assert [(r["step"], r["epoch"]) for r in val] == [(200, 1), (400, 2), (600, 3)]
    assert all(0.0 <= r["val/accuracy"] <= 1.0 for r in val)
    assert val[-1]["val/loss"] < val[0]["val/loss"]  # it learned

    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [100, 200, 300, 400, 500, 600]  # trainer.log_every_steps: 100
    assert all(r["lr"] == 0.01 for r in train)  # no scheduler
    assert train[-1]["train/loss"] < train[0]["train/loss"]

    timing = [r for r in records if "train/epoch_seconds" in r]
    assert [r["epoch"] for r in timing] == [1, 2, 3]  # one record per epoch, the last one included
    for r in timing:
        assert r["train/epoch_seconds"] > 0 and r["train/samples_per_second"] > 0
        assert r["step"] == 200 * r["epoch"]  # logged at the end of its epoch


def test_heart_summary_and_accuracy(heart):
    heart = trained(heart)
    summary = json.loads((heart["dir"] / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["step"] == HEART_STEPS and summary["epoch"] == 3
    assert summary["val/accuracy"] >= 0.95  # the all-"outside" answer scores ~0.77
    last_val = [r for r in read_jsonl(heart["dir"] / "metrics.jsonl") if "val/loss" in r][-1]
    assert summary["val/loss"] == pytest.approx(last_val["val/loss"])
    assert summary["val/accuracy"] == pytest.approx(last_val["val/accuracy"])


def test_heart_model_file_and_checkpoints(heart):
    heart = trained(heart)
    run_dir = heart["dir"]
    with safe_open(run_dir / "model.safetensors", "pt") as weights:
        metadata = weights.metadata()
    assert metadata["recipe"] == "heart"
    assert metadata["trainwright_version"] == VERSION

    folders = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert folders and all(re.fullmatch(r"step_\d{8}", name) for name in folders), folders
    assert folders[-1] == f"step_{HEART_STEPS:08d}"
    assert len(folders) <= 2  # checkpoint.keep_last: 2
    for name in folders:
        assert (run_dir / "checkpoints" / name / "manifest.json").is_file()
    # the final weights are those of the last checkpoint
    final = load_file(run_dir / "model.safetensors")
    saved = load_file(run_dir / "checkpoints" / folders[-1] / "model.safetensors")
    assert final.keys() == saved.keys() and final
    assert all(torch.equal(final[k], saved[k]) for k in final)


def _heart_val_points(num_points: int = 4000, seed: int = 123) -> torch.Tensor:
    """The heart data set as documented: uniform in [-2, 2]^2 from its seed, the last 20% for validation."""
    points = torch.rand(num_points, 2, generator=torch.Generator().manual_seed(seed)) * 4 - 2
    return points[int(round(num_points * 0.8)):]


def test_heart_predict(heart):
    heart = trained(heart)
    result = assert_ok(heart["predict"])
    lines = result.stdout.splitlines()
    assert len(lines) == 5, describe(result)
    points = _heart_val_points()
    for i, line in enumerate(lines):
        match = PREDICT_HEART.match(line)
        assert match, line
        x, y, predicted, p, actual = match.groups()
        assert float(x) == pytest.approx(points[i, 0].item(), abs=0.006)
        assert float(y) == pytest.approx(points[i, 1].item(), abs=0.006)
        px, py = points[i].double().tolist()
        assert actual == ("inside" if (px**2 + py**2 - 1) ** 3 - px**2 * py**3 < 0 else "outside"), line
        assert (float(p) >= 0.5) if predicted == "inside" else (float(p) <= 0.5), line  # p = P(inside)


def test_heart_plot(heart):
    heart = trained(heart)
    result = assert_ok(heart["plot"])
    pngs = sorted((heart["dir"] / "plots").glob("*.png"))
    assert {p.name for p in pngs} >= {"loss_curves.png", "predictions.png"}
    for png in pngs:
        assert png.read_bytes().startswith(PNG_SIGNATURE) and png.stat().st_size > 5000
        assert str(png) in result.stdout
        assert png.stat().st_mtime_ns >= heart["plot_started_ns"] - 10_000_000  # written by `plot` (not by train)


def test_heart_eval(heart):
    heart = trained(heart)
    result = assert_ok(heart["eval"])
    metrics = json.loads(result.stdout)
    summary = json.loads((heart["dir"] / "summary.json").read_text())
    assert set(metrics) == {"val/loss", "val/accuracy"}  # heart has no test split
    assert metrics["val/accuracy"] == pytest.approx(summary["val/accuracy"])
    assert metrics["val/loss"] == pytest.approx(summary["val/loss"], rel=1e-5)


def test_heart_train_again_is_already_complete(heart):
    heart = trained(heart)
    result = assert_ok(heart["rerun"])
    assert "was already complete" in result.stdout
    assert f"at step {HEART_STEPS}" in result.stdout
    assert STARTUP_LINE not in result.stdout  # nothing was trained
    before, after = heart["before_rerun"], heart["after_rerun"]
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"running the finished run again changed {changed}"


# --- linear regression ----------------------------------------------------------------------------

PREDICT_LINEAR = re.compile(r"^x=(\d\.\d\d) Predicted: (-?\d+\.\d{3}), Actual: (-?\d+\.\d{3})$")


@workflow
def linear(folder: Path) -> dict:
    """The linear_regression recipe as shipped (full batch, 800 epochs), then predict."""
    run_dir = folder / "run"
    overrides = ["logging.wandb=false"]
    train = run_cli("train", "recipes/linear_regression.yaml", *overrides, "--run-dir", run_dir)
    return {"dir": run_dir, "train": train, "predict": run_cli("predict", run_dir, "-n", "4"),
            "recipe": "linear_regression", "overrides": overrides}


def test_linear_regression_learns_the_line(linear):
    linear = trained(linear)
    assert STARTUP_LINE in linear["train"].stdout.splitlines()
    weights = load_file(linear["dir"] / "model.safetensors")
    assert set(weights) == {"weight", "bias"}
    assert weights["weight"].item() == pytest.approx(0.7, abs=0.02)
    assert weights["bias"].item() == pytest.approx(0.3, abs=0.02)
    summary = json.loads((linear["dir"] / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["step"] == 800
    assert summary["val/mae"] < 0.02


def test_linear_regression_lr_decays_on_a_cosine(linear):
    """The recipe's `scheduler: cosine` (no warm-up): lr 0.01 * (1 + cos(pi * step / 800)) / 2, 0 at the end."""
    linear = trained(linear)
    logged = {r["step"]: r["lr"] for r in read_jsonl(linear["dir"] / "metrics.jsonl") if "lr" in r}
    assert sorted(logged) == list(range(20, 801, 20))  # trainer.log_every_steps: 20
    for step, lr in logged.items():
        assert lr == pytest.approx(0.01 * (1 + math.cos(math.pi * step / 800)) / 2, rel=1e-6, abs=1e-12), step


def test_linear_regression_predict(linear):
    linear = trained(linear)
    lines = assert_ok(linear["predict"]).stdout.splitlines()
    assert len(lines) == 4
    for i, line in enumerate(lines):
        match = PREDICT_LINEAR.match(line)
        assert match, line
        x, predicted, actual = map(float, match.groups())
        assert x == pytest.approx(0.8 + 0.02 * i)  # validation: the last 20% of arange(0, 1, 0.02)
        assert actual == pytest.approx(0.7 * x + 0.3, abs=0.0011)
        assert predicted == pytest.approx(actual, abs=0.03)


# --- FashionMNIST (synthetic IDX files) -----------------------------------------------------------

PREDICT_FASHION = re.compile(r'^Predicted: "(.+)", Actual: "(.+)"$')


@workflow
def fashion_mlp(folder: Path) -> dict:
    """fashion_mnist_mlp on synthetic FashionMNIST files, then predict."""
    root = folder / "data"
    test_labels = write_fashion_mnist(root)
    run_dir = folder / "run"
    overrides = [
        f"data.root={root}", "logging.wandb=false",
        # 2 epochs of 1000 images (31 steps) instead of 5 of 60000: the shipped plain SGD at lr 0.001 barely
        # moves in 31 steps, so the learning rate is raised to 0.2.
        "trainer.epochs=2", "optimizer.lr=0.2",
    ]
    train = run_cli("train", "recipes/fashion_mnist_mlp.yaml", *overrides, "--run-dir", run_dir)
    return {
        "dir": run_dir,
        "train": train,
        "test_labels": test_labels,
        "predict": run_cli("predict", run_dir, "-n", "20"),
        "recipe": "fashion_mnist_mlp",
        "overrides": overrides,
    }


def test_fashion_mnist_mlp_learns(fashion_mlp):
    fashion_mlp = trained(fashion_mlp)
    summary = json.loads((fashion_mlp["dir"] / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["val/accuracy"] >= 0.9  # chance is 0.1


def test_fashion_mnist_mlp_predict(fashion_mlp):
    fashion_mlp = trained(fashion_mlp)
    test_labels = fashion_mlp["test_labels"]
    lines = assert_ok(fashion_mlp["predict"]).stdout.splitlines()
    assert len(lines) == 20
    right = 0
    for i, line in enumerate(lines):
        match = PREDICT_FASHION.match(line)
        assert match, line
        predicted, actual = match.groups()
        assert predicted in FASHION_CLASSES
        assert actual == FASHION_CLASSES[test_labels[i]]  # the test split, in file order
        right += predicted == actual
    assert right >= 16


@workflow
def fashion_lenet(folder: Path) -> dict:
    """fashion_mnist_lenet on synthetic FashionMNIST files, then eval and plot."""
    root = folder / "data"
    write_fashion_mnist(root)
    run_dir = folder / "run"
    overrides = [
        f"data.root={root}", "logging.wandb=false",
        # 2 epochs with batches of 32 (62 steps): with the shipped 256 there would be only 3 steps per epoch.
        "trainer.epochs=2", "data.batch_size=32",
    ]
    train = run_cli("train", "recipes/fashion_mnist_lenet.yaml", *overrides, "--run-dir", run_dir)
    result = {"dir": run_dir, "train": train, "recipe": "fashion_mnist_lenet", "overrides": overrides}
    if train.returncode == 0:
        result["eval"] = run_cli("eval", run_dir)
        result["plot_started_ns"] = time.time_ns()
        result["plot"] = run_cli("plot", run_dir)
    return result


def test_fashion_mnist_lenet_eval(fashion_lenet):
    fashion_lenet = trained(fashion_lenet)
    metrics = json.loads(assert_ok(fashion_lenet["eval"]).stdout)
    assert set(metrics) == {"test/loss", "test/accuracy"}
    assert metrics["test/accuracy"] >= 0.9
    summary = json.loads((fashion_lenet["dir"] / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert metrics["test/accuracy"] == pytest.approx(summary["val/accuracy"])  # FashionMNIST validates on test


def assert_plots(job: dict, names: set[str]) -> None:
    """`plot` wrote exactly these PNG files into plots/ (after it started) and printed their paths."""
    result = assert_ok(job["plot"])
    printed = result.stdout.split()
    pngs = sorted((job["dir"] / "plots").glob("*.png"))
    assert {p.name for p in pngs} == names, describe(result)
    assert sorted(printed) == sorted(str(p) for p in pngs), describe(result)
    for png in pngs:
        assert png.read_bytes().startswith(PNG_SIGNATURE) and png.stat().st_size > 5000
        assert png.stat().st_mtime_ns >= job["plot_started_ns"] - 10_000_000  # written by `plot`


def test_fashion_mnist_lenet_plot(fashion_lenet):
    # predictions: a grid of images; a classifier's confusion matrix too
    assert_plots(trained(fashion_lenet), {"loss_curves.png", "predictions.png", "confusion_matrix.png"})


# --- house prices (CSV with missing values) -------------------------------------------------------


HOUSE_CSV = REPO / "examples" / "house_prices.csv"
PREDICT_HOUSE = re.compile(
    r"^NumRooms=(NA|\d+\.\d+), Alley=(NA|\w+) Predicted: (-?\d+\.\d), Actual: (-?\d+\.\d)$"
)


@workflow
def house_prices(folder: Path) -> dict:
    """house_prices as shipped, on the shipped examples/house_prices.csv (missing values in NumRooms and
    Alley), then predict and plot."""
    run_dir = folder / "run"
    overrides = ["logging.wandb=false"]
    train = run_cli("train", "recipes/house_prices.yaml", *overrides, "--run-dir", run_dir)
    result = {"dir": run_dir, "train": train, "recipe": "house_prices", "overrides": overrides}
    if train.returncode == 0:
        result["predict"] = run_cli("predict", run_dir, "-n", "10")
        result["plot_started_ns"] = time.time_ns()
        result["plot"] = run_cli("plot", run_dir)
    return result


def _house_rows() -> list[dict]:
    with HOUSE_CSV.open(newline="") as file:
        return list(csv.DictReader(file))


def test_house_prices_trains_on_a_csv_with_missing_values(house_prices):
    run_dir, result = house_prices["dir"], assert_ok(house_prices["train"])
    rows = _house_rows()
    assert any(r["NumRooms"] == "NA" for r in rows) and any(r["Alley"] == "NA" for r in rows)
    assert re.search(r"^Run complete at step 600: .*val/mae=\d+\.\d{4}", result.stdout, re.M), describe(result)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"  # 160 training rows / 16 = 10 steps per epoch, 60 epochs
    # reported in the price's own units, and better than always guessing the mean price
    prices = np.array([float(r["Price"]) for r in rows])
    baseline = np.abs(prices - prices.mean()).mean()
    assert 100 < summary["val/mae"] < 0.6 * baseline
    val = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "val/mae" in r]
    assert [r["epoch"] for r in val] == list(range(5, 61, 5))  # trainer.eval_every_epochs: 5


def test_house_prices_predict_in_the_data_units(house_prices):
    house_prices = trained(house_prices)
    lines = assert_ok(house_prices["predict"]).stdout.splitlines()
    assert len(lines) == 10
    rows = _house_rows()
    matched, errors = set(), []
    for line in lines:
        match = PREDICT_HOUSE.match(line)
        assert match, line
        rooms, alley, predicted, actual = match.groups()
        same = [
            i
            for i, r in enumerate(rows)
            if abs(float(r["Price"]) - float(actual)) < 0.1
            and r["Alley"] == alley
            and (
                r["NumRooms"] == "NA"
                if rooms == "NA"
                else r["NumRooms"] != "NA" and float(r["NumRooms"]) == float(rooms)
            )
        ]
        assert same, f"{line}: no such row in {HOUSE_CSV}"
        matched.add(same[0])
        errors.append(abs(float(predicted) - float(actual)))
    assert len(matched) == 10  # ten different rows of the CSV
    summary = json.loads((house_prices["dir"] / "summary.json").read_text())
    assert np.mean(errors) < 3 * summary["val/mae"]  # predictions in dollars, about as good as validation said


def test_house_prices_plot(house_prices):
    assert_plots(trained(house_prices), {"loss_curves.png", "predictions.png"})  # predictions: predicted vs actual


@workflow
def tiny_gpt(folder: Path) -> dict:
    """tiny_gpt on its default corpus (the stdlib's source), smaller, then predict --prompt and plot."""
    run_dir = folder / "run"
    overrides = [
        "logging.wandb=false",
        # 60 kB and 2 epochs (about 50 steps) instead of 300 kB and 4.
        "data.max_bytes=60000", "trainer.epochs=2", "scheduler.warmup_steps=5",
    ]
    env = cli_env(TRAINWRIGHT_CACHE=str(folder / "cache"))
    train = run_cli("train", "recipes/tiny_gpt.yaml", *overrides, "--run-dir", run_dir, env=env)
    result = {"dir": run_dir, "train": train, "recipe": "tiny_gpt", "overrides": overrides}
    if train.returncode == 0:
        result["predict"] = run_cli("predict", run_dir, "--prompt", "def ", "--length", "50", env=env)
        result["plot_started_ns"] = time.time_ns()
        result["plot"] = run_cli("plot", run_dir, env=env)
    return result


def test_tiny_gpt_validation_loss_falls_and_it_writes_text(tiny_gpt):
    tiny_gpt = trained(tiny_gpt)
    val = [r["val/loss"] for r in read_jsonl(tiny_gpt["dir"] / "metrics.jsonl") if "val/loss" in r]
    assert len(val) == 2 and val[1] < val[0] < 3.5, val  # nats per character; the unigram baseline is ~3
    text = assert_ok(tiny_gpt["predict"]).stdout.rstrip("\n")
    assert text.startswith("def ") and len(text) == 54
    assert_plots(tiny_gpt, {"loss_curves.png"})


def _all_rows(bundle) -> tuple[np.ndarray, np.ndarray]:
    """(features, targets in data units) of train + val, whatever the split."""
    inputs = torch.cat([bundle.train.inputs, bundle.val.inputs]).numpy()
    targets = bundle.task.decode(torch.cat([bundle.train.targets, bundle.val.targets])).numpy()[:, 0]
    return inputs, targets


def test_csv_preprocessing_fills_means_and_one_hot_encodes_missing(tmp_path):
    from trainwright.data.tabular import csv

    path = tmp_path / "house_tiny.csv"
    path.write_text("NumRooms,Alley,Price\nNA,Pave,127500\n2,NA,106000\n4,NA,178100\nNA,NA,140000\n3,Grvl,150000\n")
    prices = [127500, 106000, 178100, 140000, 150000]
    rooms = [3.0, 2.0, 4.0, 3.0, 3.0]  # NA -> the mean of the training rows' values (row 4's 3)
    alley = ["Pave", None, None, None, "Grvl"]

    # split_seed 54 makes rows 1 and 2 the validation rows: statistics come from rows 0, 3 and 4 only
    bundle = csv(str(path), target="Price", numeric=["NumRooms"], categorical=["Alley"], standardize=False,
                 val_fraction=0.4, split_seed=54)
    assert len(bundle.train) == 3 and len(bundle.val) == 2
    inputs, targets = _all_rows(bundle)
    assert inputs.shape == (5, 4)  # NumRooms + Alley_Grvl, Alley_Pave, Alley_nan
    order = [prices.index(round(float(t))) for t in targets]  # rows come back shuffled; prices are unique
    assert sorted(order) == list(range(5))
    assert np.allclose(targets, [prices[i] for i in order], atol=0.05)
    assert np.allclose(inputs[:, 0], [rooms[i] for i in order])

    one_hot = inputs[:, 1:]
    assert set(np.unique(one_hot)) == {0.0, 1.0}
    assert np.all(one_hot.sum(axis=1) == 1)
    by_value: dict = {}
    for row, i in zip(one_hot, order):
        by_value.setdefault(alley[i], set()).add(tuple(row))
    assert all(len(v) == 1 for v in by_value.values())  # one code per value, missing included
    assert len({next(iter(v)) for v in by_value.values()}) == 3  # Pave, Grvl and missing all differ

    # targets are served standardized (by the training rows' mean and std), and decoded back to prices
    scaled = bundle.train.targets[:, 0]
    assert scaled.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert scaled.std().item() == pytest.approx(1.0, abs=1e-5)
    assert bundle.task.target_mean == pytest.approx(np.mean([prices[i] for i in (0, 3, 4)]))


def test_csv_preprocessing_standardizes_after_filling(tmp_path):
    from trainwright.data.tabular import csv

    path = tmp_path / "house_tiny.csv"
    path.write_text("NumRooms,Alley,Price\nNA,Pave,127500\n2,NA,106000\n4,NA,178100\nNA,NA,140000\n3,Grvl,150000\n")
    prices = [127500, 106000, 178100, 140000, 150000]
    filled = np.array([3.0, 2.0, 4.0, 3.0, 3.0])
    train = filled[[0, 1, 2, 4]]  # split_seed 2 makes row 3 the validation row; statistics come from the others
    expected = (filled - train.mean()) / train.std(ddof=1)
    bundle = csv(str(path), target="Price", numeric=["NumRooms"], categorical=["Alley"], standardize=True,
                 split_seed=2)
    inputs, targets = _all_rows(bundle)
    order = [prices.index(round(float(t))) for t in targets]
    assert np.allclose(inputs[:, 0], expected[order], atol=1e-6)


# --- checkpoint options in a real run ----------------------------------------------------------------


@workflow
def keep_best(folder: Path) -> dict:
    """heart for 4 epochs of 25 steps, validated every 2nd epoch, a checkpoint every epoch; keep the last one
    and the best one by the HIGHEST val/loss (mode max), which is an early one, so keep_best shows apart from
    keep_last."""
    run_dir = folder / "run"
    train = run_cli(
        "train",
        "recipes/heart.yaml",
        "data.num_points=2000",
        "trainer.epochs=4",
        "logging.wandb=false",
        "trainer.eval_every_epochs=2",
        "checkpoint.every_steps=null",
        "checkpoint.keep_last=1",
        "checkpoint.keep_best=1",
        "checkpoint.monitor=val/loss",
        "checkpoint.mode=max",
        "--run-dir",
        run_dir,
    )
    return {"dir": run_dir, "train": train}


def test_eval_every_epochs_and_keep_best_in_a_real_run(keep_best):
    keep_best = trained(keep_best)
    run_dir = keep_best["dir"]
    val = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if "val/loss" in r}
    assert [(s, r["epoch"]) for s, r in sorted(val.items())] == [(50, 2), (100, 4)]  # epochs 2 and 4 only
    best_step = max(val, key=lambda s: val[s]["val/loss"])
    assert best_step == 50  # the premise: the earlier validation has the higher loss

    assert checkpoint_steps(run_dir) == [best_step, 100]  # keep_last=1 keeps 100; keep_best=1 keeps the best
    best = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert best == {"path": f"step_{best_step:08d}", "val/loss": pytest.approx(val[best_step]["val/loss"])}
    for step in (best_step, 100):
        folder = checkpoint_dir(run_dir, step)
        assert checkpoint_problem(folder) is None
        state = json.loads((folder / "trainer.json").read_text())
        assert state["step"] == state["val_step"] == step
        assert state["val_metrics"] == pytest.approx({k: v for k, v in val[step].items() if k.startswith("val/")})
    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())
    assert latest["step"] == 100 and latest["path"] == "step_00000100"


# --- the CLI itself --------------------------------------------------------------------------------------


@workflow
def version_cli(folder: Path):
    return run_cli("--version")


def test_version(version_cli):
    result = assert_ok(version_cli)
    assert result.stdout == f"trainwright {VERSION}\n"


# --- every shipped recipe is trained ---------------------------------------------------------------------

ALL_RECIPES = sorted(RECIPES.glob("*.yaml"))
WORKFLOWS = ("heart", "linear", "fashion_mlp", "fashion_lenet", "house_prices", "tiny_gpt")
# Recipes trained to completion by another module, with the changes it names: resnet_folder by
# tests/test_image_folder.py (16x16 pixels, batch 8, 2 epochs, 2 workers: resnet18 is slow on the CPU), lora_sft
# by tests/test_lora_sft.py (on a base and items examples/make_lora_base.py makes small).
TRAINED_ELSEWHERE = ("resnet_folder", "lora_sft")


def test_every_workflow_is_covered(request):
    """Each recipe in recipes/ is trained to completion by one of the workflows above, as shipped but for the
    overrides the workflow lists (checked against the run dir's recipe.yaml)."""
    covered = {}
    for name in WORKFLOWS:
        job = trained(request.getfixturevalue(name))
        path = RECIPES / f"{job['recipe']}.yaml"
        saved = yaml.safe_load((job["dir"] / "recipe.yaml").read_text())
        expected = resolved_recipe(path, job["overrides"])
        for key in ("path", "root"):  # a run pins its data paths: absolute, from the folder it ran in (the repo)
            if key in expected["data"]:
                expected["data"][key] = str(REPO / expected["data"][key])
        assert saved == expected, name
        summary = json.loads((job["dir"] / "summary.json").read_text())
        assert summary["status"] == "completed", name
        covered[job["recipe"]] = name
    assert sorted([*covered, *TRAINED_ELSEWHERE]) == sorted(p.stem for p in ALL_RECIPES), covered


# --- check -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_RECIPES, ids=lambda p: p.stem)
def test_check_prints_the_resolved_recipe(capsys, path):
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed == resolved_recipe(path)
    assert list(printed)[:2] == ["name", "seed"] and printed["name"] == path.stem


def test_check_prints_heart_with_its_defaults(capsys):
    """One recipe written out in full, key by key, as the README documents it."""
    assert main(["check", str(RECIPES / "heart.yaml"), "trainer.epochs=1"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {
        "name": "heart",
        "seed": 0,
        "data": {
            "name": "heart",
            "batch_size": 64,
            "collate": None,
            "num_workers": 0,
            "prefetch_factor": None,
            "val_splits": None,
            "num_points": 100000,
            "seed": 123,
            "val_fraction": 0.2,
        },
        "model": {
            "name": "mlp",
            "freeze": None,
            "in_features": 2,
            "hidden": [72, 36],
            "out_features": 1,
            "output_activation": "sigmoid",
        },
        "adapter": None,
        "loss": {"name": "bce"},
        "step": None,
        "optimizer": {"name": "sgd", "lr": 0.01, "groups": None, "no_decay": False, "momentum": 0.9},
        "scheduler": {"name": "none"},
        "metrics": None,
        "trainer": {
            "epochs": 1,
            "max_steps": None,
            "mixed_precision": "auto",
            "grad_accum_steps": 1,
            "grad_clip": None,
            "log_every_steps": 100,
            "eval_every_epochs": 1,
            "eval_every_steps": None,
            "test_at_end": True,
            "record_samples": False,
            "compile": False,
            "compile_mode": "default",
            "deterministic": True,
            "early_stopping": None,
            "ema": None,
            "profile": None,
        },
        "checkpoint": {
            "every_steps": 1000,
            "every_epochs": 1,
            "keep_last": 2,
            "keep_best": 0,
            "monitor": "val/loss",
            "mode": "min",
            "async": True,
        },
        "logging": {
            "wandb": {
                "mode": "auto",
                "project": "trainwright",
                "entity": None,
                "tags": ["heart"],
                "group": None,
                "name": None,
                "notes": None,
                "job_type": None,
                "init_timeout": 10.0,
            },
            "tensorboard": False,
            "progress": "auto",
            "peak_tflops": None,
        },
        "distributed": {
            "strategy": "auto",
            "shard_modules": None,
            "reshard_after_forward": True,
            "activation_checkpointing": None,
        },
        "cv": None,
        "callbacks": None,
    }


@workflow
def check_with_overrides(folder: Path):
    return run_cli("check", "recipes/heart.yaml", "trainer.epochs=7", "model.hidden=[8, 4]", "logging.wandb=false")


def test_check_subprocess_applies_overrides(check_with_overrides):
    result = assert_ok(check_with_overrides)
    printed = yaml.safe_load(result.stdout)
    assert printed["trainer"]["epochs"] == 7
    assert printed["model"]["hidden"] == [8, 4]
    assert printed["logging"]["wandb"] == {"mode": "disabled", "project": "trainwright", "entity": None, "tags": [],
                                           "group": None, "name": None, "notes": None, "job_type": None,
                                           "init_timeout": 10.0}
    assert printed == resolved_recipe(RECIPES / "heart.yaml", ["trainer.epochs=7", "model.hidden=[8, 4]",
                                                                "logging.wandb=false"])
