"""`data.collate`: ragged items (token sequences of 3 to 12 tokens) train with built-in padding (targets
with -100, an attention_mask for named tensors, pad_to_multiple_of) or a collate function of the user's own
by import path; with 2 workers and after a SIGKILL and resume the weights are bitwise those of an
uninterrupted run without workers; without a collate key a ragged batch is one message naming it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

import resuming
from conftest import assert_ok, assert_user_error, cli_env_with_tests, run_cli
from trainwright.data.collate import pad

RECIPE = {
    "name": "ragged", "seed": 0,
    "data": {"name": "ragged_items:ragged", "batch_size": 16, "collate": "pad"},  # 160 training items: 10 steps
    "model": {"name": "ragged_items:TokenNet"},
    "loss": {"name": "cross_entropy"},
    "optimizer": {"name": "sgd", "lr": 0.5},
    "trainer": {"epochs": 2, "log_every_steps": 5},
    "checkpoint": {"every_steps": 5, "every_epochs": None, "keep_last": 5},
    "logging": {"wandb": False},
}


def write_recipe(tmp_path: Path) -> Path:
    recipe = tmp_path / "ragged.json"
    recipe.write_text(json.dumps(RECIPE))
    return recipe


def train(tmp_path: Path, name: str, *overrides: str):
    return run_cli("train", write_recipe(tmp_path), *overrides, "--run-dir", tmp_path / name, env=cli_env_with_tests())


def summary(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / name / "summary.json").read_text())


def test_pad_builds_padded_batches_with_targets_ignored_and_a_mask():
    items = [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([4, 5, 6])},
             {"input_ids": torch.tensor([7]), "labels": torch.tensor([8])}]
    batch = pad(items, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [7, 0, 0, 0]]
    assert batch["labels"].tolist() == [[4, 5, 6, -100], [8, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    inputs, targets = pad([(torch.tensor([1, 2]), torch.tensor([3, 4])), (torch.tensor([5]), torch.tensor([6]))])
    assert inputs.tolist() == [[1, 2], [5, 0]] and targets.tolist() == [[3, 4], [6, -100]]


def test_ragged_items_train_padded_resume_bitwise_with_workers_and_named_tensors_agree(tmp_path):
    assert_ok(train(tmp_path, "reference"))
    workers = ["train", write_recipe(tmp_path), "data.num_workers=2", "--run-dir", tmp_path / "workers"]
    resuming.kill_and_resume(10, workers, tmp_path / "workers", env=cli_env_with_tests())
    resuming.assert_same_weights(tmp_path / "workers", tmp_path / "reference")
    # Named tensors padded to a multiple of 8 with an attention mask, and the user's collate function by
    # import path: the padding is masked or ignored, so the figures are the reference's.
    assert_ok(train(tmp_path, "named", "data.named=true", "model.name=ragged_items:MaskedNet",
                    "data.collate={name: pad, pad_to_multiple_of: 8}"))
    assert_ok(train(tmp_path, "own", "data.collate=ragged_items:by_eights"))
    for name in ("named", "own"):
        for key in ("val/loss", "val/accuracy"):
            assert abs(summary(tmp_path, name)[key] - summary(tmp_path, "reference")[key]) < 1e-5, (name, key)


def test_a_ragged_batch_without_a_collate_key_is_one_message(tmp_path):
    result = train(tmp_path, "run", "data.collate=null")
    assert_user_error(result.returncode, result.stderr, "differ in shape", "data.collate: pad",
                      "package.module:function")
    assert not (tmp_path / "run").exists()
    typo = train(tmp_path, "run", "data.collate=padd")
    assert_user_error(typo.returncode, typo.stderr, "data.collate", "did you mean 'pad'")
