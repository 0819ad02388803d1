"""Checkpoints whose files pass their manifest but are not what they claim to be (issue 19): crafted
safetensors headers, shard offsets and manifest entries are "damaged: skipping it" with the fallback a
truncated file gets, in `train`, `eval --checkpoint`, `export` and `--resume`; a seeded fuzzer mutates bytes
and fields of every kind of file of a full and a sharded checkpoint and finds no traceback and no wrong
load (whatever verifies loads exactly the values its files hold)."""

from __future__ import annotations

import json
import random
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import processes
from conftest import REPO, assert_user_error, cli_env
from reliability_helpers import HEART, TINY, call, train_ok, user_error
from trainwright.checkpoint.format import verify
from trainwright.checkpoint.manager import CheckpointManager
from trainwright.checkpoint.objects import TrainObjects
from trainwright.checkpoint.sharded import consolidated_weights
from trainwright.components import build_model, build_optimizer, build_scheduler
from trainwright.distributed.processes import Processes
from trainwright.errors import UserError
from trainwright.recipe import CheckpointConfig, load_recipe
from trainwright.run.directory import RunDir
from trainwright.run.files import sha256
from trainwright.run.plan import plan_run

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")

FSDP_2PROC = REPO / "accelerate_configs" / "fsdp_cpu_2proc.yaml"
# 5 steps per epoch (TINY); checkpoints at steps 2 and 4, then the run stops at max_steps 4. A schedule laid
# out over the run's length makes a resume with another recipe read the checkpoint's recipe.json.
STEPS = ["trainer.max_steps=4", "checkpoint.every_steps=2", "checkpoint.keep_last=5", "scheduler.name=cosine"]
TORCH_DTYPES = {
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "U8": torch.uint8,
    "BF16": torch.bfloat16,
}


# --- crafting files behind a matching manifest ---------------------------------------------------------


def split_safetensors(path: Path) -> tuple[dict[str, Any], bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def write_safetensors(path: Path, header: dict[str, Any], body: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + body)


def edit_header(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    header, body = split_safetensors(path)
    edit(header)
    write_safetensors(path, header, body)


def reseal(folder: Path) -> None:
    """Make manifest.json match the files as they are now (what a crafted checkpoint does)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in manifest["files"]:
        path = folder / name
        if path.is_file():
            manifest["files"][name] = {"bytes": path.stat().st_size, "sha256": sha256(path)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def tensors_by_offset(header: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted((v for k, v in header.items() if k != "__metadata__"), key=lambda e: e["data_offsets"][0])


def _overlap(header: dict[str, Any]) -> None:
    second = tensors_by_offset(header)[1]
    second["data_offsets"] = [o - 4 for o in second["data_offsets"]]


def _out_of_range(header: dict[str, Any]) -> None:
    last = tensors_by_offset(header)[-1]
    last["data_offsets"] = [o + 4096 for o in last["data_offsets"]]


def _shape(header: dict[str, Any]) -> None:
    entry = next(v for v in tensors_by_offset(header) if len(v["shape"]) == 2)
    entry["shape"] = [entry["shape"][0], entry["shape"][1] + 1]


def _dtype(header: dict[str, Any]) -> None:
    tensors_by_offset(header)[0]["dtype"] = "F33"


def _metadata(header: dict[str, Any]) -> None:
    header["__metadata__"] = {"step": 4}


CRAFTED_HEADERS = {
    "overlapping offsets": _overlap,
    "out-of-range offsets": _out_of_range,
    "shape inconsistent with its bytes": _shape,
    "unknown dtype": _dtype,
    "non-string metadata": _metadata,
}


def _missing_field(manifest: dict[str, Any]) -> None:
    del manifest["files"]["model.safetensors"]["sha256"]


def _wrong_type(manifest: dict[str, Any]) -> None:
    manifest["files"]["model.safetensors"]["bytes"] = str(manifest["files"]["model.safetensors"]["bytes"])


def _files_a_list(manifest: dict[str, Any]) -> None:
    manifest["files"] = list(manifest["files"])


def _no_step(manifest: dict[str, Any]) -> None:
    del manifest["step"]


CRAFTED_MANIFESTS = {"an entry without sha256": _missing_field, "bytes as a string": _wrong_type,
                     "files as a list": _files_a_list, "no step": _no_step}


# --- a run with two checkpoints --------------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A tiny heart run stopped (as if killed) after its checkpoints at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("crafted") / "run"
    result = processes.run([sys.executable, "-m", "trainwright", "train", HEART, *TINY, *STEPS, "--run-dir", run_dir],
                           cli_env())
    assert result.returncode == 0, result.stderr
    (run_dir / "summary.json").unlink()
    (run_dir / "model.safetensors").unlink()
    return run_dir


@pytest.fixture
def run_dir(pristine, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(pristine, copy)
    return copy


def newest(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "step_00000004"


def assert_falls_back(capsys, run_dir: Path) -> None:
    """train, eval --checkpoint latest, export RUN_DIR skip the crafted newest checkpoint and use step 2;
    --resume of it is one message and makes no run dir."""
    damaged = newest(run_dir)
    skipped = f"checkpoint {damaged} is damaged ("
    code, out, err = call(capsys, "export", run_dir, "--out", run_dir.parent / "w.safetensors")
    assert code == 0 and "Traceback" not in err, err
    assert skipped in err and "skipping it" in err and "Exported step 2 " in out, out + err
    code, out, err = call(capsys, "eval", run_dir, "--checkpoint", "latest")
    assert code == 0 and "Traceback" not in err, err
    assert skipped in err and "using the weights of checkpoint step 2" in err, err
    elsewhere = run_dir.parent / "elsewhere"
    user_error(capsys, "train", HEART, *TINY, *STEPS, "--run-dir", elsewhere, "--resume", damaged,
               fragments=("--resume", str(damaged), "cannot be used"))
    assert not elsewhere.exists()
    out, err = train_ok(capsys, HEART, *TINY, *STEPS, "--run-dir", run_dir)
    assert skipped in err and "skipping it" in err and "Traceback" not in err, err
    assert "Resuming from step 2 (" in out, out


@pytest.mark.parametrize("craft", CRAFTED_HEADERS.values(), ids=CRAFTED_HEADERS.keys())
def test_a_crafted_safetensors_header_behind_a_matching_manifest_is_damaged(capsys, run_dir, craft):
    edit_header(newest(run_dir) / "model.safetensors", craft)
    reseal(newest(run_dir))
    assert "model.safetensors is not a safetensors file" in verify(newest(run_dir))
    assert_falls_back(capsys, run_dir)


@pytest.mark.parametrize("craft", CRAFTED_MANIFESTS.values(), ids=CRAFTED_MANIFESTS.keys())
def test_a_manifest_with_missing_fields_or_wrong_types_is_damaged(capsys, run_dir, craft):
    path = newest(run_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    craft(manifest)
    path.write_text(json.dumps(manifest))
    assert verify(newest(run_dir)).startswith("manifest.json is damaged (")
    assert_falls_back(capsys, run_dir)


def test_a_crafted_trainer_json_is_damaged(capsys, run_dir):
    path = newest(run_dir) / "trainer.json"
    state = json.loads(path.read_text())
    state["batch_in_epoch"] = "4"
    path.write_text(json.dumps(state))
    reseal(newest(run_dir))
    assert verify(newest(run_dir)).startswith("trainer.json is damaged (batch_in_epoch")
    assert_falls_back(capsys, run_dir)


def test_a_trainer_json_beyond_its_own_epoch_is_damaged(capsys, run_dir):
    """Issue 26: batch_in_epoch 10^9 made the resumed run spin at 99% CPU, deaf to SIGTERM."""
    path = newest(run_dir) / "trainer.json"
    state = json.loads(path.read_text())
    state["batch_in_epoch"] = 10**9
    path.write_text(json.dumps(state))
    reseal(newest(run_dir))
    assert verify(newest(run_dir)) == "trainer.json is at batch 1000000000 of an epoch of 5 batches (5 steps)"
    assert_falls_back(capsys, run_dir)


def test_a_position_beyond_an_epoch_of_the_data_trained_on_now_is_refused(capsys, run_dir):
    """A checkpoint consistent in itself (an epoch of 100 steps, at batch 50) but not with the data: one message."""
    path = newest(run_dir) / "trainer.json"
    state = json.loads(path.read_text())
    state.update(steps_per_epoch=100, batch_in_epoch=50)
    path.write_text(json.dumps(state))
    reseal(newest(run_dir))
    assert verify(newest(run_dir)) is None
    user_error(capsys, "train", HEART, *TINY, *STEPS, "--run-dir", run_dir, fragments=(
        f"{newest(run_dir)} is at batch 50 of epoch 0, but an epoch of this data has 5 batches", "--restart"))


def test_a_crafted_final_model_file_is_damaged_and_train_writes_it_again(capsys, run_dir):
    train_ok(capsys, HEART, *TINY, *STEPS, "--run-dir", run_dir)  # completes: model.safetensors is written
    model = run_dir / "model.safetensors"
    edit_header(model, _overlap)
    user_error(capsys, "eval", run_dir, fragments=(str(model), "is damaged", "overlaps"))
    out, err = train_ok(capsys, HEART, *TINY, *STEPS, "--run-dir", run_dir)
    assert f"{model} is damaged; writing it again" in err and "Resuming from step 4 (" in out, out + err
    code, _, err = call(capsys, "eval", run_dir)
    assert code == 0 and "Traceback" not in err, err

def test_resume_of_a_run_dir_says_how_to_resume_it(capsys, run_dir):
    message = user_error(
        capsys,
        "train",
        HEART,
        *TINY,
        *STEPS,
        "--run-dir",
        run_dir.parent / "other",
        "--resume",
        run_dir,
        fragments=(
            f"{run_dir} is a run dir, not a checkpoint",
            "without --resume",
            f"--resume {run_dir / 'checkpoints' / 'step_00000004'}",
        ),
    )
    assert "the save did not finish" not in message
    assert not (run_dir.parent / "other").exists()


# --- the fuzzer ---------------------------------------------------------------------------------------

MUTATIONS_PER_KIND = 14
ODD_VALUES: list[Any] = [None, "x", -1, 0, 1.5, 10**15, [], {}, True, "F33", [1, 2, 3]]


def _decoded(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file decoded by hand from its header and bytes (not by safetensors)."""
    header, body = split_safetensors(path)
    tensors = {}
    for key, entry in header.items():
        if key != "__metadata__":
            raw = bytearray(body[entry["data_offsets"][0] : entry["data_offsets"][1]])
            dtype = TORCH_DTYPES[entry["dtype"]]
            tensors[key] = (torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)).reshape(
                entry["shape"]
            )
    return tensors


def _assembled(folder: Path) -> dict[str, torch.Tensor]:
    """The whole tensors of a DCP shard folder, put together by hand from each file's saved_offsets."""
    whole: dict[str, torch.Tensor] = {}
    for path in sorted(folder.glob("*.safetensors")):
        info = json.loads(split_safetensors(path)[0]["__metadata__"]["DCP_SHARDING_INFO"])
        for key, chunk in _decoded(path).items():
            offsets = info[key]["saved_offsets"]
            size = [o + n for o, n in zip(offsets, chunk.shape)]
            if key in whole:
                size = [max(a, b) for a, b in zip(size, whole[key].shape)]
                grown = torch.full(size, float("nan"), dtype=chunk.dtype)
                grown[tuple(slice(0, n) for n in whole[key].shape)] = whole[key]
                whole[key] = grown
            else:
                whole[key] = torch.full(size, float("nan"), dtype=chunk.dtype)
            whole[key][tuple(slice(o, o + n) for o, n in zip(offsets, chunk.shape))] = chunk
    return whole


def _json_paths(node: Any, path: tuple = ()) -> list[tuple]:
    """Every (container path, key) in a JSON tree."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    found = []
    for key, value in items:
        found.append((*path, key))
        found.extend(_json_paths(value, (*path, key)))
    return found


def _change_field(rng: random.Random, tree: Any) -> str:
    paths = _json_paths(tree)
    if not paths:
        return "nothing to change"
    *parent_path, key = rng.choice(paths)
    parent = tree
    for part in parent_path:
        parent = parent[part]
    old = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.25:
        del parent[key]
        return f"deleted {[*parent_path, key]}"
    if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
        parent[key] = old + rng.choice([-1, 1, 4, 1000])
    elif isinstance(old, list) and old and rng.random() < 0.5:
        parent[key] = old[::-1] if rng.random() < 0.5 else old[:-1]
    else:
        parent[key] = rng.choice(ODD_VALUES)
    return f"{[*parent_path, key]}: {old!r:.40} -> {parent[key]!r:.40}"


def mutate(rng: random.Random, folder: Path, name: str) -> str:
    """Change one file of a checkpoint: its bytes or one field of its JSON (for safetensors: of its header);
    most mutations also make the manifest match again, so that the contents alone must be found out."""
    path = folder / name
    data = bytearray(path.read_bytes())
    how = rng.choice(["flip", "truncate", "extend", "field", "field"])
    if how == "flip":
        header_end = 8 + struct.unpack("<Q", data[:8])[0] if name.endswith(".safetensors") else len(data)
        pos = rng.randrange(min(header_end, len(data)) if rng.random() < 0.7 else len(data))
        data[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        what = f"flipped a bit of byte {pos}"
    elif how == "truncate":
        cut = rng.randrange(len(data))
        path.write_bytes(bytes(data[:cut]))
        what = f"cut to {cut} bytes"
    elif how == "extend":
        path.write_bytes(bytes(data) + bytes(rng.randrange(1, 16)))
        what = "bytes appended"
    elif name.endswith(".safetensors"):
        header, body = split_safetensors(path)
        what = "header " + _change_field(rng, header)
        write_safetensors(path, header, body)
    else:
        content = json.loads(path.read_text())
        what = _change_field(rng, content)
        path.write_text(json.dumps(content))
    if name != "manifest.json" and rng.random() < 0.85:
        reseal(folder)
        what += ", manifest resealed"
    return f"{name}: {what}"


def _objects(run_dir: Path) -> TrainObjects:
    recipe = RunDir(run_dir).recipe()
    model = build_model(recipe)
    optimizer = build_optimizer(recipe, model)
    return TrainObjects(model, optimizer, build_scheduler(recipe, optimizer, total_steps=4), scaler=None)


def _loads_exactly_its_files(run_dir: Path, folder: Path) -> str:
    """Plan a resume of `folder`, load it and read its weights as export and eval do: each step either
    refuses with a UserError or gives exactly the values its files hold. Returns which."""
    changed = load_recipe(HEART, [*TINY, *STEPS, "trainer.log_every_steps=7"])  # the plan reads recipe.json
    try:
        plan_run(RunDir(run_dir.parent / "elsewhere"), changed, resume=folder)
        objects = _objects(run_dir)
        CheckpointManager(run_dir / "checkpoints", CheckpointConfig(), Processes.single(), objects).load(folder)
        weights = consolidated_weights(folder)
    except UserError:
        return "refused"
    on_disk = _assembled(folder / "model") if (folder / "model").is_dir() else _decoded(folder / "model.safetensors")
    loaded = objects.model.state_dict()
    assert on_disk.keys() == loaded.keys() == weights.keys()
    for key in on_disk:
        assert torch.equal(on_disk[key], loaded[key]) and torch.equal(on_disk[key], weights[key]), key
    return "loaded"


def fuzz(run_dir: Path, seed: int) -> dict[str, int]:
    """Mutate every kind of file of the newest checkpoint of `run_dir`, one mutation per copy."""
    pristine = newest(run_dir)
    kinds = sorted(json.loads((pristine / "manifest.json").read_text())["files"]) + ["manifest.json"]
    rng = random.Random(seed)
    outcomes = {"damaged": 0, "refused": 0, "loaded": 0}
    for name in kinds:
        for round_ in range(MUTATIONS_PER_KIND):
            folder = run_dir.parent / "fuzzed"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(pristine, folder)
            what = mutate(rng, folder, name)
            try:
                outcome = "damaged" if verify(folder) else _loads_exactly_its_files(run_dir, folder)
            except Exception as exc:  # the point is to say which mutation it was
                raise AssertionError(f"mutation {round_} of {what}: {type(exc).__name__}: {exc}") from exc
            outcomes[outcome] += 1
    shutil.rmtree(run_dir.parent / "fuzzed")
    return outcomes


def test_fuzzing_a_full_checkpoint_finds_no_traceback_and_no_wrong_load(pristine, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(pristine, run_dir)
    outcomes = fuzz(run_dir, seed=19)
    assert outcomes["damaged"] > outcomes["loaded"] > 0, outcomes


# --- a sharded checkpoint ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> Path:
    """The same tiny run under FSDP on 2 CPU processes (checkpoints hold a shard file per process)."""
    run_dir = tmp_path_factory.mktemp("crafted_sharded") / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", FSDP_2PROC,
              "--main_process_port", str(processes.free_port())]
    result = processes.run([*launch, "-m", "trainwright", "train", HEART, *TINY, *STEPS, "--run-dir", run_dir],
                           cli_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "world_size=2 device=cpu precision=no strategy=fsdp" in result.stdout
    assert len(list((newest(run_dir) / "model").glob("*.safetensors"))) == 2
    (run_dir / "summary.json").unlink()
    (run_dir / "model.safetensors").unlink()
    return run_dir


@pytest.mark.slow
def test_fuzzing_a_sharded_checkpoint_finds_no_traceback_and_no_wrong_load(sharded, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(sharded, run_dir)
    outcomes = fuzz(run_dir, seed=20)
    assert outcomes["damaged"] > outcomes["loaded"] > 0, outcomes


def _second_shard_on_the_first(header: dict[str, Any]) -> None:
    info = json.loads(header["__metadata__"]["DCP_SHARDING_INFO"])
    header["__metadata__"]["DCP_SHARDING_INFO"] = json.dumps({k: {"saved_offsets": [0] * len(v["saved_offsets"])}
                                                              for k, v in info.items()})


@pytest.mark.slow
def test_shard_offsets_that_overlap_are_damaged_and_skipped(capsys, sharded, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(sharded, run_dir)
    edit_header(newest(run_dir) / "model" / "shard-00002-model-00001-of-00001.safetensors", _second_shard_on_the_first)
    reseal(newest(run_dir))
    assert "overlap" in verify(newest(run_dir))
    assert_falls_back(capsys, run_dir)



# --- tensors and values that fit the files but not the model or optimizer (issue 26) -------------------


def retype(path: Path, name: str, dtype: torch.dtype | None = None, value: float | None = None) -> None:
    """Store tensor `name` of a safetensors file as `dtype` (same shape) or filled with `value`, metadata kept."""
    with safe_open(path, "pt") as file:
        metadata = file.metadata()
    tensors = load_file(path)
    tensors[name] = tensors[name].to(dtype) if dtype is not None else torch.full_like(tensors[name], value)
    save_file(tensors, path, metadata=metadata)


def first_weight(path: Path) -> str:
    return min(k for k in load_file(path) if k.endswith("weight"))


def assert_skipped_by_train(capsys, run_dir: Path, *fragments: str) -> None:
    """train skips the newest checkpoint as damaged (saying why) and resumes from step 2; --resume of it is
    refused with one message."""
    damaged = newest(run_dir)
    user_error(capsys, "train", HEART, *TINY, *STEPS, "--run-dir", run_dir.parent / "elsewhere", "--resume", damaged,
               fragments=("--resume", str(damaged), "cannot be used", *fragments))
    out, err = train_ok(capsys, HEART, *TINY, *STEPS, "--run-dir", run_dir)
    assert f"checkpoint {damaged} is damaged (" in err and "skipping it" in err and "Traceback" not in err, err
    assert all(fragment in err for fragment in fragments), err
    assert "Resuming from step 2 (" in out and "Resuming from step 4" not in out, out


def test_a_weight_stored_in_another_dtype_is_damaged_for_train_and_refused_by_eval_and_export(capsys, run_dir):
    model = newest(run_dir) / "model.safetensors"
    name = first_weight(model)
    retype(model, name, torch.float16)
    reseal(newest(run_dir))
    assert verify(newest(run_dir)) is None  # sha256 and manifest match: only the dtype check can tell
    said = (f"tensor {name!r} is F16", "F32")
    user_error(capsys, "eval", run_dir, "--checkpoint", "latest", fragments=(str(newest(run_dir)), *said))
    user_error(capsys, "export", run_dir, "--out", run_dir.parent / "w.safetensors",
               fragments=(str(newest(run_dir)), *said))
    assert not (run_dir.parent / "w.safetensors").exists()
    assert_skipped_by_train(capsys, run_dir, f"model.safetensors: tensor {name!r} is F16")


def test_an_optimizer_state_stored_as_integers_is_damaged(capsys, run_dir):
    optimizer = newest(run_dir) / "optimizer.safetensors"
    name = min(load_file(optimizer))  # '0.momentum_buffer' (sgd with momentum)
    retype(optimizer, name, torch.int64)
    reseal(newest(run_dir))
    assert verify(newest(run_dir)) is None
    assert_skipped_by_train(capsys, run_dir, f"{name.split('.', 1)[1]!r} is I64", "where the optimizer has F32")


def test_an_optimizer_value_of_the_wrong_type_is_damaged(capsys, run_dir):
    path = newest(run_dir) / "optimizer.json"
    meta = json.loads(path.read_text())
    meta["param_groups"][0]["lr"] = "0.01"
    path.write_text(json.dumps(meta))
    reseal(newest(run_dir))
    assert verify(newest(run_dir)) is None
    assert_skipped_by_train(capsys, run_dir, "parameter group 0: 'lr' is '0.01', not a number")


def test_a_scheduler_state_nested_without_bound_is_damaged(capsys, run_dir):
    (newest(run_dir) / "scheduler.json").write_text("[" * 100_000 + "]" * 100_000)
    reseal(newest(run_dir))
    assert "scheduler.json is damaged (it nests lists or objects more than 64 deep)" in verify(newest(run_dir))
    assert_falls_back(capsys, run_dir)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_in_a_checkpoint_are_damaged_for_train_and_refused_by_eval_and_export(
    capsys, run_dir, value
):
    model = newest(run_dir) / "model.safetensors"
    name = first_weight(model)
    retype(model, name, value=value)
    reseal(newest(run_dir))
    said = (str(newest(run_dir)), f"tensor {name!r} holds NaN or infinite values")
    user_error(capsys, "eval", run_dir, "--checkpoint", "latest", fragments=said)
    user_error(capsys, "export", run_dir, "--out", run_dir.parent / "w.safetensors", fragments=said)
    assert_skipped_by_train(capsys, run_dir, f"its weight {name!r} holds NaN or infinite values")


@pytest.mark.parametrize("file", ["model.safetensors", "model_raw.safetensors"])
def test_final_weights_of_another_dtype_or_not_finite_are_refused_by_eval_and_predict(capsys, run_dir, file):
    raw = ["--raw"] if file == "model_raw.safetensors" else []
    train_ok(capsys, HEART, *TINY, *STEPS, *(["trainer.ema.decay=0.5"] if raw else []), "--run-dir", run_dir / file)
    final = run_dir / file / file
    name = first_weight(final)
    original = final.read_bytes()
    for craft, said in [({"dtype": torch.float16}, (f"tensor {name!r} is F16", "F32")),
                        ({"value": float("nan")}, (f"tensor {name!r} holds NaN or infinite values",))]:
        final.write_bytes(original)
        retype(final, name, **craft)
        user_error(capsys, "eval", run_dir / file, *raw, fragments=(str(final), *said))
        user_error(capsys, "predict", run_dir / file, "-n", "2", *raw, fragments=(str(final), *said))


def rewrite_shards(folder: Path, key: str, dtype: torch.dtype) -> None:
    for path in sorted(folder.glob("*.safetensors")):
        retype(path, key, dtype)


def test_a_sharded_checkpoint_with_a_tensor_of_another_dtype_is_damaged(capsys, sharded, tmp_path):
    """Every shard of one weight and, in a second checkpoint, of one optimizer state stored as F16 (so the
    shards agree with one another): the weights' dtype check reads the shards' headers alone."""
    run_dir = tmp_path / "run"
    shutil.copytree(sharded, run_dir)
    name = first_weight(next((newest(run_dir) / "model").glob("*.safetensors")))
    rewrite_shards(newest(run_dir) / "model", name, torch.float16)
    reseal(newest(run_dir))
    assert verify(newest(run_dir)) is None
    user_error(capsys, "export", run_dir, "--out", tmp_path / "w.safetensors", fragments=(f"tensor {name!r} is F16",))
    older = run_dir / "checkpoints" / "step_00000002"
    state = min(load_file(next((older / "optimizer").glob("*.safetensors"))))
    rewrite_shards(older / "optimizer", state, torch.float16)
    reseal(older)
    code, out, err = call(capsys, "train", HEART, *TINY, *STEPS, "--run-dir", run_dir)
    assert_user_error(code, err, "no checkpoint of", f"model/: tensor {name!r} is F16", "--restart")
    assert f"checkpoint {older} is damaged (optimizer/ state of parameter" in err, err
    assert f"{state.split('.')[-1]!r} is F16" in err, err
    assert "Resuming" not in out and newest(run_dir).is_dir() and older.is_dir()  # nothing is deleted


def _remove_optimizer_shards(folder: Path) -> None:
    """Delete the optimizer's shard files and their manifest entries (a crafted checkpoint that claims none)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for path in (folder / "optimizer").glob("*.safetensors"):
        path.unlink()
        del manifest["files"][f"optimizer/{path.name}"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_a_sharded_checkpoint_without_the_optimizer_shards_it_records_is_damaged(capsys, sharded, tmp_path):
    """SGD with momentum keeps a tensor per parameter: optimizer.json names them, so an optimizer/ without
    shard files is damaged (an empty one is whole only for an optimizer without tensor state, e.g. plain SGD)."""
    run_dir = tmp_path / "run"
    shutil.copytree(sharded, run_dir)
    names = json.loads((newest(run_dir) / "optimizer.json").read_text())["tensors"]
    assert names and all(name.endswith(".momentum_buffer") for name in names)
    _remove_optimizer_shards(newest(run_dir))
    assert "optimizer/ holds no shards of tensor" in verify(newest(run_dir))
    assert_falls_back(capsys, run_dir)


@pytest.mark.slow
def test_the_optimizer_tensors_a_sharded_checkpoint_records_must_be_its_files(sharded, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(sharded, run_dir)
    folder = newest(run_dir)
    meta = json.loads((folder / "optimizer.json").read_text())
    for names, problem in ((meta["tensors"][1:], "holds a tensor"), ([*meta["tensors"], "state.0.weight.exp_avg"],
                           "holds no shards of tensor 'state.0.weight.exp_avg'"), ("all", "is not a list")):
        (folder / "optimizer.json").write_text(json.dumps({**meta, "tensors": names}))
        reseal(folder)
        assert problem in verify(folder)
    # An older checkpoint (no record) with no optimizer shards verifies; the load, which knows the optimizer's
    # state, refuses it.
    del meta["tensors"]
    (folder / "optimizer.json").write_text(json.dumps(meta))
    _remove_optimizer_shards(folder)
    reseal(folder)
    assert verify(folder) is None
    assert _loads_exactly_its_files(run_dir, folder) == "refused"
