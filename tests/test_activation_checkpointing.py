"""distributed.activation_checkpointing: the named modules' activations are recomputed in backward (torch's
non-reentrant checkpoint wrapper) under ddp and fsdp, with the same loss curve, plain state-dict names and
exact resume. The workload is test_tied_weights.py's: TiedNet on the heart data, 30 steps."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import TESTS, WALL_CLOCK, assert_resumed, metrics_by_step
from test_tied_weights import RECIPE, step, train

sys.path.insert(0, str(TESTS))
from tied_models import TiedNet
from trainwright.distributed.parallel import checkpoint_activations
from trainwright.errors import UserError


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward pass."""
    total = 0

    def keep(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        model(x).sum().backward()
    return total


def test_the_wrapper_keeps_names_and_gradients_and_saves_less():
    torch.manual_seed(0)
    plain = TiedNet(width=64, blocks=4)
    wrapped = TiedNet(width=64, blocks=4)
    wrapped.load_state_dict(plain.state_dict())
    checkpoint_activations(wrapped, ["Block"])
    assert type(wrapped.blocks[0]).__name__ == "CheckpointWrapper"
    assert list(wrapped.state_dict()) == list(plain.state_dict())
    assert wrapped.decode.weight is wrapped.encode.weight
    x = torch.randn(256, 2)
    plain_bytes, wrapped_bytes = saved_bytes(plain, x), saved_bytes(wrapped, x)
    assert wrapped_bytes < plain_bytes * 0.75, (wrapped_bytes, plain_bytes)  # the blocks' activations are not kept
    for (name, p), (_, w) in zip(plain.named_parameters(), wrapped.named_parameters()):
        torch.testing.assert_close(w.grad, p.grad, msg=name)  # the same gradients (recomputed exactly)


def test_a_class_the_model_lacks_is_one_error_with_a_suggestion():
    with pytest.raises(UserError, match=r"distributed.activation_checkpointing: .*'Blok'; did you mean 'Block'"):
        checkpoint_activations(TiedNet(), ["Blok"])
    with pytest.raises(UserError, match="no module of class 'TiedNet'"):  # the model itself cannot be wrapped
        checkpoint_activations(TiedNet(), ["TiedNet"])


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ac") / "tied.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def losses(run_dir: Path) -> dict[int, float]:
    return {s: m["train/loss"] for s, m in metrics_by_step(run_dir, skip=WALL_CLOCK).items() if "train/loss" in m}


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2], ids=["ddp-1", "fsdp-2"])
def test_same_loss_curve_plain_names_and_exact_resume(recipe, tmp_path, processes):
    plain, recomputed = tmp_path / "plain", tmp_path / "recomputed"
    on = "distributed.activation_checkpointing=[Block]"
    train(recipe, plain, processes=processes)
    result = train(recipe, recomputed, on, processes=processes)
    assert f"world_size={processes} " in result.stdout
    assert ("strategy=fsdp" if processes == 2 else "strategy=ddp") in result.stdout
    expected, got = losses(plain), losses(recomputed)
    assert sorted(got) == [10, 20, 30]
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
    weights, reference = load_file(recomputed / "model.safetensors"), load_file(plain / "model.safetensors")
    assert weights.keys() == reference.keys()  # no '_checkpoint_wrapped_module.' in any name
    for key in reference:
        torch.testing.assert_close(weights[key], reference[key], rtol=1e-5, atol=1e-6)
    final = (recomputed / "model.safetensors").read_bytes()
    resumed = tmp_path / "resumed"
    shutil.copytree(recomputed, resumed)
    again = train(recipe, resumed, on, "--resume", str(step(resumed, 10)), processes=processes)
    assert_resumed(again.stdout + again.stderr, 10)
    assert (resumed / "model.safetensors").read_bytes() == final  # exact resume with it on
    off = train(recipe, recomputed, "--resume", str(step(recomputed, 20)), processes=processes)  # and turned off
    assert_resumed(off.stdout + off.stderr, 20)
    assert "distributed.activation_checkpointing" in off.stdout
    for key, value in load_file(recomputed / "model.safetensors").items():
        torch.testing.assert_close(value, reference[key], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_full_checkpoint_resumes_under_fsdp_with_it_on(recipe, tmp_path):
    run_dir, on = tmp_path / "run", "distributed.activation_checkpointing=[Block]"
    train(recipe, run_dir, on, "trainer.max_steps=10")  # one process: a full checkpoint
    result = train(recipe, run_dir, on, processes=2)  # its optimizer state goes to the shards by parameter name
    assert "strategy=fsdp" in result.stdout
    assert_resumed(result.stdout + result.stderr, 10)
    assert (step(run_dir, 30) / "model").is_dir()
