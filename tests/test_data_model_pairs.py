"""Data kinds meet model kinds in the step: the built-in `text` data (byte vocabulary) feeds a Hugging Face
GPT-2 from a tiny config as `input_ids` (with `labels`/`shift_labels` when it computes its own loss), and
`cross_entropy` scores its ModelOutput's logits against the next tokens. Both train, and score the same
pairs: their validation figures agree. A pair that cannot work is one message from `check`."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import transformers  # noqa: F401  (the `hf` extra: these tests never skip for want of it)

from conftest import RECIPES
from trainwright.components import check_recipe
from trainwright.distributed.accelerate_compat import forget_accelerator_state
from trainwright.errors import UserError
from trainwright.recipe import load_recipe, validate
from trainwright.training.start import train

CONFIG = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "vocab_size": 256, "n_positions": 16,
          "bos_token_id": 0, "eos_token_id": 0, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
RECIPE = {
    "name": "hf_text", "seed": 0,
    "data": {"name": "text", "vocabulary": "bytes", "context": 16, "max_bytes": 12_000, "pattern": "*.py",
             "batch_size": 16},
    "model": {"name": "hf", "architecture": "GPT2LMHeadModel", "config": CONFIG},
    "optimizer": {"name": "adamw", "lr": 0.003},
    "trainer": {"epochs": 1, "max_steps": 30, "log_every_steps": 10},
    "checkpoint": {"every_epochs": None},
    "logging": {"wandb": False},
}


def trained(tmp_path: Path, loss: str, monkeypatch) -> dict:
    monkeypatch.setenv("TRAINWRIGHT_CACHE", str(tmp_path / "cache"))
    forget_accelerator_state()
    outcome = train(validate({**RECIPE, "loss": {"name": loss}}, "hf_text"), tmp_path / loss)
    assert outcome.status == "completed" and outcome.summary["step"] == 30
    return outcome.summary


def test_a_hugging_face_causal_lm_trains_on_text_with_its_own_loss_and_with_cross_entropy(tmp_path, monkeypatch):
    own = trained(tmp_path, "model", monkeypatch)
    scored = trained(tmp_path, "cross_entropy", monkeypatch)
    assert own["val/loss"] < math.log(256) - 1, own  # it learned (untrained: about ln 256 = 5.5)
    for key in ("val/loss", "val/accuracy", "val/perplexity"):
        assert scored[key] == pytest.approx(own[key], rel=1e-4), key


@pytest.mark.parametrize(("recipe", "overrides", "fragments"), [
    ("heart.yaml", ["model={name: hf, architecture: GPT2LMHeadModel, config: {model_type: gpt2}}", "loss.name=model"],
     ("model 'hf (GPT2LMHeadModel)' takes token ids", "data set 'heart' yields feature vectors", "model.name: mlp",
      "data.name: text")),
    ("tiny_gpt.yaml", ["model={name: mlp, in_features: 64, hidden: [8], out_features: 8}"],
     ("model 'mlp' takes feature vectors", "data set 'text' yields token ids", "model.name: gpt")),
    ("fashion_mnist_lenet.yaml", ["model={name: gpt}"],
     ("model 'gpt' takes token ids", "data set 'fashion_mnist' yields images", "model.name: lenet")),
    ("tiny_gpt.yaml", ["model={name: hf, architecture: ViTForImageClassification}"],
     ("takes images", "data set 'text' yields token ids")),
])
def test_a_pair_that_cannot_work_is_one_message_from_check(recipe, overrides, fragments):
    with pytest.raises(UserError) as caught:
        check_recipe(load_recipe(RECIPES / recipe, overrides))
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_pairs_that_work_pass_check():
    check_recipe(load_recipe(RECIPES / "tiny_gpt.yaml", [f"model={RECIPE['model']}", "loss.name=model"]))
    check_recipe(load_recipe(RECIPES / "fashion_mnist_mlp.yaml"))
