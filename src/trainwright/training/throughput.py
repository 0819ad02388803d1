"""How fast a run trains, logged at each log interval (perf/...): samples and, for sequence tasks, tokens per
second; model FLOPs utilisation for language models; peak memory; the share of time spent waiting for data.

Nothing here synchronises a device: times are the host's, token counts come from batch shapes, and the
peak memory is the CUDA caching allocator's own count (or the process's peak RSS on the CPU)."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator, Mapping

import torch

from trainwright.recipe import Recipe
from trainwright.step import TARGETS_KEY, Batch

# Dense bf16/fp16 tensor-core peaks per GPU in TFLOP/s (vendor data sheets, without sparsity), matched
# against torch.cuda.get_device_name() in this order. logging.peak_tflops overrides them.
PEAK_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0),
    ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0), ("T4", 65.0),
)
FLOPS_MODELS = ("gpt", "hf")  # language models whose FLOPs per token are 6 x parameters (forward + backward)


def known_peak_tflops(device: torch.device) -> float | None:
    """The table's peak for this CUDA device (None on the CPU or for a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for known, peak in PEAK_TFLOPS if known in name), None)


def peak_memory_bytes(device: torch.device) -> int:
    """The most memory this process has held: CUDA's max allocated on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, kilobytes on Linux


def _main_tensor(batch: Batch) -> torch.Tensor:
    """The targets of a batch (a mapping's labels, else its input_ids, else its first tensor)."""
    if not isinstance(batch, Mapping):
        return batch[1]
    for key in (TARGETS_KEY, "input_ids"):
        if isinstance(batch.get(key), torch.Tensor):
            return batch[key]
    return next(value for value in batch.values() if isinstance(value, torch.Tensor))


class Throughput:
    """Counts what a process's training loop does between two log intervals.

    `batch_size`: the global batch (every micro-batch of an epoch is whole: data/loading.py drops the last
    incomplete one); `world_size`: the processes sharing it (tokens are counted on this process's share);
    `flops_per_token`: the model's training FLOPs per token (None: no MFU); `peak_flops`: one device's peak
    FLOP/s (None: no MFU)."""

    def __init__(
        self, device: torch.device, batch_size: int, world_size: int, sequence: bool, flops_per_token: float | None,
        peak_flops: float | None,
    ) -> None:
        self.device, self.batch_size, self.world_size, self.sequence = device, batch_size, world_size, sequence
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self.restart()

    def restart(self) -> None:
        """Count from here (the end of a launch's first step: start-up is not training speed)."""
        self.started, self.waited, self.batches, self.tokens = time.perf_counter(), 0.0, 0, 0

    def timed(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """`batches`, with the time spent waiting for each counted, and (sequence tasks) its tokens. The loop
        trains each batch before it asks for the next, so at a log interval all those counted were trained."""
        clock, sequence = time.perf_counter, self.sequence
        asked = clock()
        for batch in batches:
            self.waited += clock() - asked
            self.batches += 1
            if sequence:
                self.tokens += _main_tensor(batch).numel()
            yield batch
            asked = clock()

    def read(self) -> dict[str, float]:
        """perf/ metrics since the last read (or restart), then count anew. Tokens are this process's share
        times the processes (every process gets an equal share of each global batch)."""
        seconds = max(time.perf_counter() - self.started, 1e-9)
        metrics = {
            "perf/samples_per_second": self.batches * self.batch_size / seconds,
            "perf/data_wait_fraction": min(self.waited / seconds, 1.0),
            "perf/peak_memory_gib": peak_memory_bytes(self.device) / 2**30,
        }
        if self.sequence:
            tokens_per_second = self.tokens * self.world_size / seconds
            metrics["perf/tokens_per_second"] = tokens_per_second
            if self.flops_per_token is not None and self.peak_flops is not None:
                achieved = tokens_per_second * self.flops_per_token
                metrics["perf/mfu"] = achieved / (self.peak_flops * self.world_size)
        self.restart()
        return metrics


def of_run(recipe: Recipe, sequence: bool, parameters: int, device: torch.device, world_size: int) -> Throughput:
    """The Throughput of a run: MFU for the built-in gpt and Hugging Face models of sequence tasks (6 x
    `parameters` FLOPs per token) against logging.peak_tflops, or the table's peak for the GPU."""
    flops = 6.0 * parameters if sequence and recipe.model.name in FLOPS_MODELS else None
    peak = recipe.logging.peak_tflops or known_peak_tflops(device)
    return Throughput(device, recipe.data.batch_size, world_size, sequence, flops, peak * 1e12 if peak else None)
