"""Sharded training (FSDP2) on CPU processes: per-process checkpoint shards, bitwise resume at the same
process count, resharding resume at 1 and 3 processes, DDP <-> FSDP resume, export, bf16.

The workload is the FashionMNIST MLP (784-512-512-10) on synthetic IDX files, with a global batch of 48
(divisible by 1, 2 and 3 processes): 1000 images -> 20 steps per epoch, 2 epochs, a checkpoint every 5
steps. Checkpoint contents are read with safetensors and json only.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import processes
import resuming
from conftest import REPO, assert_resumed, checkpoint_steps, cli_env, write_fashion_mnist
from processes import free_port, run
from reliability_helpers import call

CONFIGS = REPO / "accelerate_configs"
FSDP_2PROC = CONFIGS / "fsdp_cpu_2proc.yaml"
DDP_2PROC = CONFIGS / "cpu_2proc.yaml"
TOTAL_STEPS = 40
FIRST_LAYER = (512, 784)

pytestmark = pytest.mark.slow


def _args(data_root: Path, run_dir: Path, *overrides: str) -> list[str]:
    """`trainwright ARGS` of the runs here: FashionMNIST's MLP, 20 steps an epoch, a checkpoint every 5 steps."""
    return ["train", "recipes/fashion_mnist_mlp.yaml", f"data.root={data_root}", "data.batch_size=48",
            "trainer.epochs=2", "optimizer.name=adamw", "optimizer.lr=0.001", "checkpoint.every_steps=5",
            "checkpoint.keep_last=2", "logging.wandb=false", *overrides, "--run-dir", str(run_dir)]


def _command(data_root: Path, run_dir: Path, *overrides: str, processes: int, config: Path = FSDP_2PROC,
             precision: str | None = None) -> list[str]:
    train = ["-m", "trainwright", *_args(data_root, run_dir, *overrides)]
    if processes == 1 and precision is None:
        return [sys.executable, *train]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
              "--main_process_port", str(free_port()), "--num_processes", str(processes)]
    if precision:
        launch += ["--mixed_precision", precision]
    return [*launch, *train]


def train(data_root: Path, run_dir: Path, *overrides: str, processes: int = 2, env: dict[str, str] | None = None,
          **options) -> subprocess.CompletedProcess:
    result = run(_command(data_root, run_dir, *overrides, processes=processes, **options), env or cli_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result


def fsdp_2proc() -> list[object]:
    return resuming.launcher(FSDP_2PROC, "--num_processes", 2)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fashion")
    write_fashion_mnist(root)
    return root


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """An uninterrupted FSDP run on 2 CPU processes, launched with the FSDP config (strategy auto)."""
    run_dir = tmp_path_factory.mktemp("fsdp_reference") / "run"
    return run_dir, train(data_root, run_dir)


def test_fsdp_run_says_so_and_learns(reference):
    run_dir, result = reference
    assert "world_size=2 device=cpu precision=no strategy=fsdp" in result.stdout
    assert f"Run complete at step {TOTAL_STEPS}:" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val/accuracy"] >= 0.9
    weights = load_file(run_dir / "model.safetensors")
    assert tuple(weights["1.weight"].shape) == FIRST_LAYER  # full weights, same names as a plain model's


def test_checkpoints_are_sharded_per_process_and_free_of_pickle(reference):
    run_dir, _ = reference
    folder = run_dir / "checkpoints" / f"step_{TOTAL_STEPS:08d}"
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    for part in ("model", "optimizer"):
        shards = sorted((folder / part).glob("*.safetensors"))
        assert [p.name for p in shards] == [f"shard-0000{r}-model-00001-of-00001.safetensors" for r in (1, 2)]
        for shard in shards:
            assert f"{part}/{shard.name}" in manifest  # every process's files are in the one manifest
            with safe_open(shard, "pt") as file:
                shapes = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
            first = shapes["1.weight" if part == "model" else "state.1.weight.exp_avg"]
            assert first == (FIRST_LAYER[0] // 2, FIRST_LAYER[1])  # no file holds the whole first layer
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert path.suffix not in (".distcp", ".metadata", ".pt", ".pkl"), path
            head = path.read_bytes()[:2]
            assert head[:1] != b"\x80" and head != b"PK", f"{path} looks like a pickle/torch.save file"



def test_loading_a_sharded_checkpoint_puts_each_process_slice_in_its_place(reference, tmp_path):
    """Sharded loading, directly: the final checkpoint's shard files, loaded into a plain model in one process
    (as a resume on another strategy, eval --checkpoint and export read them), give exactly the weights the
    run gathered at its end; every process's slice differs, so one slice copied into the others cannot pass."""
    from trainwright.checkpoint.manager import CheckpointManager
    from trainwright.checkpoint.objects import TrainObjects
    from trainwright.checkpoint.sharded import consolidated_weights
    from trainwright.components import build_model, build_optimizer
    from trainwright.distributed.processes import Processes
    from trainwright.recipe import CheckpointConfig
    from trainwright.run.directory import RunDir

    run_dir, _ = reference
    folder = run_dir / "checkpoints" / f"step_{TOTAL_STEPS:08d}"
    gathered = load_file(run_dir / "model.safetensors")
    slices = [load_file(path)["1.weight"] for path in sorted((folder / "model").glob("*.safetensors"))]
    assert len(slices) == 2 and not torch.equal(slices[0], slices[1])
    assert torch.equal(torch.cat(slices), gathered["1.weight"])  # the files themselves hold the slices in order

    recipe = RunDir(run_dir).recipe()
    model = build_model(recipe)
    objects = TrainObjects(model, build_optimizer(recipe, model), scheduler=None, scaler=None)
    CheckpointManager(tmp_path / "checkpoints", CheckpointConfig(), Processes.single(), objects).load(folder)
    loaded, exported = model.state_dict(), consolidated_weights(folder)
    assert loaded.keys() == exported.keys() == gathered.keys()
    for key in gathered:
        assert torch.equal(loaded[key], gathered[key]) and torch.equal(exported[key], gathered[key]), key
    state = objects.optimizer.state_dict()["state"]
    moments = [
        load_file(path)["state.1.weight.exp_avg"] for path in sorted((folder / "optimizer").glob("*.safetensors"))
    ]
    first = [name for name, _ in model.named_parameters()].index("1.weight")
    assert torch.equal(state[first]["exp_avg"], torch.cat(moments))

def test_sigkill_mid_run_resumes_bitwise(reference, data_root, tmp_path):
    run_dir = tmp_path / "run"
    result = resuming.kill_and_resume(10, _args(data_root, run_dir), run_dir, fsdp_2proc(), cli_env())  # mid-epoch 1
    assert "world_size=2 device=cpu precision=no strategy=fsdp" in result.stdout
    resuming.assert_same_weights(run_dir, reference[0])


def test_workers_save_and_exit_75_when_the_launcher_is_killed(reference, data_root, tmp_path):
    """SIGKILL to the launcher alone: the FSDP workers it leaves behind notice, save a sharded checkpoint at
    one step, exit 75 and free the lock; the same command resumes bitwise."""
    run_dir = tmp_path / "run"
    with processes.starter(tmp_path) as start, processes.adopting_orphans():
        launcher = start(_command(data_root, run_dir, processes=2), cli_env(), name="killed")
        launcher.wait_for("a checkpoint", lambda: checkpoint_steps(run_dir), timeout=180, interval=0.01)
        workers = [child.pid for child in launcher.children() if "trainwright" in child.cmdline()]
        assert len(workers) == 2, launcher.describe()
        launcher.signal(signal.SIGKILL)
        codes = processes.reap(workers, timeout=60)
        output = launcher.output()
        assert list(codes.values()) == [75, 75], output
        assert not processes.tagged_processes(launcher.tag), "a process of the killed launch is left running"
    assert output.count(f"trainwright: the launcher (pid {launcher.pid}) is gone; saving a checkpoint") == 1, output
    stopped = int(output.split("Stopped at step ")[1].split(":")[0])
    assert stopped < TOTAL_STEPS and checkpoint_steps(run_dir)[-1] == stopped
    assert not (run_dir.parent / f".{run_dir.name}.trainwright-lock").exists()
    result = train(data_root, run_dir)
    assert_resumed(result.stdout + result.stderr, stopped)
    assert "taking over the lock" not in result.stderr
    assert (run_dir / "model.safetensors").read_bytes() == (reference[0] / "model.safetensors").read_bytes()


def test_resumes_resharded_on_one_and_on_three_processes(reference, data_root, tmp_path):
    run_dir = tmp_path / "run"
    train(data_root, run_dir, "trainer.max_steps=15")
    one = train(data_root, run_dir, "trainer.max_steps=25", "distributed.strategy=fsdp", processes=1)
    assert "world_size=1 device=cpu precision=no strategy=fsdp" in one.stdout
    assert_resumed(one.stdout + one.stderr, 15)
    three = train(data_root, run_dir, processes=3)
    assert "world_size=3 device=cpu precision=no strategy=fsdp" in three.stdout
    assert_resumed(three.stdout + three.stderr, 25)
    assert f"Run complete at step {TOTAL_STEPS}:" in three.stdout
    shards = sorted((run_dir / "checkpoints" / f"step_{TOTAL_STEPS:08d}" / "model").glob("*.safetensors"))
    assert len(shards) == 3
    weights, expected = load_file(run_dir / "model.safetensors"), load_file(reference[0] / "model.safetensors")
    assert tuple(weights["1.weight"].shape) == FIRST_LAYER
    for key in expected:  # the same training; only the order of the processes' sums differs
        torch.testing.assert_close(weights[key], expected[key], rtol=1e-4, atol=1e-5)


def test_export_of_a_sharded_checkpoint_equals_the_gathered_weights(reference, tmp_path, capsys):
    run_dir, _ = reference
    out = tmp_path / "weights.safetensors"
    code, stdout, stderr = call(capsys, "export", run_dir / "checkpoints" / f"step_{TOTAL_STEPS:08d}", "--out", out)
    assert code == 0, stderr
    assert f"Exported step {TOTAL_STEPS}" in stdout
    exported, gathered = load_file(out), load_file(run_dir / "model.safetensors")
    assert exported.keys() == gathered.keys()
    assert all(torch.equal(exported[k], gathered[k]) for k in gathered)
    code, _, stderr = call(capsys, "export", run_dir, "--out", out)
    assert code == 2 and "does not overwrite" in stderr


def test_ddp_to_fsdp_to_single_process_resume(reference, data_root, tmp_path):
    run_dir = tmp_path / "run"
    ddp = train(data_root, run_dir, "trainer.max_steps=10", config=DDP_2PROC)
    assert "world_size=2 device=cpu precision=no strategy=ddp" in ddp.stdout
    assert (run_dir / "checkpoints" / "step_00000010" / "model.safetensors").is_file()  # a full checkpoint
    fsdp = train(data_root, run_dir, "trainer.max_steps=20")
    assert "strategy=fsdp" in fsdp.stdout
    assert_resumed(fsdp.stdout + fsdp.stderr, 10)
    assert (run_dir / "checkpoints" / "step_00000020" / "model").is_dir()  # a sharded one
    single = train(data_root, run_dir, "distributed.strategy=ddp", processes=1)
    assert "world_size=1 device=cpu precision=no strategy=ddp" in single.stdout
    assert_resumed(single.stdout + single.stderr, 20)
    weights, expected = load_file(run_dir / "model.safetensors"), load_file(reference[0] / "model.safetensors")
    for key in expected:
        torch.testing.assert_close(weights[key], expected[key], rtol=1e-4, atol=1e-5)


def test_a_full_checkpoint_of_an_optimizer_without_state_resumes_under_fsdp(data_root, tmp_path):
    """The recipe's own plain SGD keeps no per-parameter state: DDP -> FSDP must still resume (torch's
    broadcast of a full optimizer state needs a state tensor)."""
    run_dir = tmp_path / "run"
    train(data_root, run_dir, "optimizer.name=sgd", "trainer.max_steps=10", config=DDP_2PROC)
    fsdp = train(data_root, run_dir, "optimizer.name=sgd", "trainer.max_steps=20")
    assert "strategy=fsdp" in fsdp.stdout
    assert_resumed(fsdp.stdout + fsdp.stderr, 10)
    assert "Run complete at step 20:" in fsdp.stdout


def test_bf16_from_the_launcher_under_fsdp(data_root, tmp_path):
    result = train(data_root, tmp_path / "run", "trainer.max_steps=5", precision="bf16")
    assert "world_size=2 device=cpu precision=bf16 strategy=fsdp" in result.stdout
    assert load_file(tmp_path / "run" / "model.safetensors")["1.weight"].dtype == torch.float32  # fp32 master weights


def test_shard_modules_must_name_classes_of_the_model(capsys, tmp_path):
    from conftest import RECIPES, assert_user_error
    from trainwright.cli import main

    code = main(["train", str(RECIPES / "heart.yaml"), "data.num_points=200", "logging.wandb=false",
                 "distributed.strategy=fsdp", "distributed.shard_modules=[Linaer]", "--run-dir", str(tmp_path / "run")])
    assert_user_error(code, capsys.readouterr().err, "distributed.shard_modules", "'Linaer'", "did you mean 'Linear'")
    assert not (tmp_path / "run").exists()


def test_a_sharded_checkpoint_missing_one_process_file_is_not_used(reference, tmp_path, capsys):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference[0], run_dir)
    newest = run_dir / "checkpoints" / f"step_{TOTAL_STEPS:08d}"
    (newest / "optimizer" / "shard-00002-model-00001-of-00001.safetensors").unlink()
    code, stdout, stderr = call(capsys, "export", run_dir, "--out", tmp_path / "w.safetensors")
    assert code == 0, stderr
    assert f"Exported step {TOTAL_STEPS - 5} " in stdout  # the previous checkpoint (keep_last: 2)


def test_eval_and_predict_work_on_an_fsdp_run(reference, capsys):
    run_dir, _ = reference
    code, stdout, stderr = call(capsys, "eval", run_dir)
    assert code == 0, stderr
    assert json.loads(stdout)["test/accuracy"] >= 0.9
    code, stdout, stderr = call(capsys, "predict", run_dir, "-n", "3")
    assert code == 0 and len(stdout.splitlines()) == 3, stdout + stderr


def test_accumulation_clipping_schedule_and_a_stop_signal_under_fsdp_match_ddp(data_root, tmp_path):
    """FSDP with 2 micro-batches per step, clipping and a cosine schedule, stopped by SIGTERM to the launcher
    mid-run and resumed, ends where an uninterrupted DDP run of the same recipe ends."""
    options = ["trainer.grad_accum_steps=2", "data.batch_size=24", "trainer.grad_clip=0.5", "scheduler.name=cosine",
               "scheduler.warmup_steps=3"]
    ddp = tmp_path / "ddp"
    train(data_root, ddp, *options, config=DDP_2PROC)
    run_dir = tmp_path / "fsdp"
    with processes.starter(tmp_path) as start:
        launcher = start(_command(data_root, run_dir, *options, processes=2), cli_env(), name="stopped")
        launcher.wait_for("a checkpoint", lambda: checkpoint_steps(run_dir), timeout=180, interval=0.05)
        launcher.signal(signal.SIGTERM)  # the launcher relays it to both workers
        launcher.finish(timeout=120)
        output = launcher.output()
    assert output.count("got SIGTERM; saving a checkpoint after this step") == 1, (
        output
    )  # said by the main process only
    stopped = int(output.split("Stopped at step ")[1].split(":")[0])
    assert stopped < TOTAL_STEPS and checkpoint_steps(run_dir)[-1] == stopped
    resumed = train(data_root, run_dir, *options)
    assert_resumed(resumed.stdout + resumed.stderr, stopped)
    assert "strategy=fsdp" in resumed.stdout
    weights, expected = load_file(run_dir / "model.safetensors"), load_file(ddp / "model.safetensors")
    for key in expected:
        torch.testing.assert_close(weights[key], expected[key], rtol=1e-4, atol=1e-5)


def test_validation_with_uneven_shares_does_not_hang(tmp_path, capsys):
    """2049 validation points on 2 processes: 1025 and 1024, i.e. 2 and 1 batches of 1024. A sharded
    forward is a collective, so the process with fewer batches runs a filler batch instead of hanging."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP_2PROC),
              "--main_process_port", str(free_port())]
    result = run([*launch, "-m", "trainwright", "train", "recipes/heart.yaml", "data.num_points=10245",
                  "trainer.max_steps=3", "logging.wandb=false", "--run-dir", tmp_path / "run"], cli_env(), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "strategy=fsdp" in result.stdout and "Run complete at step 3" in result.stdout
    code, single, stderr = call(capsys, "eval", tmp_path / "run")  # in this process: one CLI start-up less
    assert code == 0, stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert json.loads(single)["val/loss"] == pytest.approx(summary["val/loss"], rel=1e-5)  # every point once


# 1000 images in global batches of 48: 20 steps per epoch; 12 steps, a checkpoint every 4, killed at step 8.
SMALL_RUN = ["trainer.max_steps=12", "checkpoint.every_steps=4"]


def test_a_stateless_optimizer_resumes_under_fsdp_at_every_process_count(data_root, tmp_path):
    """Plain SGD keeps no per-parameter state, so a sharded checkpoint's optimizer/ holds no shard file: that
    is a whole state, not a damaged one. SIGKILLed (whole tree) after step 8, the run resumes from step 8 and
    ends bitwise where an uninterrupted one ends; the same checkpoint resumes on 3 processes and on 1 (sharded
    or not)."""
    sgd = ["optimizer.name=sgd", "optimizer.lr=0.05", *SMALL_RUN]
    reference = tmp_path / "reference"
    train(data_root, reference, *sgd)
    run_dir = tmp_path / "run"
    resuming.kill_at(8, _args(data_root, run_dir, *sgd), run_dir, fsdp_2proc(), cli_env())
    assert not list((run_dir / "checkpoints" / "step_00000008" / "optimizer").glob("*.safetensors"))
    elsewhere = {(1, "ddp"): ["distributed.strategy=ddp"], (1, "fsdp"): ["distributed.strategy=fsdp"], (3, "fsdp"): []}
    for count, strategy in elsewhere:
        shutil.copytree(run_dir, tmp_path / f"run_{count}_{strategy}")
    resuming.resume(8, _args(data_root, run_dir, *sgd), fsdp_2proc(), cli_env())
    resuming.assert_same_weights(run_dir, reference)
    for (count, strategy), overrides in elsewhere.items():  # resharded, and into one unsharded process
        result = train(data_root, tmp_path / f"run_{count}_{strategy}", *sgd, *overrides, processes=count)
        assert f"world_size={count} device=cpu precision=no strategy={strategy}" in result.stdout
        assert_resumed(result.stdout + result.stderr, 8)
        assert "Run complete at step 12:" in result.stdout


@pytest.mark.parametrize("optimizer", [
    ["optimizer.name=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9"],
    ["optimizer.name=adam"],
    ["optimizer.name=rmsprop", "optimizer.momentum=0.5"],
], ids=["sgd-momentum", "adam", "rmsprop"])
def test_every_named_optimizer_resumes_under_fsdp(data_root, tmp_path, optimizer):
    """The README's optimizers with tensor state (adamw: the tests above) resume from a sharded checkpoint."""
    run_dir = tmp_path / "run"
    train(data_root, run_dir, *optimizer, "trainer.max_steps=4", "checkpoint.every_steps=4")
    assert list((run_dir / "checkpoints" / "step_00000004" / "optimizer").glob("*.safetensors"))
    result = train(data_root, run_dir, *optimizer, "trainer.max_steps=8", "checkpoint.every_steps=4")
    assert_resumed(result.stdout + result.stderr, 4)
    assert "Run complete at step 8:" in result.stdout
