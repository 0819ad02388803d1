"""Throughput at each log interval (perf/...): samples and tokens per second, MFU by the 6N rule against a
peak (set, or a known GPU's), peak memory, the share of time spent waiting for data."""

from __future__ import annotations

import inspect
import json
import resource

import pytest
import torch

from conftest import REPO, assert_ok, cli_env, describe, run_cli
from trainwright.recipe import load_recipe
from trainwright.training import throughput
from trainwright.training.throughput import Throughput, known_peak_tflops


class Clock:
    """A stand-in for the time module whose clock moves only when told."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(throughput, "time", fake)
    return fake


def _batches(clock: Clock, count: int, wait: float, size: tuple[int, ...]):
    """Batches of `size` targets that each take `wait` seconds to arrive."""
    for _ in range(count):
        clock.now += wait
        yield torch.zeros(size[0], 3), torch.zeros(size, dtype=torch.long)


def test_tokens_samples_mfu_and_data_wait_of_an_interval(clock):
    # 2 processes, each trains 4 batches of 8 sequences of 16 tokens; each batch waits 0.5 s, computes 2 s
    meter = Throughput(torch.device("cpu"), batch_size=16, world_size=2, sequence=True, flops_per_token=6e6,
                       peak_flops=1e12)
    for _ in meter.timed(_batches(clock, 4, 0.5, (8, 16))):
        clock.now += 2.0
    metrics = meter.read()
    assert metrics["perf/samples_per_second"] == pytest.approx(4 * 8 * 2 / 10.0)
    assert metrics["perf/tokens_per_second"] == pytest.approx(4 * 8 * 16 * 2 / 10.0)
    assert metrics["perf/data_wait_fraction"] == pytest.approx(2.0 / 10.0)
    assert metrics["perf/mfu"] == pytest.approx(4 * 8 * 16 * 2 / 10.0 * 6e6 / (1e12 * 2))
    assert metrics["perf/peak_memory_gib"] * 2**30 == pytest.approx(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rel=0.05
    )
    clock.now += 5.0  # the next interval counts anew
    assert meter.read()["perf/samples_per_second"] == 0


def test_a_classifier_has_no_tokens_and_a_model_of_unknown_flops_no_mfu(clock):
    meter = Throughput(torch.device("cpu"), batch_size=8, world_size=1, sequence=False, flops_per_token=None,
                       peak_flops=1e12)
    for _ in meter.timed(_batches(clock, 3, 0.0, (8,))):
        clock.now += 1.0
    assert set(meter.read()) == {"perf/samples_per_second", "perf/data_wait_fraction", "perf/peak_memory_gib"}


def test_mfu_only_for_language_models_and_a_known_peak():
    gpt = load_recipe(REPO / "recipes" / "tiny_gpt.yaml")
    cpu = torch.device("cpu")
    assert throughput.of_run(gpt, True, 1000, cpu, 1).peak_flops is None  # no peak on the CPU unless set
    meter = throughput.of_run(load_recipe(REPO / "recipes" / "tiny_gpt.yaml", ["logging.peak_tflops=2.5"]), True,
                              1000, cpu, 1)
    assert (meter.flops_per_token, meter.peak_flops) == (6000.0, 2.5e12)
    heart = load_recipe(REPO / "recipes" / "heart.yaml", ["logging.peak_tflops=2.5"])
    assert throughput.of_run(heart, False, 1000, cpu, 1).flops_per_token is None
    assert known_peak_tflops(cpu) is None


def test_known_gpus_peaks(monkeypatch):
    for name, peak in (("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                       ("NVIDIA L4", 121.0), ("NVIDIA GeForce GTX 1080", None)):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert known_peak_tflops(torch.device("cuda", 0)) == peak, name


def test_tiny_gpt_logs_tokens_per_second_and_mfu(tmp_path):
    import argparse

    corpus = tmp_path / "argparse.txt"
    corpus.write_text(inspect.getsource(argparse)[:40_000], encoding="utf-8")
    run_dir = tmp_path / "run"
    result = assert_ok(run_cli(
        "train", "recipes/tiny_gpt.yaml", f"data.path={corpus}", "data.pattern=*", "model.layers=1", "model.width=32",
        "model.heads=2", "model.context=16", "data.context=16", "data.batch_size=16", "logging.wandb=false",
        "trainer.max_steps=20", "trainer.log_every_steps=10", "scheduler.warmup_steps=5", "logging.peak_tflops=0.5",
        "--run-dir", run_dir, env=cli_env(TRAINWRIGHT_CACHE=str(tmp_path / "cache")),
    ))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in logged] == [10, 20], describe(result)
    parameters = json.loads((run_dir / "summary.json").read_text())["model_summary"]["parameters"]
    for record in logged:
        assert record["perf/tokens_per_second"] == pytest.approx(record["perf/samples_per_second"] * 16)
        assert record["perf/mfu"] == pytest.approx(record["perf/tokens_per_second"] * 6 * parameters / 0.5e12)
        assert 0 <= record["perf/data_wait_fraction"] < 1 and record["perf/peak_memory_gib"] > 0
    assert "tokens/s=" in result.stderr and "mfu=" in result.stderr, describe(result)
