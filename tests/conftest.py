"""Shared helpers for the end-to-end tests: running the CLI, and small synthetic data sets on disk."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import processes

# In-process runs (the matrix's 1-process cells, the CLI called in this process) are compared bitwise with runs
# in subprocesses, which use one thread (cli_env): CPU kernels such as LeNet's convolutions sum in another
# order on more threads, so this process uses one thread too, whatever the caller's environment says.
os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
torch.set_num_threads(1)
# The processes the tests start keep Python's bytecode caches, as a default Python does: with
# PYTHONDONTWRITEBYTECODE set (some sandboxes and CI images set it), every trainwright process compiles its
# modules again, ~0.4 s of CPU on a start-up of ~3.5 s, over a thousand processes a suite.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
RECIPES = REPO / "recipes"

# The FashionMNIST class names, written out here (not imported) so a change in src/ cannot hide a mistake.
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_TRAIN_SIZE = 1000
FASHION_TEST_SIZE = 200

# --- named data sizes: tests pick one of these (not a size of their own), so that runs of the same recipe can
# be shared (the `reference_runs` fixture) and a run costs what it must. heart keeps 80% for training, in
# batches of 64.
HEART_TINY = "data.num_points=400"  # 320 training points: 5 steps an epoch
HEART_SMALL = "data.num_points=800"  # 640: 10 steps an epoch
HEART_MEDIUM = "data.num_points=2000"  # 1600: 25 steps an epoch
# Text: the first characters of the stdlib's argparse source (`text_corpus`), as a user's own text file.
TEXT_SMALL = 20_000
TEXT_MEDIUM = 40_000

# Variables that would make a subprocess act as one rank of a distributed launch, or change how Accelerate,
# the torch launcher or W&B behave.
_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_TOOL_PREFIXES = ("ACCELERATE_", "PET_", "TORCHELASTIC_", "WANDB_", processes.TAG_VAR)


def cli_env(**changes: str | None) -> dict[str, str]:
    """The environment for a `python -m trainwright` subprocess: one thread, no GPU, no launcher, Accelerate
    or W&B variables from the caller's environment.

    Keyword arguments set variables; a value of None removes one.
    """
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith(_TOOL_PREFIXES)}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["CUDA_VISIBLE_DEVICES"] = ""  # the suite expects the CPU; tests/test_gpu.py gives its runs the GPUs
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def cli_env_with_path(*folders: Path, **changes: str | None) -> dict[str, str]:
    """`cli_env`, with `folders` first on PYTHONPATH (before this process's own): for runs that import code by
    import path (a user's module written by the test, the tests' own components, a sitecustomize hook)."""
    path = os.pathsep.join(filter(None, [*map(str, folders), os.environ.get("PYTHONPATH")]))
    return cli_env(PYTHONPATH=path, **changes)


def cli_env_with_tests(**changes: str | None) -> dict[str, str]:
    """`cli_env` with tests/ first on PYTHONPATH: for runs that name the tests' own components (a step, a task,
    a data set) by import path."""
    return cli_env_with_path(TESTS, **changes)


def run_cli(*args: object, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m trainwright ARGS...` from the repo root with stdin closed; never raises on failure.
    Whatever it leaves running (or everything, on a timeout) is killed."""
    return processes.run([sys.executable, "-m", "trainwright", *args], env if env is not None else cli_env(),
                         timeout=timeout)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[processes.Starter]:
    """`start(args, env, name=...)` runs a command in the background (output in tmp_path/<name>-N.log);
    everything the test started is killed when it ends, however it ends."""
    with processes.starter(tmp_path) as starter:
        yield starter


# --- CI must not pass without the Slurm cluster tests ---------------------------------------------------

# Set by .ci/run: the Slurm cluster tests fail instead of skipping (see tests/test_slurm.py), and the session
# fails when they were not all run (deselected, or their file not collected).
REQUIRE_SLURM_VAR = "TRAINWRIGHT_REQUIRE_SLURM"
_cluster_tests: dict[str, set[str]] = {"collected": set(), "ran": set()}


# Test files that take minutes on 2 CPU cores, roughly longest first: they are collected first, so that the
# two pytest-xdist workers (pyproject's addopts), each taking one file at a time in collection order, start on
# them and neither is left alone with one of them at the end.
LONG_FILES = ("test_tuning.py", "test_matrix.py", "test_resume.py", "test_fsdp.py", "test_workflows.py",
              "test_image_folder.py", "test_slurm.py", "test_ema.py", "test_wandb.py", "test_shards.py",
              "test_early_stopping.py")


def _file_rank(item: pytest.Item) -> int:
    name = item.path.name
    return LONG_FILES.index(name) if name in LONG_FILES else len(LONG_FILES)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:  # before -k/-m deselect anything
    _cluster_tests["collected"] = {item.nodeid for item in items if item.get_closest_marker("slurm_cluster")}
    items.sort(key=_file_rank)  # stable: the files keep their tests' order, the other files theirs


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and "slurm_cluster" in report.keywords:
        _cluster_tests["ran"].add(report.nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Under pytest-xdist, in the controller: what a worker collected (the reports of what ran reach the
    controller's pytest_runtest_logreport)."""
    _cluster_tests["collected"] |= set(getattr(node, "workeroutput", {}).get("slurm_cluster_tests", ()))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # a pytest-xdist worker: the controller decides
        workeroutput["slurm_cluster_tests"] = sorted(_cluster_tests["collected"])
        return
    if os.environ.get(REQUIRE_SLURM_VAR) != "1":
        return
    collected, ran = _cluster_tests["collected"], _cluster_tests["ran"]
    problem = ("no Slurm cluster test was collected (tests/test_slurm.py)" if not collected
               else f"Slurm cluster tests did not run: {sorted(collected - ran)}" if collected - ran else None)
    if problem:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"{REQUIRE_SLURM_VAR}=1: {problem}", red=True, bold=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- reading run dirs without trainwright ---------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file ([] when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def strict_json(text: str) -> Any:
    """Parse JSON as any other tool would: a bare NaN or Infinity is an error."""
    def refuse(constant: str) -> Any:
        raise ValueError(f"not valid JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete checkpoint, or None: checked against its manifest.json as the README
    describes it (every other file, those in its folders of shards too, listed with its size and sha256, nothing
    unlisted)."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        return "no manifest.json"
    files = json.loads(manifest_path.read_text())["files"]
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    if present != set(files):
        return f"files {sorted(present)} but the manifest lists {sorted(files)}"
    for name, entry in files.items():
        data = (folder / name).read_bytes()
        if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            return f"{name} does not match the manifest"
    return None


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Steps of the finished checkpoint folders (`checkpoints/step_XXXXXXXX`), oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name[5:]) for p in folder.iterdir() if p.name.startswith("step_") and p.is_dir())


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


def weights(run_dir: Path) -> bytes:
    """The bytes of a finished run's final weights (to compare two runs bitwise)."""
    return (run_dir / "model.safetensors").read_bytes()


def newest_valid_checkpoint(run_dir: Path) -> int | None:
    """The step a restarted run must resume from: the newest checkpoint that matches its manifest."""
    valid = [s for s in checkpoint_steps(run_dir) if checkpoint_problem(checkpoint_dir(run_dir, s)) is None]
    return valid[-1] if valid else None


RESUMED = re.compile(r"^Resuming from step (\d+) ", re.M)
DAMAGED = re.compile(r"checkpoint \S+ is damaged")


def assert_resumed(output: str, step: int | None = None, times: int = 1) -> list[int]:
    """A restart's whole output (stdout and stderr) says `times` times that it resumed from a step N > 0
    (`step` when given) and names no checkpoint as damaged; returns the steps."""
    steps = [int(n) for n in RESUMED.findall(output)]
    assert len(steps) == times and all(n > 0 for n in steps), f"resumed from steps {steps}, not {times} times\n{output}"
    assert step is None or steps == [step] * times, f"resumed from steps {steps}, expected {step}\n{output}"
    assert not DAMAGED.search(output), f"a checkpoint was called damaged\n{output}"
    return steps


def describe(result: subprocess.CompletedProcess) -> str:
    """Everything a failed assertion should show about a CLI run."""
    return (
        f"command: {result.args}\nexit code: {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def assert_ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    return result


def assert_user_error(returncode: int, stderr: str, *fragments: str) -> str:
    """A user error: non-zero exit, exactly one `trainwright: error:` message, no traceback; returns the message."""
    shown = f"exit code {returncode}\n--- stderr ---\n{stderr}"
    assert returncode != 0, shown
    assert returncode == 2, shown  # the CLI's documented exit code for user errors
    assert stderr.count("trainwright: error:") == 1, shown
    assert "Traceback" not in stderr, shown
    message = stderr[stderr.index("trainwright: error:"):]
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in the error message:\n{message}"
    return message


# --- W&B files, read with the wandb CLI's own reader of `.wandb` files ----------------------------------

WANDB_CLI = Path(sys.executable).parent / "wandb"


def no_credentials_env(home: Path, **changes: str | None) -> dict[str, str]:
    """No W&B API key anywhere: no WANDB_* variables, and a fresh HOME (so no ~/.netrc, no ~/.config/wandb)."""
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in cli_env().items() if k not in ("NETRC", "XDG_CONFIG_HOME")}
    env["HOME"] = str(home)
    env.update({k: v for k, v in changes.items() if v is not None})
    return env


def wandb_records(wandb_file: Path, env: dict[str, str]) -> list[dict]:
    """Every record of a `.wandb` file (`wandb leet inspect --json`)."""
    result = processes.run([WANDB_CLI, "leet", "inspect", "--json", wandb_file], env, timeout=120)
    assert result.returncode == 0, describe(result)
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def wandb_history(records: list[dict]) -> dict[int, dict]:
    """step -> the metrics W&B holds for it (values logged at one step are merged, as W&B shows them)."""
    history: dict[int, dict] = {}
    for record in records:
        if record["type"] == "history":
            item = {k: v for k, v in record["history"]["item"].items() if not k.startswith("_")}
            history.setdefault(record["history"]["step"]["num"], {}).update(item)
    return history


def wandb_run_ids(records: list[dict]) -> set[str]:
    return {record["run"]["run_id"] for record in records if record["type"] == "run"}


# Timings in metrics.jsonl: they differ from run to run, so comparisons of two runs leave them out.
WALL_CLOCK = ("train/epoch_seconds", "train/samples_per_second", "train/startup_seconds",
              "checkpoint/stall_seconds", "checkpoint/write_seconds", "perf/samples_per_second",
              "perf/tokens_per_second", "perf/mfu", "perf/data_wait_fraction", "perf/peak_memory_gib")


def metrics_by_step(run_dir: Path, skip: tuple[str, ...] = ()) -> dict[int, dict]:
    """metrics.jsonl as step -> every value logged at that step (but `step`, `epoch` and the `skip` keys)."""
    merged: dict[int, dict] = {}
    for record in read_jsonl(run_dir / "metrics.jsonl"):
        merged.setdefault(record["step"], {}).update(
            {k: v for k, v in record.items() if k not in ("step", "epoch", *skip)}
        )
    return merged


# --- synthetic FashionMNIST in the real IDX format ---------------------------------------------------


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3 file of uint8 images: big-endian magic 0x00000803, then N, rows, cols, then the pixels."""
    assert images.dtype == np.uint8 and images.ndim == 3
    path.write_bytes(struct.pack(">IIII", 0x00000803, *images.shape) + images.tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """IDX1 file of uint8 labels: big-endian magic 0x00000801, then N, then the labels."""
    assert labels.dtype == np.uint8 and labels.ndim == 1
    path.write_bytes(struct.pack(">II", 0x00000801, len(labels)) + labels.tobytes())


def fashion_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Learnable 28x28 images: class k lights up its own 7x7 cell of a 4x4 grid (shifted by up to a
    pixel), on top of dim noise everywhere; a classifier has to find which cell is bright."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.int64)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        dy, dx = rng.integers(-1, 2, size=2)
        top, left = max(0, row * 7 + dy), max(0, col * 7 + dx)
        images[i, top : top + 7, left : left + 7] += rng.integers(150, 196, size=(7, 7))[: 28 - top, : 28 - left]
    return np.clip(images, 0, 255).astype(np.uint8)


def fashion_labels(count: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(count) % 10).astype(np.uint8)


def write_fashion_mnist(root: Path, seed: int = 2024) -> np.ndarray:
    """Write synthetic FashionMNIST IDX files into `root`/FashionMNIST/raw/; return the test labels in file order."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    train_labels = fashion_labels(FASHION_TRAIN_SIZE, rng)
    test_labels = fashion_labels(FASHION_TEST_SIZE, rng)
    write_idx_images(raw / "train-images-idx3-ubyte", fashion_images(train_labels, rng))
    write_idx_labels(raw / "train-labels-idx1-ubyte", train_labels)
    write_idx_images(raw / "t10k-images-idx3-ubyte", fashion_images(test_labels, rng))
    write_idx_labels(raw / "t10k-labels-idx1-ubyte", test_labels)
    return test_labels


def text_corpus(path: Path, chars: int = TEXT_SMALL) -> Path:
    """Write the first `chars` characters of Python source (the stdlib's argparse module) to `path`."""
    import argparse
    import inspect

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(inspect.getsource(argparse)[:chars], encoding="utf-8")
    return path


# --- house prices CSV with missing values -------------------------------------------------------------


def house_frame(rows: int, seed: int = 7):
    """A house-prices table like d2l's house_tiny.csv: NumRooms and Alley both have missing values,
    and Price depends on both (so there is something to learn)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rooms = rng.integers(1, 7, size=rows).astype(float)
    alley = rng.choice(np.array(["Pave", "Grvl", None], dtype=object), size=rows)
    price = 60_000 + 25_000 * rooms + np.where(alley == "Pave", 30_000, 0) + rng.normal(0, 3_000, size=rows)
    rooms[rng.random(rows) < 0.2] = np.nan
    return pd.DataFrame({"NumRooms": rooms, "Alley": alley, "Price": price.round()})


# --- webdataset shards of feature rows ---------------------------------------------------------------


def write_shards(root: Path, sizes: tuple[int, ...] = (10, 14, 9, 12, 11, 16), val: int = 20) -> Path:
    """Train shards of `sizes` samples and one val shard of `val`, with webdataset's TarWriter: 4 features as
    .npy, a class (0, 1 or 2: how many of the first two features are positive) as .cls."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    rng, number = np.random.default_rng(0), 0
    for name, shard_sizes in (("train", sizes), ("val", (val,))):
        for shard, size in enumerate(shard_sizes):
            with wds.TarWriter(str(root / f"{name}-{shard:02d}.tar")) as writer:
                for _ in range(size):
                    x = rng.normal(size=4).astype(np.float32)
                    writer.write({"__key__": f"{number:06d}", "npy": x, "cls": int(x[0] > 0) + int(x[1] > 0)})
                    number += 1
    return root


# --- end-to-end workflows -------------------------------------------------------------------------------


def workflow(fn: Callable[[Path], Any]) -> Any:
    """Turn `fn(folder) -> result` (a few CLI runs) into a module fixture of the same name, run once."""

    @pytest.fixture(scope="module", name=fn.__name__)
    def fixture(tmp_path_factory: pytest.TempPathFactory) -> Any:
        return fn(tmp_path_factory.mktemp(fn.__name__))

    fixture.__doc__ = fn.__doc__
    return fixture


@pytest.fixture
def house_csv(tmp_path: Path) -> Path:
    """houses.csv (150 rows) in a folder of its own, as the current folder of the tests that use it."""
    folder = tmp_path / "project"
    folder.mkdir()
    house_frame(150).to_csv(folder / "houses.csv", index=False)
    return folder / "houses.csv"


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Any:
    """tests/resuming.py's ReferenceRuns: uninterrupted runs trained once per session, shared by every test and
    every pytest-xdist worker (in the folder above the workers' own, under a file lock, as pytest-xdist
    documents)."""
    from resuming import ReferenceRuns

    base = tmp_path_factory.getbasetemp()
    return ReferenceRuns((base if worker_id == "master" else base.parent) / "reference_runs")


@pytest.fixture
def keep_signal_handlers() -> Iterator[None]:
    """The trainer leaves stop signals ignored once one arrived (the CLI exits then); tests go on."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
