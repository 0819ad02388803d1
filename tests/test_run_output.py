"""What a run tells its user: progress lines where stderr is no terminal (one per log interval and per
validation, from the main process only), the tqdm bar with the loss on a terminal, and the model summary
(printed at the start, in summary.json)."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import processes
from conftest import REPO, assert_ok, cli_env, describe, run_cli, workflow
from trainwright.recipe import load_recipe
from trainwright.training.model_summary import summarize, table
from trainwright.training.progress import Progress, resolve_mode
from trainwright.tuning.study import run_labels

# heart, 1000 points: 800 train / 64 per batch = 12 steps per epoch, 2 epochs, the loss logged every 5 steps
HEART = ["recipes/heart.yaml", "data.num_points=1000", "trainer.epochs=2", "trainer.log_every_steps=5",
         "logging.wandb=false"]
LOGGED_STEPS, VALIDATED_STEPS, TOTAL = [5, 10, 15, 20], [12, 24], 24
HEART_PARAMETERS = (2 * 72 + 72) + (72 * 36 + 36) + (36 + 1)  # Linear 2-72, 72-36, 36-1
TRAIN_LINE = re.compile(
    r"^step (\d+)/(\d+) epoch (\d+)/2 loss=([0-9.e+-]+) lr=0\.01 samples/s=[0-9.]+ left=\d+:\d\d:\d\d$", re.M
)
VALIDATION_LINE = re.compile(
    r"^validation step (\d+)/24 epoch (\d)/2: val/loss=([0-9.e+-]+) val/accuracy=[0-9.]+$", re.M
)


@workflow
def to_files(folder: Path) -> dict:
    """Heart with stdout and stderr going to pipes (as an sbatch job's to its .out file), on one process and on
    two FSDP processes (each Linear's parameters sharded)."""
    one = run_cli("train", *HEART, "--run-dir", folder / "one")
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                REPO / "accelerate_configs" / "fsdp_cpu_2proc.yaml", "--main_process_port", processes.free_port()]
    two = processes.run([*launcher, "-m", "trainwright", "train", *HEART, "--run-dir", folder / "two"], cli_env())
    return {"one": one, "two": two, "dir": folder}


def _assert_progress(result) -> None:
    train = TRAIN_LINE.findall(result.stderr)
    assert [int(step) for step, *_ in train] == LOGGED_STEPS, describe(result)
    assert all(int(total) == TOTAL for _, total, *_ in train)
    assert [int(epoch) for _, _, epoch, _ in train] == [1, 1, 2, 2]  # 1-based: steps 1-12 are epoch 1
    validations = VALIDATION_LINE.findall(result.stderr)
    assert [(int(step), int(epoch)) for step, epoch, _ in validations] == [(12, 1), (24, 2)], describe(result)
    assert "it/s" not in result.stderr  # no tqdm bar where stderr is no terminal


def test_a_run_without_a_terminal_prints_a_line_per_log_interval_and_validation(to_files):
    one = assert_ok(to_files["one"])
    _assert_progress(one)
    logged = [json.loads(line) for line in (to_files["dir"] / "one" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in logged if "train/loss" in r}
    for step, _, _, loss in TRAIN_LINE.findall(one.stderr):  # the loss shown is the loss logged
        assert float(loss) == pytest.approx(losses[int(step)], rel=1e-3)
    val_loss = {r["step"]: r["val/loss"] for r in logged if "val/loss" in r}
    for step, _, loss in VALIDATION_LINE.findall(one.stderr):
        assert float(loss) == pytest.approx(val_loss[int(step)], rel=1e-3)


def test_only_the_main_process_prints_progress(to_files):
    two = assert_ok(to_files["two"])
    assert "world_size=2 device=cpu precision=no strategy=fsdp" in two.stdout, describe(two)
    _assert_progress(two)  # each line once: the other process prints none


@pytest.mark.parametrize("run", ["one", "two"])
def test_the_parameter_count_is_printed_at_the_start_and_kept_in_the_summary(to_files, run):
    result = assert_ok(to_files[run])
    lines = result.stdout.splitlines()
    head = f"Model Sequential: {HEART_PARAMETERS:,} parameters (11.5 kB), {HEART_PARAMETERS:,} trainable (11.5 kB)"
    run_line = next(line for line in lines if line.startswith("Run "))
    assert lines.count(head) == 1 and lines.index(head) < lines.index(run_line)
    # FSDP2's sharded modules (FSDPLinear) are shown as their own classes, with their whole (unsharded) counts
    assert re.search(r"^  3 +Linear +2,628 +2,628$", result.stdout, re.M), describe(result)
    summary = json.loads((to_files["dir"] / run / "summary.json").read_text())["model_summary"]
    assert (summary["parameters"], summary["trainable"], summary["bytes"]) == (HEART_PARAMETERS,) * 2 + (4 * 2881,)
    assert [(m["name"], m["type"], m["parameters"]) for m in summary["modules"]] == [
        ("1", "Linear", 216), ("3", "Linear", 2628), ("5", "Linear", 37)
    ]


# --- the model summary --------------------------------------------------------------------------------------


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.body = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: counted once, under the first module that holds it
        self.scale = nn.Parameter(torch.ones(3, dtype=torch.float64))


def test_summary_counts_frozen_tied_and_own_parameters():
    model = Tied()
    model.body.requires_grad_(False)
    summary = summarize(model)
    assert (summary["parameters"], summary["trainable"]) == (40 + 20 + 3, 40 + 3)
    assert (summary["bytes"], summary["trainable_bytes"]) == (60 * 4 + 3 * 8, 40 * 4 + 3 * 8)
    assert [(m["name"], m["type"], m["parameters"], m["trainable"]) for m in summary["modules"]] == [
        ("embed", "Embedding", 40, 40), ("body", "Sequential", 20, 0), ("(own)", "Tied", 3, 3)
    ]
    assert table(summary).splitlines()[0] == "Model Tied: 63 parameters (264 B), 43 trainable (184 B)"


def test_summary_table_shows_the_first_modules_and_counts_the_rest():
    model = nn.Sequential(*(nn.Linear(2, 2) for _ in range(20)))
    lines = table(summarize(model)).splitlines()
    assert len(lines) == 1 + 1 + 12 + 1
    assert lines[-1] == "  ... 8 more modules, 48 parameters"


# --- progress shown -------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_the_bar_on_a_terminal_and_lines_elsewhere():
    assert resolve_mode("auto", True, Terminal()) == "bar"
    assert resolve_mode("auto", True, io.StringIO()) == "lines"
    assert resolve_mode("bar", False, Terminal()) == "off"  # not the main process
    recipe = load_recipe(REPO / "recipes" / "heart.yaml", ["logging.progress=off"])
    assert Progress.of_run(recipe, True, 24, 12, 0).mode == "off"


def test_the_bar_shows_the_loss():
    stream = Terminal()
    progress = Progress("bar", total_steps=24, steps_per_epoch=12, start_step=0, stream=stream)
    with progress.bar(0, 0) as bar:
        bar.update(5)
        progress.log({"train/loss": 0.61234, "lr": 0.01}, 5, 1)
        progress.log({"val/loss": 0.5}, 12, 1)
        bar.refresh()
        assert "loss=0.6123" in stream.getvalue() and "epoch 1/2" in stream.getvalue()
    assert "validation" not in stream.getvalue()


def test_off_shows_nothing():
    stream = io.StringIO()
    progress = Progress("off", total_steps=24, steps_per_epoch=12, start_step=0, stream=stream)
    with progress.bar(0, 0) as bar:
        bar.update(5)
        progress.log({"train/loss": 0.6, "lr": 0.01}, 5, 1)
        progress.log({"val/loss": 0.5}, 12, 1)
    assert stream.getvalue() == ""


# --- W&B run names in studies ------------------------------------------------------------------------------


def test_each_run_of_a_study_gets_its_own_wandb_name_from_the_recipes():
    heart = REPO / "recipes" / "heart.yaml"
    named = load_recipe(heart, ["logging.wandb.mode=offline", 'logging.wandb.name="lr test: wide"'])
    labels = run_labels(named, "heart-fold_2", Path("/runs/heart-cv"), ["cv", "fold_2"])
    run = load_recipe(heart, ["logging.wandb.mode=offline", 'logging.wandb.name="lr test: wide"', *labels])
    wandb = run.logging.wandb
    assert (run.name, wandb.name, wandb.group) == ("heart-fold_2", "lr test: wide-fold_2", "heart-cv")
    unnamed = load_recipe(heart, ["logging.wandb.mode=offline"])
    labels = run_labels(unnamed, "heart-fold_2", Path("/runs/heart-cv"), ["cv", "fold_2"])
    assert load_recipe(heart, labels).logging.wandb.name is None  # W&B shows the run's name, heart-fold_2
