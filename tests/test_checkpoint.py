"""The checkpoint format: round trips, verification, retention (in process, no training)."""

from __future__ import annotations

import json
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from trainwright.checkpoint import retention
from trainwright.checkpoint.format import TrainState, verify
from trainwright.checkpoint.manager import CheckpointManager
from trainwright.checkpoint.objects import TrainObjects
from trainwright.distributed.processes import Processes
from trainwright.errors import UserError
from trainwright.recipe import CheckpointConfig, load_recipe
from trainwright.run.directory import RunDir
from trainwright.run.files import sha256
from trainwright.run.plan import plan_run

HEART = __import__("pathlib").Path(__file__).resolve().parent.parent / "recipes" / "heart.yaml"


def _manager(run_dir, objects: TrainObjects | None = None, **config) -> CheckpointManager:
    return CheckpointManager(
        run_dir / "checkpoints", CheckpointConfig(**config), Processes.single(), objects or _stateful()
    )


def _stateful(seed: int = 0) -> TrainObjects:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, betas=(0.8, 0.95))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for _ in range(3):
        model(torch.randn(5, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    return TrainObjects(model, optimizer, scheduler, scaler=None)


def _save(run_dir, step: int, stateful: TrainObjects | None = None, **config):
    manager = _manager(run_dir, stateful, **config)
    state = TrainState(step=step, epoch=1, batch_in_epoch=7, val_metrics={"val/loss": 1.0 / step}, val_step=step)
    folder = manager.save(state, {"name": "t"})
    manager.close()  # the save is written in the background (checkpoint.async): wait for it
    return folder


def test_round_trip_restores_model_optimizer_scheduler_rng_and_position(tmp_path):
    saved = _stateful()
    random.seed(5)
    np.random.seed(6)
    torch.manual_seed(7)
    folder = _save(tmp_path, 12, saved)
    expected_draws = (random.random(), np.random.rand(), torch.rand(1))

    fresh = _stateful(seed=99)
    state = _manager(tmp_path, fresh).load(folder)
    assert (state.step, state.epoch, state.batch_in_epoch) == (12, 1, 7)
    for a, b in zip(saved.model.state_dict().values(), fresh.model.state_dict().values()):
        assert torch.equal(a, b)
    opt_a, opt_b = saved.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert opt_b["param_groups"][0]["betas"] == (0.8, 0.95)
    for pid in opt_a["state"]:
        for key, value in opt_a["state"][pid].items():
            assert torch.equal(value, opt_b["state"][pid][key])
    assert fresh.scheduler.state_dict() == saved.scheduler.state_dict()
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected_draws


def test_checkpoint_folder_has_only_safetensors_and_json_with_a_manifest(tmp_path):
    folder = _save(tmp_path, 3)
    names = {p.name for p in folder.iterdir()}
    assert all(name.endswith((".safetensors", ".json")) for name in names)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["path"] == folder.name
    assert verify(folder) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_manifest", "extra_file", "missing_file"])
def test_damage_is_detected(tmp_path, damage):
    folder = _save(tmp_path, 4)
    target = folder / "optimizer.safetensors"
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "no_manifest":
        (folder / "manifest.json").unlink()
    elif damage == "extra_file":
        (folder / "payload.pkl").write_bytes(pickle.dumps({"a": 1}))
    else:
        target.unlink()
    assert verify(folder) is not None
    recipe = load_recipe(HEART)
    with pytest.raises(UserError, match="cannot be used"):
        plan_run(RunDir(tmp_path / "elsewhere"), recipe, resume=folder)


def test_a_pickle_behind_a_matching_manifest_is_refused(tmp_path):
    """A stranger's checkpoint whose manifest matches a pickled 'model.safetensors' is still refused."""
    folder = _save(tmp_path, 5)
    model_file = folder / "model.safetensors"
    model_file.write_bytes(pickle.dumps({"weight": torch.zeros(1)}))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = {"bytes": model_file.stat().st_size, "sha256": sha256(model_file)}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert "not a safetensors file" in verify(folder)


def test_newest_valid_skips_damaged_checkpoints_with_a_warning(tmp_path, capsys):
    _save(tmp_path, 10, keep_last=5)
    newest = _save(tmp_path, 20, keep_last=5)
    (newest / "model.safetensors").write_bytes(b"")
    choice = retention.newest_valid(tmp_path / "checkpoints")
    assert choice.folder.name == "step_00000010"
    assert [folder for folder, _ in choice.damaged] == [newest]


def test_unfinished_saves_are_ignored_and_cleaned(tmp_path):
    _save(tmp_path, 10)
    unfinished = tmp_path / "checkpoints" / ".tmp-step_00000020"
    unfinished.mkdir()
    (unfinished / "model.safetensors").write_bytes(b"partial")
    assert retention.newest_valid(tmp_path / "checkpoints").folder.name == "step_00000010"
    retention.remove_unfinished(tmp_path / "checkpoints")
    assert not unfinished.exists()


def test_keep_last_and_keep_best(tmp_path):
    for step in (10, 20, 30, 40):  # val/loss = 1/step: the best (min) is the newest
        _save(tmp_path, step, keep_last=2)
    assert [p.name for p in retention.step_dirs(tmp_path / "checkpoints")] == ["step_00000030", "step_00000040"]

    other = tmp_path / "other"
    for step in (10, 20, 30, 40):
        _save(other, step, keep_last=1, keep_best=1, monitor="val/loss", mode="max")
    kept = [p.name for p in retention.step_dirs(other / "checkpoints")]
    assert kept == ["step_00000010", "step_00000040"]  # the best by max val/loss, and the last
    assert json.loads((other / "checkpoints" / "best.json").read_text())["path"] == "step_00000010"



def test_keep_last_keeps_the_checkpoint_a_run_resumed_from_until_the_run_completes(tmp_path):
    """A run resumed from step 10 with keep_last 1 saves steps 11 and 12: step 10 stays (a crash now must
    still find what the run resumed from, if the newer ones turn out damaged) until the run completes."""
    resumed = _save(tmp_path, 10, keep_last=1)
    manager = _manager(tmp_path, keep_last=1)
    manager.load(resumed)
    for step in (11, 12):
        manager.save(TrainState(step=step, epoch=1), {"name": "t"})
        manager.wait()
    folders = tmp_path / "checkpoints"
    assert [p.name for p in retention.step_dirs(folders)] == ["step_00000010", "step_00000012"]
    manager.finish()
    manager.close()
    assert [p.name for p in retention.step_dirs(folders)] == ["step_00000012"]

_WRITE_WEIGHTS = """
import sys, torch
from trainwright.checkpoint.weights import save_weights
torch.manual_seed(0)
model = torch.nn.Linear(3, 2)
metadata = {k: str(i) for i, k in enumerate("recipe step a b z".split())}
save_weights(model.state_dict(), __import__("pathlib").Path(sys.argv[1]), metadata)
"""


def test_final_weights_file_is_byte_identical_for_equal_weights(tmp_path):
    """safetensors orders metadata by a per-process random hash; two processes must still agree."""
    paths = [tmp_path / f"{i}.safetensors" for i in range(2)]
    for path in paths:
        subprocess.run([sys.executable, "-c", _WRITE_WEIGHTS, str(path)], check=True)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    with safe_open(paths[0], "pt") as file:
        assert file.metadata() == {"recipe": "0", "step": "1", "a": "2", "b": "3", "z": "4"}


def test_background_save_holds_the_state_of_its_step(tmp_path, monkeypatch):
    """checkpoint.async: training goes on while the checkpoint is written; the files hold the state as it
    was when save() returned, not what the next steps made of it."""
    import threading

    from trainwright.checkpoint.full import FullState

    training_went_on = threading.Event()
    write = FullState.write
    monkeypatch.setattr(FullState, "write", lambda self, *a: (training_went_on.wait(10), write(self, *a)))
    objects = _stateful()
    before = {k: v.clone() for k, v in objects.model.state_dict().items()}
    manager = _manager(tmp_path, objects)
    folder = manager.save(TrainState(step=7), {"name": "t"})
    assert not folder.exists()  # still being written
    with torch.no_grad():
        for param in objects.model.parameters():  # the next "training step", before the files are written
            param.add_(1.0)
    training_went_on.set()
    written = manager.wait()
    manager.close()
    assert isinstance(written, float) and written >= 0
    assert verify(folder) is None
    fresh = _stateful(seed=99)
    _manager(tmp_path, fresh).load(folder)
    assert all(torch.equal(fresh.model.state_dict()[k], before[k]) for k in before)


def test_later_background_saves_copy_into_the_previous_snapshot_and_hold_their_own_state(tmp_path, monkeypatch):
    """The second save reuses the first snapshot's buffers (after its write finished), yet each checkpoint
    holds the state of its own step."""
    from trainwright.checkpoint.full import FullState

    taken = []
    take = FullState.take.__func__
    monkeypatch.setattr(
        FullState, "take", classmethod(lambda cls, *a, **k: taken.append(take(cls, *a, **k)) or taken[-1])
    )
    objects = _stateful()
    manager = _manager(tmp_path, objects)
    states = []
    for step in (1, 2):
        states.append({k: v.clone() for k, v in objects.model.state_dict().items()})
        manager.save(TrainState(step=step), {"name": "t"})
        with torch.no_grad():
            for param in objects.model.parameters():
                param.mul_(3.0)
    manager.close()
    assert all(taken[1].model[k].data_ptr() == taken[0].model[k].data_ptr() for k in taken[0].model)
    for step, expected in zip((1, 2), states):
        fresh = _stateful(seed=99)
        _manager(tmp_path, fresh).load(tmp_path / "checkpoints" / f"step_{step:08d}")
        assert all(torch.equal(fresh.model.state_dict()[k], expected[k]) for k in expected), step


def test_a_failed_background_write_is_raised_and_leaves_no_checkpoint(tmp_path, monkeypatch):
    from trainwright.checkpoint import manager as manager_module

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(manager_module, "write_manifest", full_disk)
    manager = _manager(tmp_path)
    manager.save(TrainState(step=3), {"name": "t"})
    with pytest.raises(OSError, match="No space left"):
        manager.close()
    assert retention.step_dirs(tmp_path / "checkpoints") == []  # only an unfinished .tmp- folder, never used
