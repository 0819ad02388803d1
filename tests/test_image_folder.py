"""Image folders end to end (issue 21): PNGs in class folders (made by examples/make_image_folder.py), the
shipped recipes/resnet_folder.yaml (torchvision's resnet18, random crops and flips) made small: 16x16
images, 96 training images in batches of 8 (12 steps per epoch), 2 epochs.

  * killed mid-epoch (SIGKILL to the whole process tree) with 2 workers and run again: the final weights
    are bitwise those of an uninterrupted run; with 0 workers they are too;
  * a 2-process run stopped mid-epoch and resumed on 1 process trains every step on the samples of the
    uninterrupted run's step (each sample once per epoch);
  * eval and `predict --input` an image, a folder, a glob work without --allow-data-change; one training
    image changed is refused on eval, predict -n and resume.

The uninterrupted runs save only their final checkpoint (how often a run saves changes none of its weights),
and eval and predict run in this process: resnet18's checkpoints are large and a CLI start-up is slow here.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import processes
import resuming
from conftest import RECIPES, REPO, assert_ok, assert_resumed, assert_user_error, cli_env, describe, weights, workflow
from reliability_helpers import call
from test_resume import step_samples

CPU_2PROC = REPO / "accelerate_configs" / "cpu_2proc.yaml"
STEPS_PER_EPOCH, EPOCHS = 12, 2
KILL_STEP = 10  # mid-epoch: the killed run is SIGKILLed right after its step-10 checkpoint
RESUMING = re.compile(r"^Resuming from step (\d+) \(epoch (\d+), batch (\d+)\)", re.M)
FINAL_CHECKPOINT_ONLY = "checkpoint.every_steps=null"  # for the uninterrupted runs


def small_recipe(folder: Path) -> Path:
    """The shipped recipe at 16x16 pixels, batch 8, 2 epochs, a checkpoint every 5 steps."""
    recipe = yaml.safe_load((RECIPES / "resnet_folder.yaml").read_text())
    for step in recipe["data"]["train_transforms"] + recipe["data"]["eval_transforms"]:
        if "size" in step:
            step["size"] = 16
    names = [step["name"] for step in recipe["data"]["train_transforms"]]
    assert names[:2] == ["RandomResizedCrop", "RandomHorizontalFlip"]  # random augmentation is what is tested
    recipe["data"].update(root=str(folder / "shapes"), batch_size=8, num_workers=2)
    recipe["trainer"].update(epochs=EPOCHS, record_samples=True)
    recipe["checkpoint"] = {"every_steps": 5, "every_epochs": None, "keep_last": 10}
    recipe["logging"] = {"wandb": False}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@workflow
def folder_runs(folder: Path) -> dict:
    made = processes.run([sys.executable, "examples/make_image_folder.py", folder / "shapes", "--per-class", "32",
                          "--size", "20"], cli_env())
    assert made.returncode == 0, describe(made)
    recipe, env, runs = small_recipe(folder), cli_env(), {}
    runs["recipe"] = recipe
    runs["reference"] = resuming.train(recipe, folder / "reference", FINAL_CHECKPOINT_ONLY, env=env)
    runs["workers0"] = resuming.train(recipe, folder / "workers0", FINAL_CHECKPOINT_ONLY, "data.num_workers=0",
                                      env=env)
    killed = resuming.kill_at(KILL_STEP, ["train", recipe, "--run-dir", folder / "killed"], folder / "killed", env=env)
    runs["killed_output"] = killed.stdout + killed.stderr
    runs["resumed"] = resuming.train(recipe, folder / "killed", env=env)
    runs["two"] = resuming.train(recipe, folder / "elastic", "trainer.max_steps=10", config=CPU_2PROC, env=env)
    runs["one"] = resuming.train(recipe, folder / "elastic", env=env)
    runs["folder"] = folder
    return runs


def test_killed_mid_epoch_with_workers_ends_bitwise_equal(folder_runs):
    reference = assert_ok(folder_runs["reference"])
    assert "world_size=1 device=cpu" in reference.stdout
    assert f"Run complete at step {STEPS_PER_EPOCH * EPOCHS}" in reference.stdout
    resumed = assert_ok(folder_runs["resumed"])
    assert_resumed(resumed.stdout + resumed.stderr, KILL_STEP)
    step, epoch, batch = (int(v) for v in RESUMING.search(resumed.stdout).groups())
    assert batch != 0, resumed.stdout  # mid-epoch
    assert "Traceback" not in folder_runs["killed_output"]
    folder = folder_runs["folder"]
    assert weights(folder / "killed") == weights(folder / "reference")
    assert step_samples(folder / "killed") == step_samples(folder / "reference")


def test_zero_and_two_workers_give_the_same_weights(folder_runs):
    assert_ok(folder_runs["workers0"])
    assert weights(folder_runs["folder"] / "workers0") == weights(folder_runs["folder"] / "reference")


def test_two_processes_resumed_on_one_see_each_sample_once(folder_runs):
    two, one = assert_ok(folder_runs["two"]), assert_ok(folder_runs["one"])
    assert "world_size=2 device=cpu" in two.stdout and "world_size=1 device=cpu" in one.stdout
    assert_resumed(one.stdout + one.stderr, 10)
    assert RESUMING.search(one.stdout).groups() == ("10", "1", "10"), one.stdout
    samples = step_samples(folder_runs["folder"] / "elastic")
    assert samples == step_samples(folder_runs["folder"] / "reference")
    for epoch in range(EPOCHS):
        seen = [i for s in range(epoch * STEPS_PER_EPOCH + 1, (epoch + 1) * STEPS_PER_EPOCH + 1) for i in samples[s]]
        assert sorted(seen) == list(range(96)), epoch  # 96 training images, each once


def cli(capsys, *argv: object) -> str:
    """`trainwright ARGV` in this process, which must succeed: its output."""
    code, out, err = call(capsys, *argv)
    assert code == 0 and "Traceback" not in err, err
    return out


# torchvision says so each time it decodes a PNG (trainwright reads images with it); once per CLI process before.
@pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")
def test_eval_and_predict_need_no_allow_flag_and_a_changed_image_is_refused(folder_runs, tmp_path, capsys):
    folder = folder_runs["folder"]
    run = tmp_path / "run"
    shutil.copytree(folder / "reference", run)
    cli(capsys, "eval", run)
    image = sorted((folder / "shapes" / "val" / "disc").iterdir())[0]
    one = cli(capsys, "predict", run, "--input", image)
    assert re.search(rf'^{image.name} Predicted: "(disc|ring|square)"$', one, re.M), one
    many = cli(capsys, "predict", run, "--input", folder / "shapes" / "val" / "ring", "-n", "100")
    assert len(many.splitlines()) == 8
    globbed = cli(capsys, "predict", run, "--input", str(folder / "shapes" / "val" / "*" / "*_000[01].png"))
    assert len(globbed.splitlines()) == 6
    from trainwright import load_run  # the Python API takes PIL images and paths alike

    with Image.open(image) as picture:
        predictions = load_run(run).predict([picture, image, str(image)])
    assert predictions.ids == ["image 0", image.name, image.name]
    assert torch.equal(predictions.outputs[0], predictions.outputs[1]) and len(set(predictions.labels)) == 1

    data = tmp_path / "shapes"
    shutil.copytree(folder / "shapes", data)  # copytree keeps the mtimes: the same data
    recipe = run / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace(str(folder / "shapes"), str(data)))
    cli(capsys, "eval", run)
    changed = sorted((data / "train" / "square").iterdir())[3]
    pixels = np.asarray(Image.open(changed)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(changed)
    for command in (["eval", run], ["predict", run, "-n", "2"]):
        code, _, err = call(capsys, *command)
        assert_user_error(code, err, "the data differ", "train split", "--allow-data-change")
    cli(capsys, "eval", run, "--allow-data-change")
    resumable = tmp_path / "resumable"  # a run with a checkpoint to resume from, its data moved and one image changed
    shutil.copytree(folder / "reference", resumable)
    (resumable / "summary.json").unlink()
    moved = tmp_path / "moved.yaml"
    moved.write_text(folder_runs["recipe"].read_text().replace(str(folder / "shapes"), str(data)))
    result = resuming.train(moved, resumable, env=cli_env())
    assert_user_error(result.returncode, result.stderr, "the data differ", "train split", "--allow-data-change")


def test_a_damaged_image_read_by_a_worker_is_one_message(folder_runs, tmp_path):
    data = tmp_path / "shapes"
    shutil.copytree(folder_runs["folder"] / "shapes", data)
    damaged = sorted((data / "train" / "square").iterdir())[-1]  # not among the start-up check's first batch
    damaged.write_bytes(b"not a picture")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(folder_runs["recipe"].read_text().replace(str(folder_runs["folder"] / "shapes"), str(data)))
    result = resuming.train(recipe, tmp_path / "run", "trainer.epochs=1", env=cli_env())
    message = assert_user_error(result.returncode, result.stderr, f"{damaged} is not an image that can be read")
    assert "worker" not in message, message
