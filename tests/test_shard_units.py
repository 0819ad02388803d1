"""FSDP's default shard units keep tied parameters in one unit: a model's declared block classes
(`_no_split_modules`: `gpt`'s GPTBlock, a transformers GPT-2's GPT2Block), else every class holding
parameters of its own except the modules whose parameters are shared outside them. A class named in the
recipe that would split a tie is one message. (The 2-process runs: test_language_model_fsdp.py.)"""

from __future__ import annotations

import pytest

from tied_models import tied_net
from trainwright.distributed.fsdp import shard_units
from trainwright.errors import UserError
from trainwright.models.gpt import gpt


def _names(model, units) -> list[str]:
    return [name for name, module in model.named_modules() if any(module is unit for unit in units)]


def test_gpt_is_sharded_by_its_blocks_by_default():
    model = gpt(vocab_size=20, context=8, layers=2, heads=2, width=8)
    assert _names(model, shard_units(model, None)) == ["blocks.0", "blocks.1"]


def test_without_declared_blocks_the_tied_modules_stay_with_the_root():
    model = gpt(vocab_size=20, context=8, layers=1, heads=2, width=8)
    model._no_split_modules = None
    names = _names(model, shard_units(model, None))
    assert "tokens" not in names and "head" not in names  # the tied pair: the root's unit
    assert "positions" in names and "blocks.0.attention.qkv" in names
    tied = tied_net()
    assert _names(tied, shard_units(tied, None)) == ["inp", "blocks.0.linear", "blocks.1.linear", "out"]


def test_a_named_class_that_splits_a_tie_is_one_message():
    model = gpt(vocab_size=20, context=8, layers=1, heads=2, width=8)
    with pytest.raises(UserError) as error:
        shard_units(model, ["Linear"])
    assert str(error.value) == (
        "distributed.shard_modules: Linear 'head' cannot be sharded on its own: its parameter 'head.weight' is "
        "tied to 'tokens.weight' outside it (FSDP keeps a shared parameter in one unit); name a class that holds "
        "both, or leave 'Linear' out (the whole model then holds the tie)"
    )
    assert _names(model, shard_units(model, ["GPTBlock"])) == ["blocks.0"]


def test_a_transformers_model_is_sharded_by_its_declared_blocks():
    pytest.importorskip("transformers")
    from trainwright.models.hf import hf

    model = hf("GPT2LMHeadModel", {"n_layer": 2, "n_embd": 16, "n_head": 2, "vocab_size": 64, "n_positions": 16,
                                   "bos_token_id": 0, "eos_token_id": 0})
    assert model.lm_head.weight is model.transformer.wte.weight
    assert _names(model, shard_units(model, None)) == ["transformer.h.0", "transformer.h.1"]
