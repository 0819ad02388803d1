"""FSDP2 on any device: every process holds a shard of the parameters, gradients and optimizer state.

trainwright applies `fully_shard` itself: Accelerate's FSDP plugin does not shard on CPU processes, so
the sharded model never goes through `accelerator.prepare` (which would wrap it in DDP); only the
optimizer does. Buffers (e.g. BatchNorm's running statistics) are not synchronised between processes
by FSDP2.
"""

from __future__ import annotations

import contextlib
from typing import cast

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from trainwright.distributed.parallel import BuildOptimizer, checkpoint_activations, compile_in_place, module_classes
from trainwright.distributed.processes import Processes
from trainwright.errors import UserError
from trainwright.recipe import DistributedConfig

SHARD_KEY = "distributed.shard_modules"


class FullySharded:
    """FSDP2 over all processes (a group of one when there is one process)."""

    def __init__(
        self, accelerator: Accelerator, processes: Processes, config: DistributedConfig, precision: str,
        compile_mode: str | None,
    ) -> None:
        if precision == "fp16":
            raise UserError(
                "trainer.mixed_precision=fp16 with distributed.strategy=fsdp is not supported (it needs a sharded "
                "gradient scaler); use bf16"
            )
        self.accelerator, self.processes, self.config, self.compile_mode = accelerator, processes, config, compile_mode
        self.policy = (  # bf16 parameters in forward and backward; fp32 gradient reduction, master weights, outputs
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=torch.float32)
            if precision == "bf16" else MixedPrecisionPolicy()
        )

    def prepare(self, model: nn.Module, build_optimizer: BuildOptimizer) -> tuple[nn.Module, torch.optim.Optimizer]:
        checkpoint_activations(model, self.config.activation_checkpointing)  # before sharding: FSDP hooks stay inside
        sharded = self.shard(model)
        compile_in_place(sharded, self.compile_mode)
        return sharded, self.accelerator.prepare(build_optimizer(sharded))

    def shard(self, model: nn.Module) -> nn.Module:
        """`fully_shard` every unit (innermost first), then the root (which holds the rest)."""
        units = shard_units(model, self.config.shard_modules)
        _ensure_process_group(self.processes)
        mesh = init_device_mesh(self.processes.device.type, (self.processes.world_size,))
        for module in [*reversed(units), model]:  # descendants before their ancestors, the root last
            fully_shard(
                module, mesh=mesh, reshard_after_forward=self.config.reshard_after_forward, mp_policy=self.policy
            )
        return model

    def gradient_sync(self, model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager[None]:
        assert isinstance(model, FSDPModule)
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()

    def full_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Gathered shard by shard into the main process's CPU memory (a collective; the others get {})."""
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return cast(dict[str, torch.Tensor], state)  # a model's state dict: tensors (torch types a wider union)


def shard_units(model: nn.Module, names: list[str] | None) -> list[nn.Module]:
    """The modules sharded one by one, ancestors first: those of the classes `names` (distributed.shard_modules)
    or by default `default_unit_classes`. A module holding a parameter that is also used outside it (a tied
    embedding and output layer) is never a unit of its own (FSDP keeps a parameter in one group): by default
    the root holds it; a class named in the recipe is an error naming both places."""
    classes = set(default_unit_classes(model) if names is None else module_classes(model, names, SHARD_KEY))
    names_of: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(param), []).append(name)
    units = []
    for prefix, module in model.named_modules():
        if module is model or type(module).__name__ not in classes:
            continue
        tie = next(((inside, outside) for inside, param in module.named_parameters(remove_duplicate=False)
                    for outside in names_of[id(param)] if not outside.startswith(f"{prefix}.")), None)
        if tie is None:
            units.append(module)
        elif names is not None:
            kind = type(module).__name__
            raise UserError(
                f"{SHARD_KEY}: {kind} '{prefix}' cannot be sharded on its own: its parameter '{prefix}.{tie[0]}' "
                f"is tied to '{tie[1]}' outside it (FSDP keeps a shared parameter in one unit); name a class that "
                f"holds both, or leave '{kind}' out (the whole model then holds the tie)"
            )
    return units


def default_unit_classes(model: nn.Module) -> set[str]:
    """The block classes the model declares as not to be split (`_no_split_modules`, as transformers models
    and `gpt` do), or else every class of module that holds parameters of its own (Linear, Conv2d, ...)."""
    present = {type(m).__name__ for m in model.modules()}
    declared = {name for m in model.modules() for name in getattr(m, "_no_split_modules", None) or ()}
    if declared & present:
        return declared & present
    return {type(m).__name__ for m in model.modules() if any(True for _ in m.parameters(recurse=False))}


def _ensure_process_group(processes: Processes) -> None:
    """FSDP2 needs a process group, also for one process (which Accelerate does not make)."""
    if not dist.is_initialized():
        backend = "nccl" if processes.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
