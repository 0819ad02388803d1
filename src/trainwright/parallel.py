"""How the processes share the model.

- ddp: every process holds the whole model; Accelerate wraps it (DistributedDataParallel with several
  processes) and all-reduces the gradients.
- fsdp: every process holds a shard of the parameters, gradients and optimizer state. trainwright
  applies FSDP2 (`fully_shard`) itself, on any device: Accelerate's FSDP plugin does not shard on CPU
  processes, so the sharded model never goes through `accelerator.prepare` (which would wrap it in DDP).
  Buffers (e.g. BatchNorm's running statistics) are not synchronised between processes by FSDP2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from trainwright.errors import UserError, did_you_mean
from trainwright.processes import Processes
from trainwright.recipe import DistributedConfig


def prepare(
    accelerator: Accelerator,
    processes: Processes,
    config: DistributedConfig,
    precision: str,
    model: nn.Module,
    build_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The model ready for training under the processes' strategy, and its optimizer (built on the
    sharded parameters under fsdp); both wrapped by Accelerate where it has a part to play."""
    if processes.strategy != "fsdp":
        return accelerator.prepare(model, build_optimizer(model))
    if precision == "fp16":
        raise UserError(
            "trainer.mixed_precision=fp16 with distributed.strategy=fsdp is not supported (it needs a sharded "
            "gradient scaler); use bf16"
        )
    sharded = shard(model, config, processes, precision)
    return sharded, accelerator.prepare(build_optimizer(sharded))


def shard(model: nn.Module, config: DistributedConfig, processes: Processes, precision: str) -> nn.Module:
    """Apply FSDP2: every module of the chosen classes (innermost first), then the root."""
    chosen = set(_shard_classes(model, config.shard_modules))
    _ensure_process_group(processes)
    mesh = init_device_mesh(processes.device.type, (processes.world_size,))
    policy = (  # bf16 parameters in forward and backward; fp32 gradient reduction, master weights and outputs
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, output_dtype=torch.float32)
        if precision == "bf16" else MixedPrecisionPolicy()
    )
    for module in reversed(list(model.modules())):  # descendants before their ancestors
        if module is not model and type(module).__name__ in chosen:
            fully_shard(module, mesh=mesh, reshard_after_forward=config.reshard_after_forward, mp_policy=policy)
    fully_shard(model, mesh=mesh, reshard_after_forward=config.reshard_after_forward, mp_policy=policy)
    return model


def _shard_classes(model: nn.Module, names: list[str] | None) -> list[str]:
    """Class names of the modules to shard one by one: the recipe's list, or by default every class of
    module that holds parameters of its own (Linear, Conv2d, ... in the built-in models)."""
    present = {type(m).__name__: m for m in model.modules()}
    if names is None:
        return [name for name, m in present.items() if any(True for _ in m.parameters(recurse=False))]
    for name in names:
        if name not in present:
            raise UserError(
                f"distributed.shard_modules: the model has no module of class '{name}'"
                f"{did_you_mean(name, present)} (its classes: {', '.join(sorted(present))})"
            )
    return names


def _ensure_process_group(processes: Processes) -> None:
    """FSDP2 needs a process group, also for one process (which Accelerate does not make)."""
    if not dist.is_initialized():
        backend = "nccl" if processes.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def is_sharded(model: nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(accelerator: Accelerator, model: nn.Module, enabled: bool) -> Iterator[None]:
    """Reduce gradients across processes in this backward pass only when `enabled` (the last
    micro-batch of an accumulation group); the others accumulate locally."""
    if is_sharded(model):
        model.set_requires_gradient_sync(enabled)
        yield
    elif enabled:
        yield
    else:
        with accelerator.no_sync(model):
            yield


def full_weights(accelerator: Accelerator, model: nn.Module) -> nn.Module | dict[str, torch.Tensor]:
    """The whole model's weights on the main process (under fsdp gathered shard by shard into CPU
    memory: a collective that every process calls; the others get {})."""
    if not is_sharded(model):
        return accelerator.unwrap_model(model)
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
