"""peft adapters (issue 28): a LoRA adapter on heart's MLP and on a small pretrained GPT-2. Checkpoints hold
only the adapter (and its optimizer state), a run killed at a chosen step resumes bitwise, the final
weights are the merged ones under the base's names, `export` writes the adapter in peft's format (which
PeftModel.from_pretrained loads to the merged model's outputs), a changed or missing base is refused, and
bad settings are one message each."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from accelerate.utils import set_seed
from peft import PeftModel
from safetensors.torch import load_file

import processes
import resuming
from conftest import REPO, assert_ok, assert_user_error, checkpoint_dir, cli_env_with_tests, describe
from reliability_helpers import HEART, call, user_error
from test_hf_models import CONFIG, RECIPE
from trainwright import load_run
from trainwright.components import build_model
from trainwright.recipe import load_recipe

FSDP_2PROC = REPO / "accelerate_configs" / "fsdp_cpu_2proc.yaml"
# heart's MLP (1: 2-72, 3: 72-36, 5: 36-1) with LoRA on its first two layers; 10 steps per epoch, 2 epochs.
LORA = ["data.num_points=800", "trainer.epochs=2", "logging.wandb=false", "checkpoint.every_steps=4",
        "optimizer.name=adamw", "optimizer.momentum=null",
        "adapter={name: lora, r: 4, lora_alpha: 8, lora_dropout: 0.1, target_modules: ['1', '3']}"]
ADAPTER_KEYS = {f"base_model.model.{layer}.lora_{ab}.default.weight" for layer in (1, 3) for ab in "AB"}


def lora_args(run_dir: Path, *overrides: str) -> list[object]:
    """`trainwright train` of heart with LORA."""
    return ["train", HEART, *LORA, *overrides, "--run-dir", run_dir]


def train(run_dir: Path, *overrides: str):
    return resuming.run(lora_args(run_dir, *overrides), env=cli_env_with_tests())


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    result = train(run_dir)
    assert result.returncode == 0 and "Traceback" not in result.stderr, describe(result)
    return run_dir


def seeded_base() -> torch.nn.Module:
    set_seed(0)  # as `train` seeds the model's initial weights
    return build_model(load_recipe(HEART, LORA))


def test_checkpoints_hold_only_the_adapter_and_the_final_weights_are_merged(lora_run):
    folder = checkpoint_dir(lora_run, 20)
    assert set(load_file(folder / "model.safetensors")) == ADAPTER_KEYS
    assert len(load_file(folder / "optimizer.safetensors")) == 3 * len(ADAPTER_KEYS)  # AdamW: 2 moments, a step
    base = seeded_base()
    final = load_file(lora_run / "model.safetensors")
    assert set(final) == set(base.state_dict())  # the base's own names
    assert final["5.weight"].equal(base.state_dict()["5.weight"])  # not adapted: as built
    assert not final["1.weight"].equal(base.state_dict()["1.weight"])  # the trained adapter merged in
    assert json.loads((lora_run / "data.json").read_text())["base"].keys() == {"sha256"}


def test_export_writes_the_adapter_in_peft_format_loading_to_the_merged_outputs(lora_run, capsys, tmp_path):
    code, _, err = call(capsys, "export", lora_run, "--out", tmp_path / "adapter")
    assert code == 0, err
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    adapted = PeftModel.from_pretrained(seeded_base(), tmp_path / "adapter").eval()
    merged = seeded_base()
    merged.load_state_dict(load_file(lora_run / "model.safetensors"))
    points = torch.rand(64, 2) * 4 - 2
    with torch.no_grad():
        torch.testing.assert_close(adapted(points), merged(points))
        from_checkpoint = load_run(lora_run, checkpoint="latest").model  # the adapter merged into its base
        assert torch.equal(from_checkpoint(points), load_run(lora_run).model(points))


def test_a_lora_run_killed_at_a_step_resumes_bitwise(lora_run, tmp_path):
    run_dir = tmp_path / "run"
    resuming.kill_and_resume(8, lora_args(run_dir), run_dir, env=cli_env_with_tests())
    resuming.assert_same_weights(run_dir, lora_run)


@pytest.mark.slow
def test_under_fsdp_on_two_processes_a_killed_lora_run_resumes_bitwise_and_on_one_process(tmp_path):
    """The frozen base sharded, the adapter trained; the sharded checkpoints hold the adapter's shards alone."""
    def launch() -> list[object]:
        return resuming.launcher(FSDP_2PROC, "--num_processes", 2)

    reference = assert_ok(resuming.run(lora_args(tmp_path / "reference"), launch(), cli_env_with_tests()))
    assert "world_size=2 device=cpu precision=no strategy=fsdp" in reference.stdout
    shards = sorted((checkpoint_dir(tmp_path / "reference", 20) / "model").glob("*.safetensors"))
    assert len(shards) == 2 and all(set(load_file(shard)) == ADAPTER_KEYS for shard in shards)
    resuming.kill_at(8, lora_args(tmp_path / "run"), tmp_path / "run", launch(), cli_env_with_tests())
    shutil.copytree(tmp_path / "run", tmp_path / "one")
    resuming.resume(8, lora_args(tmp_path / "run"), launch(), cli_env_with_tests())
    resuming.assert_same_weights(tmp_path / "run", tmp_path / "reference")
    one = resuming.resume(8, lora_args(tmp_path / "one"), env=cli_env_with_tests())
    assert "world_size=1" in one.stdout, describe(one)


@pytest.mark.parametrize(("adapter", "fragments"), [
    ("{name: lora, r: 4, target_modules: ['1', 'fc']}", ("adapter.target_modules: 'fc' names no module",)),
    ("{name: lora, r: 4, alpha: 8, target_modules: ['1']}",
     ("adapter.alpha: no setting", "did you mean 'lora_alpha'?")),
    ("{name: lorra, r: 4}", ("adapter.name: peft has no adapter 'lorra'", "did you mean 'lora'?")),
])
def test_bad_adapter_settings_are_one_message(capsys, tmp_path, adapter, fragments):
    user_error(capsys, "train", HEART, "data.num_points=400", "logging.wandb=false", f"adapter={adapter}",
               "--run-dir", tmp_path / "run", fragments=fragments)
    assert not (tmp_path / "run").exists()


# --- a pretrained Hugging Face base -------------------------------------------------------------------


def save_base(folder: Path, seed: int) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG))
    model.save_pretrained(folder)
    return model


@pytest.mark.slow
def test_lora_on_a_pretrained_gpt2_refuses_a_changed_or_missing_base_and_exports(tmp_path):
    base = tmp_path / "base"
    save_base(base, seed=1)
    recipe = {**RECIPE, "model": {**RECIPE["model"], "pretrained": str(base)}, "trainer": {"max_steps": 4},
              "checkpoint": {"every_steps": 2},
              "adapter": {"name": "lora", "r": 4, "lora_alpha": 8, "target_modules": ["c_attn"]}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"

    def train_gpt2(*overrides: str):
        return processes.run([sys.executable, "-m", "trainwright", "train", path, *overrides, "--run-dir", run_dir],
                             cli_env_with_tests())

    first = train_gpt2("trainer.max_steps=2")
    assert first.returncode == 0, describe(first)
    assert {n.split(".lora_")[0] for n in load_file(checkpoint_dir(run_dir, 2) / "model.safetensors")} == {
        f"base_model.model.transformer.h.{i}.attn.c_attn" for i in (0, 1)
    }
    save_base(base, seed=2)  # another base in the same folder
    changed = train_gpt2()
    assert_user_error(changed.returncode, changed.stderr, "the base model differs", "model.safetensors changed")
    save_base(base, seed=1)
    (base / "model.safetensors").rename(tmp_path / "kept.safetensors")
    missing = train_gpt2()
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, describe(missing)
    (tmp_path / "kept.safetensors").rename(base / "model.safetensors")
    resumed = train_gpt2()
    assert resumed.returncode == 0 and "Resuming from step 2 " in resumed.stdout, describe(resumed)

    exported = processes.run([sys.executable, "-m", "trainwright", "export", run_dir, "--out", tmp_path / "adapter"],
                             cli_env_with_tests())
    assert exported.returncode == 0, describe(exported)
    hf = processes.run([sys.executable, "-m", "trainwright", "export", run_dir, "--hf", "--out", tmp_path / "merged"],
                       cli_env_with_tests())
    assert hf.returncode == 0, describe(hf)
    merged = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "merged")
    final = load_file(run_dir / "model.safetensors")
    assert all(final[name].equal(tensor) for name, tensor in merged.state_dict().items() if name in final)
    adapted = PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(base), tmp_path / "adapter")
    ids = torch.randint(0, CONFIG["vocab_size"], (3, 16))
    with torch.no_grad():
        torch.testing.assert_close(adapted.eval()(input_ids=ids).logits, merged.eval()(input_ids=ids).logits)
