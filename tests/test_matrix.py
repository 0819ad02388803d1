"""The composition matrix (issue 27): every registered data set x every model family that can take it x
{1 process, 2 DDP, 2 FSDP} x {train, SIGKILL + resume bitwise, eval, predict, export}, generated from the
registries and the tiny settings of tests/matrix_settings.py. A pair that cannot combine is one user error:
from `trainwright check` where the data set declares what it yields, else from `train`'s start-up check.

CI runs a fixed cover: every pair once, every refused pair, and every (launcher, action) column at least once
(the columns rotate across the pairs). `make test-matrix` (TRAINWRIGHT_MATRIX=full) runs every cell.

A cell trains a tiny run (4 steps, a checkpoint every 2) under its launcher; `resume` SIGKILLs another run
right after its step-2 checkpoint (tests/kill_at_step.py) and restarts it: it must resume from step 2 and end
with the uninterrupted run's weights, bitwise. eval and predict run under the cell's launcher; export reads
the run's (possibly sharded) checkpoint on one process."""

from __future__ import annotations

import json
import os
import sys
from itertools import product
from pathlib import Path
from typing import Any

import pytest
import yaml
from safetensors.torch import load_file

import matrix_settings
import resuming
from conftest import REPO, assert_resumed, assert_user_error, cli_env, weights
from processes import free_port, run
from reliability_helpers import call
from trainwright import components  # noqa: F401  (registers the built-ins)
from trainwright.distributed.accelerate_compat import forget_accelerator_state
from trainwright.registry import DATASETS, MODELS

CONFIGS = {"ddp": REPO / "accelerate_configs" / "cpu_2proc.yaml",
           "fsdp": REPO / "accelerate_configs" / "fsdp_cpu_2proc.yaml"}
LAUNCHERS = ("1proc", "ddp", "fsdp")
ACTIONS = ("train", "resume", "eval", "predict", "export")
FULL = os.environ.get("TRAINWRIGHT_MATRIX") == "full"
KILL_STEP = 2

# Cells that fail for a known bug: (data, family, launcher, action) -> the bug (None: any launcher/action).
KNOWN_BUGS: dict[tuple[str, str, str | None, str | None], str] = {}


def families() -> list[tuple[str, matrix_settings.ModelFamily]]:
    """(registered model name, family) for every registered model that has tiny settings."""
    return [(name, family) for name in MODELS.names() for family in matrix_settings.MODELS.get(name, [])]


def pairs() -> list[tuple[str, str, str, str | None]]:
    """(data, model name, family, refusal) for every registered data set with tiny settings x every family:
    refusal is None (the pair trains), 'check' or 'startup' (where the pair is refused)."""
    rows = []
    for data in DATASETS.names():
        tiny = matrix_settings.DATA.get(data)
        if tiny is None:
            continue
        for name, family in families():
            if tiny.facts.kind not in family.takes:
                refusal = "check" if tiny.facts.declared else "startup"
            else:
                refusal = "startup" if family.fits(tiny.facts) else None
            rows.append((data, name, family.family, refusal))
    return rows


def cells() -> list[tuple[str, str, str, str, str]]:
    """(data, model name, family, launcher, action): all of them with TRAINWRIGHT_MATRIX=full, else the cover:
    each working pair once, the (launcher, action) columns rotating across them until each came at least once."""
    working = [(d, n, f) for d, n, f, refusal in pairs() if refusal is None]
    columns = list(product(LAUNCHERS, ACTIONS))
    if FULL:
        return [(*pair, *column) for pair in working for column in columns]
    count = max(len(working), len(columns))
    return [(*working[i % len(working)], *columns[i % len(columns)]) for i in range(count)] if working else []


def _marks(data: str, family: str, launcher: str, action: str) -> list[Any]:
    for (d, f, la, ac), bug in KNOWN_BUGS.items():
        if (d, f) == (data, family) and la in (None, launcher) and ac in (None, action):
            return [pytest.mark.xfail(reason=bug, strict=True)]
    return []


# --- the table covers the registries --------------------------------------------------------------------


def test_every_registered_component_has_tiny_settings():
    missing = [f"add tiny settings for data set '{name}' to tests/matrix_settings.py DATA"
               for name in DATASETS.names() if name not in matrix_settings.DATA and name not in matrix_settings.NOT_YET]
    missing += [f"add tiny settings for model '{name}' to tests/matrix_settings.py MODELS"
                for name in MODELS.names() if not matrix_settings.MODELS.get(name)]
    assert not missing, "\n".join(missing)
    stale = sorted({*matrix_settings.DATA, *matrix_settings.NOT_YET} - set(DATASETS.names())
                   | {*matrix_settings.MODELS} - set(MODELS.names()))
    assert not stale, f"tiny settings for names no registry has: {stale}"


def test_the_cover_has_every_row_and_column():
    working = {(d, f) for d, _, f, refusal in pairs() if refusal is None}
    chosen = cells()
    assert {(d, f) for d, _, f, _, _ in chosen} == working
    assert {(la, ac) for *_, la, ac in chosen} == set(product(LAUNCHERS, ACTIONS))


# --- tiny runs -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def matrix_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("matrix")


_made: dict[str, dict[str, Any]] = {}


def data_section(folder: Path, data: str) -> dict[str, Any]:
    """The data set's tiny files, written once per session; its recipe section."""
    if data not in _made:
        target = folder / "data" / data
        target.mkdir(parents=True)
        _made[data] = {"name": data, **matrix_settings.DATA[data].make(target), "batch_size": 8}
    return _made[data]


def write_recipe(folder: Path, data: str, name: str, family: str) -> Path:
    tiny = matrix_settings.DATA[data]
    chosen = next(f for n, f in families() if f.family == family)
    model, loss = chosen.settings(tiny.facts)
    recipe = {
        "name": f"{data}_{family}", "seed": 0,
        "data": data_section(folder, data),
        "model": {"name": name, **model},
        "loss": {"name": loss},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "trainer": {"epochs": 4, "max_steps": 2 * KILL_STEP, "log_every_steps": 1},
        "checkpoint": {"every_steps": KILL_STEP, "every_epochs": None, "keep_last": 5},
        "logging": {"wandb": False},
    }
    path = folder / "recipes" / f"{data}_{family}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def env(folder: Path) -> dict[str, str]:
    return cli_env(TRAINWRIGHT_CACHE=str(folder / "cache"))


def launch(launcher: str, script: list[object], *args: object, folder: Path) -> Any:
    """`script ARGS` (e.g. `-m trainwright train ...`) as a subprocess, on one process or under `accelerate launch`."""
    prefix: list[object] = [sys.executable]
    if launcher != "1proc":
        prefix += ["-m", "accelerate.commands.launch", "--config_file", CONFIGS[launcher], "--num_processes", "2",
                   "--main_process_port", free_port()]
    return run([*prefix, *script, *args], env(folder), timeout=600)


def cli(launcher: str, capsys: pytest.CaptureFixture, *args: object, folder: Path) -> tuple[str, str]:
    """`trainwright ARGS` under `launcher`, which must succeed: in this process for one process (a CLI start-up
    costs seconds here), else launched; (stdout, stderr)."""
    if launcher == "1proc":
        forget_accelerator_state()
        code, out, err = call(capsys, *args)
    else:
        result = launch(launcher, ["-m", "trainwright"], *args, folder=folder)
        code, out, err = result.returncode, result.stdout, result.stderr
    assert code == 0 and "Traceback" not in err, f"trainwright {args}: exit code {code}\n{out}\n{err}"
    return out, err


_trained: dict[tuple[str, str, str], Path] = {}


def trained(folder: Path, capsys: pytest.CaptureFixture, data: str, name: str, family: str, launcher: str) -> Path:
    """The run dir of the pair's uninterrupted run under `launcher` (trained once per session)."""
    key = (data, family, launcher)
    if key not in _trained:
        run_dir = folder / "runs" / f"{data}_{family}_{launcher}"
        out, _ = cli(launcher, capsys, "train", write_recipe(folder, data, name, family), "--run-dir", run_dir,
                     folder=folder)
        processes_ = 1 if launcher == "1proc" else 2
        assert f"world_size={processes_} " in out, out
        assert (launcher == "fsdp") == ("strategy=fsdp" in out), out
        assert f"Run complete at step {2 * KILL_STEP}" in out, out
        _trained[key] = run_dir
    return _trained[key]


@pytest.mark.slow
@pytest.mark.parametrize(("data", "name", "family", "launcher", "action"),
                         [pytest.param(*cell, marks=_marks(cell[0], *cell[2:])) for cell in cells()],
                         ids=lambda value: str(value))
def test_cell(matrix_dir, data, name, family, launcher, action, capsys, monkeypatch, keep_signal_handlers):
    monkeypatch.setenv("TRAINWRIGHT_CACHE", str(matrix_dir / "cache"))
    run_dir = trained(matrix_dir, capsys, data, name, family, launcher)
    if action == "train":
        assert weights(run_dir)
    elif action == "resume":
        recipe, killed = write_recipe(matrix_dir, data, name, family), matrix_dir / "killed" / run_dir.name
        launch_args = [] if launcher == "1proc" else resuming.launcher(CONFIGS[launcher], "--num_processes", 2)
        resuming.kill_at(KILL_STEP, ["train", recipe, "--run-dir", killed], killed, launch_args, env(matrix_dir))
        out, err = cli(launcher, capsys, "train", recipe, "--run-dir", killed, folder=matrix_dir)
        assert_resumed(out + err, step=KILL_STEP)
        assert weights(killed) == weights(run_dir)
    elif action == "eval":
        out, _ = cli(launcher, capsys, "eval", run_dir, folder=matrix_dir)
        assert out.count('/loss"') == 1, out  # the main process alone prints (val/loss, or test/loss)
        assert any(key.endswith("/loss") for key in json.loads(out[out.index("{"):])), out
    elif action == "predict":
        lm = matrix_settings.DATA[data].facts.kind in (matrix_settings.TOKENS, matrix_settings.NAMED_TOKENS)
        asked = ["--prompt", "the ", "--length", "8"] if lm else ["-n", "3"]
        out, _ = cli(launcher, capsys, "predict", run_dir, *asked, folder=matrix_dir)
        assert out.strip() and (not lm or "the " in out), out
    else:
        exported = matrix_dir / "exports" / f"{run_dir.name}.safetensors"
        exported.parent.mkdir(exist_ok=True)
        cli("1proc", capsys, "export", run_dir, "--out", exported, folder=matrix_dir)
        assert load_file(exported), f"{exported} holds no tensors"


# --- pairs that cannot combine --------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "name", "family", "refusal"), [p for p in pairs() if p[3] is not None],
                         ids=lambda value: str(value))
def test_a_pair_that_cannot_combine_is_one_message(matrix_dir, data, name, family, refusal, capsys, monkeypatch):
    monkeypatch.setenv("TRAINWRIGHT_CACHE", str(matrix_dir / "cache"))
    recipe = write_recipe(matrix_dir, data, name, family)
    chosen = next(f for n, f in families() if f.family == family)
    if refusal == "check":
        code, _, err = call(capsys, "check", recipe)
        shown = f"model 'hf ({chosen.settings(matrix_settings.DATA[data].facts)[0]['architecture']})'" \
            if name == "hf" else f"model '{name}'"
        assert_user_error(code, err, shown, f"data set '{data}'", "model.name:", "data.name:")
    else:
        code, out, err = call(capsys, "train", recipe, "--run-dir", matrix_dir / "refused" / f"{data}_{family}")
        fragment = chosen.fits(matrix_settings.DATA[data].facts) or "does not fit the data"
        assert_user_error(code, err, f"model '{name}'", f"data set '{data}'", fragment)
        assert "Run complete" not in out
