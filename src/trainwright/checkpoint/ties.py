"""Tied weights: one parameter under several names (e.g. a language model's token embedding and output
head). Every weights file trainwright writes holds such a parameter once, under its first name (as
`named_parameters` gives it; torch's DCP and safetensors refuse tensors that share memory); a load gives
the other names the same tensor, so the model's tie is intact and `load_state_dict` sees every name."""

from __future__ import annotations

from typing import TypeVar

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_PREFIX

T = TypeVar("T")


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """Each further name of a shared parameter -> the name it is saved under (state-dict names: without
    the activation-checkpoint wrapper's prefix)."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        name = state_dict_name(name)
        kept = first.setdefault(id(param), name)
        if kept != name:
            aliases[name] = kept
    return aliases


def state_dict_name(name: str) -> str:
    """A parameter's name in the state dict: without the activation-checkpoint wrapper's prefix."""
    return name.replace(_CHECKPOINT_PREFIX, "")


def untied(state: dict[str, T], aliases: dict[str, str]) -> dict[str, T]:
    """The state without the further names of shared parameters (what is written)."""
    return {key: value for key, value in state.items() if key not in aliases}


def retied(state: dict[str, T], aliases: dict[str, str]) -> dict[str, T]:
    """The state with every further name of a shared parameter given its saved tensor (what is loaded)."""
    return {**state, **{alias: state[kept] for alias, kept in aliases.items() if kept in state}}
