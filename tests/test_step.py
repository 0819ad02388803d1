"""One step for every batch form (step.py): batches of named tensors, and models that compute their own
loss (`loss.name: model`), train to the same weights and metrics as the tutorials' (inputs, targets)
tuples scored by the recipe's loss, with gradient accumulation and mixed precision as well."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainwright.distributed.accelerate_compat import forget_accelerator_state
from trainwright.errors import UserError
from trainwright.finished.inference import load_run
from trainwright.recipe import load_recipe
from trainwright.training.start import train as train_recipe

HEART = Path(__file__).resolve().parent.parent / "recipes" / "heart.yaml"
TINY = ["data.num_points=2000", "trainer.max_steps=20", "logging.wandb=false", "checkpoint.every_epochs=null",
        "trainer.epochs=1"]
NAMED_DATA = ["data={name: named_batches:named_heart, batch_size: 64, num_points: 2000}"]
HEART_NET = ["model={name: named_batches:heart_net}"]
OWN_LOSS = ["model={name: named_batches:heart_net, own_loss: true}", "loss={name: model}"]


def train(tmp_path: Path, name: str, *overrides: str) -> tuple[dict[str, torch.Tensor], dict]:
    forget_accelerator_state()
    outcome = train_recipe(load_recipe(HEART, [*TINY, *overrides]), tmp_path / name)
    assert outcome.status == "completed" and outcome.summary["step"] == 20
    weights = load_file(tmp_path / name / "model.safetensors")
    return {key.removeprefix("layers."): value for key, value in weights.items()}, outcome.summary


def test_named_batches_and_a_model_computing_its_loss_train_as_tuples_do(tmp_path):
    """mlp on (inputs, targets) tuples, the same network on mappings scored by the recipe's bce, and on
    mappings computing its own bce: the same weights, bit for bit, and the same validation metrics."""
    plain, plain_summary = train(tmp_path, "plain")
    named, named_summary = train(tmp_path, "named", *NAMED_DATA, *HEART_NET)
    own, own_summary = train(tmp_path, "own", *NAMED_DATA, *OWN_LOSS)
    assert plain.keys() == named.keys() == own.keys()
    for key in plain:
        assert torch.equal(plain[key], named[key]), key
        assert torch.equal(plain[key], own[key]), key
    for summary in (named_summary, own_summary):
        assert summary["val/loss"] == pytest.approx(plain_summary["val/loss"], rel=1e-6)
        assert summary["val/accuracy"] == plain_summary["val/accuracy"]
    plain_run, own_run = load_run(tmp_path / "plain"), load_run(tmp_path / "own")
    _, plain_predictions = plain_run.predict_split(50)
    own_inputs, own_predictions = own_run.predict_split(50)
    assert list(own_inputs) == ["points"] and own_predictions.labels == plain_predictions.labels
    assert own_run.evaluate() == pytest.approx(plain_run.evaluate(), rel=1e-6)


def test_accumulation_and_precision_apply_to_a_model_computing_its_loss(tmp_path):
    """Two micro-batches of 32 per step make the same step as one of 64; bf16 trains to a finite loss."""
    whole, _ = train(tmp_path, "whole", *NAMED_DATA, *OWN_LOSS)
    accumulated, _ = train(
        tmp_path, "accum", *NAMED_DATA, *OWN_LOSS, "data.batch_size=32", "trainer.grad_accum_steps=2"
    )
    assert max((whole[k] - accumulated[k]).abs().max().item() for k in whole) < 1e-5
    _, summary = train(tmp_path, "bf16", *NAMED_DATA, *OWN_LOSS, "trainer.mixed_precision=bf16")
    assert torch.isfinite(torch.tensor(summary["val/loss"]))


def test_a_model_without_its_own_loss_under_loss_model_is_one_message(tmp_path):
    """loss.name: model on a model that returns a tensor is refused at start-up, before any folder is made."""
    forget_accelerator_state()
    with pytest.raises(UserError) as caught:
        train_recipe(load_recipe(HEART, [*TINY, *NAMED_DATA, *HEART_NET, "loss={name: model}"]), tmp_path / "run")
    for fragment in ("loss.name: model", "it returned Tensor", "cross_entropy"):
        assert fragment in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_a_typo_in_loss_model_is_caught_by_check():
    from trainwright.components import check_recipe

    with pytest.raises(UserError, match="did you mean 'model'"):
        check_recipe(load_recipe(HEART, ["loss.name=modle"]))
