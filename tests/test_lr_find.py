"""`trainwright lr-find`: the learning-rate range test suggests a learning rate at which the recipe trains
well, draws its plot, writes nothing else, and is the same for every batch form."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import RECIPES
from reliability_helpers import call, user_error
from trainwright.distributed.accelerate_compat import forget_accelerator_state
from trainwright.recipe import load_recipe
from trainwright.training.lr_find import RangeTest, lowest_point, lr_range_test
from trainwright.training.start import train

HEART = RECIPES / "heart.yaml"
# 16,000 training points: 250 steps of 64, so the range test's 100 steps see each point once.
HEART_SMALL = ["data.num_points=20000", "logging.wandb=false"]
OVERRIDE = re.compile(r"^optimizer\.lr=(\S+)$")


def lr_find(capsys: pytest.CaptureFixture, *argv: object) -> tuple[float, str]:
    """Run lr-find in this process; the suggested learning rate (stdout's only line) and stderr."""
    forget_accelerator_state()
    code, out, err = call(capsys, "lr-find", *argv)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 and (match := OVERRIDE.match(lines[0])), out
    return float(match.group(1)), err


def val_loss_after_one_epoch(tmp_path: Path, lr: float) -> float:
    forget_accelerator_state()
    recipe = load_recipe(HEART, [*HEART_SMALL, "trainer.epochs=1", f"optimizer.lr={lr}"])
    outcome = train(recipe, tmp_path / f"lr_{lr:g}")
    assert outcome.status == "completed"
    return outcome.summary["val/loss"]


def test_suggestion_for_heart_trains_well_and_only_the_plot_is_written(capsys, tmp_path, monkeypatch):
    """The suggestion lies in the band where one epoch of heart reaches a low validation loss (below 0.1 at
    lrs 0.03 to 1; 0.17 at 0.01, 10.5 at 3, measured by training at lrs 1e-4 to 3), and training at it
    beats 100x less and 100x more; the plot is a PNG and the only file made; a second run suggests the
    same, into a new plot."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    lr, err = lr_find(capsys, HEART, *HEART_SMALL)
    assert "Lowest smoothed loss" in err
    assert 0.03 <= lr <= 1, lr
    assert os.listdir(work) == ["lr-find-heart.png"]  # no runs/heart, nothing else
    with Image.open(work / "lr-find-heart.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
    again, _ = lr_find(capsys, HEART, *HEART_SMALL)
    assert again == lr  # the recipe's seed decides everything
    assert sorted(os.listdir(work)) == ["lr-find-heart-2.png", "lr-find-heart.png"]

    suggested = val_loss_after_one_epoch(tmp_path, lr)
    assert suggested < 0.1, suggested
    assert suggested < val_loss_after_one_epoch(tmp_path, lr / 100)
    too_high = val_loss_after_one_epoch(tmp_path, lr * 100)
    assert not math.isfinite(too_high) or suggested < too_high


def test_every_batch_form_gives_the_same_range_test(tmp_path):
    """(inputs, targets) tuples scored by the recipe's loss, and mappings to a model computing its own loss
    (as a Hugging Face model does): the same losses at the same learning rates, the same suggestion."""
    small = ["data.num_points=2000", "logging.wandb=false"]
    forget_accelerator_state()
    plain = lr_range_test(load_recipe(HEART, small), 1e-5, 10, 30)
    forget_accelerator_state()
    named = lr_range_test(load_recipe(HEART, [
        *small, "data={name: named_batches:named_heart, batch_size: 64, num_points: 2000}",
        "model={name: named_batches:heart_net, own_loss: true}", "loss={name: model}",
    ]), 1e-5, 10, 30)
    assert plain.lrs == named.lrs and len(plain.lrs) >= 20
    assert named.losses == pytest.approx(plain.losses, rel=1e-5)
    assert named.suggestion == plain.suggestion is not None


def test_accumulation_and_precision_are_the_recipe_s(tmp_path):
    """Two micro-batches of 32 per step: the same range test as one batch of 64; bf16 runs to a suggestion."""
    small = ["data.num_points=2000", "logging.wandb=false"]
    forget_accelerator_state()
    whole = lr_range_test(load_recipe(HEART, small), 1e-5, 10, 30)
    forget_accelerator_state()
    accumulated = lr_range_test(load_recipe(HEART, [*small, "data.batch_size=32", "trainer.grad_accum_steps=2"]),
                                1e-5, 10, 30)
    assert accumulated.losses == pytest.approx(whole.losses, rel=1e-4)
    forget_accelerator_state()
    bf16 = lr_range_test(load_recipe(HEART, [*small, "trainer.mixed_precision=bf16"]), 1e-5, 10, 30)
    assert bf16.suggestion is not None and bf16.losses != whole.losses
    forget_accelerator_state()


def test_a_language_model_runs(capsys, tmp_path, monkeypatch):
    """tiny_gpt (a sequence task: a class per position) at a tiny size: a suggestion and its plot, no run dir."""
    monkeypatch.chdir(tmp_path)
    lr, _ = lr_find(
        capsys, RECIPES / "tiny_gpt.yaml", "data.max_bytes=20000", "data.context=16", "model.context=16",
        "model.layers=1", "model.width=32", "model.heads=2", "logging.wandb=false",
        "--steps", "30", "--min-lr", "1e-5", "--max-lr", "1", "--plot", "gpt.png",
    )
    assert 1e-6 < lr <= 0.1  # a tenth of a learning rate tried
    assert os.listdir(tmp_path) == ["gpt.png"]


def test_suggestion_is_a_tenth_of_the_lowest_point():
    """The lowest smoothed loss after the settling points (those may be lower: they are not looked at)."""
    lrs = np.geomspace(1e-6, 1, 61).tolist()
    smoothed = [(math.log10(lr) + 1) ** 2 for lr in lrs]  # lowest at lr 0.1
    smoothed[0:5] = [-1.0] * 5
    assert lowest_point(smoothed, skip_begin=6) == 50
    assert RangeTest(lrs, smoothed, smoothed, None, 50).suggestion == pytest.approx(0.01)
    rising = sorted(smoothed[6:])
    assert lowest_point([5.0] * 6 + rising, skip_begin=6) is None  # the loss never fell


@pytest.mark.parametrize(("args", "fragments"), [
    (["--plot", "plot.txt"], ("--plot plot.txt", ".png")),
    (["--plot", "exists.png"], ("--plot exists.png exists", "does not overwrite")),
    (["--plot", "link.png"], ("--plot link.png is a symbolic link",)),
    (["--plot", "missing/plot.png"], ("folder missing does not exist",)),
    (["--min-lr", "1", "--max-lr", "0.1"], ("--min-lr 1 and --max-lr 0.1", "0 < --min-lr < --max-lr")),
    (["--steps", "5"], ("--steps 5", "at least 20")),
    (["trainer.epochz=2"], ("epochz", "did you mean 'epochs'")),
    (["optimizer.momentun=0.9"], ("momentun",)),
])
def test_bad_input_is_one_message_and_writes_nothing(capsys, tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exists.png").write_bytes(b"mine")
    (tmp_path / "link.png").symlink_to(tmp_path / "nowhere.png")
    before = sorted(os.listdir(tmp_path))
    user_error(capsys, "lr-find", HEART, *args, fragments=fragments)
    assert sorted(os.listdir(tmp_path)) == before
    assert (tmp_path / "exists.png").read_bytes() == b"mine"


def test_a_loss_that_never_falls_gets_no_suggestion_but_its_plot(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    forget_accelerator_state()
    user_error(capsys, "lr-find", HEART, "data.num_points=2000", "--min-lr", "100", "--max-lr", "1e6",
               fragments=("no learning rate to suggest", "lower --min-lr", "plot: lr-find-heart.png"))
    assert os.listdir(tmp_path) == ["lr-find-heart.png"]


def test_a_multi_process_launch_is_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    user_error(capsys, "lr-find", HEART, fragments=("lr-find runs in one process", "accelerate launch"))
    assert os.listdir(tmp_path) == []


def test_an_option_that_is_not_a_number(capsys):
    with pytest.raises(SystemExit) as info:
        call(capsys, "lr-find", HEART, "--min-lr", "abc")
    err = capsys.readouterr().err
    assert info.value.code == 2 and "expected a number above 0, got 'abc'" in err and "Traceback" not in err
