"""Hugging Face models by name (`model.name: hf`): a GPT-2 built from a small config in the recipe (its
token embedding and output head tied) trains on batches of named tensors with its own loss, on 1 process
and under FSDP2 on 2 with its default shard units (its declared GPT2Block; the tied embedding and head in
the root's unit); checkpoints, resumes bitwise, exports (`export --hf` for transformers' from_pretrained)
and its final weights load back with the tie intact."""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import transformers  # the `hf` extra, which `make test` installs: these tests never skip for want of it
import yaml
from safetensors.torch import load_file

from conftest import TESTS, assert_resumed
from test_tied_weights import run, step, tensor_names, train
from trainwright.components import build_scoring
from trainwright.data.bundle import Task
from trainwright.distributed.processes import Processes
from trainwright.errors import UserError
from trainwright.models.hf import hf
from trainwright.recipe import load_recipe
from trainwright.training.evaluation import evaluate

CONFIG = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 32, "n_positions": 16,
          "bos_token_id": 0, "eos_token_id": 0,
          "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}  # no dropout: runs on 1 and 2 processes compare
RECIPE = {
    "name": "hf_gpt2", "seed": 0,
    "data": {"name": "token_batches:token_windows", "windows": 320, "context": 16, "vocab_size": 32, "batch_size": 32},
    "model": {"name": "hf", "architecture": "GPT2LMHeadModel", "config": CONFIG},
    "loss": {"name": "model"},
    "optimizer": {"name": "adamw", "lr": 0.003},
    "trainer": {"epochs": 3, "log_every_steps": 8},  # 256 training windows: 8 steps per epoch
    "checkpoint": {"every_steps": 8, "keep_last": 5},
    "logging": {"wandb": False},
}
TIE = ("lm_head.weight", "transformer.wte.weight")  # (the alias, the name it is saved under)


# --- the builder ------------------------------------------------------------------------------------


def test_a_model_class_or_an_auto_class_from_the_recipe_config():
    model = hf("GPT2LMHeadModel", dict(CONFIG))
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.n_layer == 2
    assert model.lm_head.weight is model.transformer.wte.weight
    assert type(hf("AutoModelForCausalLM", dict(CONFIG))).__name__ == "GPT2LMHeadModel"
    no_type = {k: v for k, v in CONFIG.items() if k != "model_type"}
    assert hf("GPT2LMHeadModel", no_type).config.n_embd == 32  # the class brings its config class


class NamedSplit(torch.utils.data.Dataset):
    """Items of named tensors, row by row."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


def test_a_causal_lm_given_its_input_ids_as_labels_is_scored_on_the_next_token(recipe):
    """Transformers' convention: `labels` = `input_ids`, which the causal LM shifts itself. The per-token
    metrics compare the logits at t with the token at t + 1 (as its loss does), and agree with batches whose
    labels are the next tokens already (`shift_labels`), over the same predicted positions."""
    torch.manual_seed(0)
    model = hf("GPT2LMHeadModel", dict(CONFIG))
    ids = torch.randint(0, CONFIG["vocab_size"], (12, 16))
    task = Task("sequence", class_names=tuple(str(i) for i in range(CONFIG["vocab_size"])))
    scoring = build_scoring(load_recipe(recipe), task)
    convention = evaluate(
        model, NamedSplit({"input_ids": ids, "labels": ids}), scoring, Processes.single(), batch_size=5
    )
    following = ids[:, 1:]
    aligned = NamedSplit({"input_ids": ids[:, :-1], "labels": following, "shift_labels": following})
    assert evaluate(model, aligned, scoring, Processes.single(), batch_size=5) == pytest.approx(convention, rel=1e-5)
    with torch.no_grad():
        result = model(input_ids=ids, labels=ids)
    predicted = result.logits[:, :-1].argmax(-1)
    assert convention["accuracy"] == pytest.approx((predicted == following).double().mean().item())
    assert convention["loss"] == pytest.approx(result.loss.item(), rel=1e-5)
    assert convention["perplexity"] == pytest.approx(math.exp(result.loss.item()), rel=1e-5)


@pytest.mark.parametrize(("kwargs", "fragments"), [
    ({"architecture": "GPT2LMHeadModl"}, ("model.architecture", "'GPT2LMHeadModl'", "did you mean 'GPT2LMHeadModel'")),
    ({"architecture": "GPT2Config"}, ("model.architecture", "not a model class")),
    ({"architecture": "GPT2LMHeadModel", "config": {**CONFIG, "n_layers": 3}},
     ("model.config.n_layers", "GPT2Config has no setting", "did you mean 'n_layer'")),
    ({"architecture": "GPT2LMHeadModel", "config": {**CONFIG, "model_type": "gtp2"}},
     ("model.config.model_type", "'gtp2'", "did you mean 'gpt2'")),
    ({"architecture": "AutoModelForCausalLM", "config": {"n_layer": 2}}, ("model.config.model_type is needed",)),
    ({"architecture": "GPT2LMHeadModel", "pretrained": "no/such/folder"}, ("model.pretrained", "no config.json")),
])
def test_bad_model_sections_are_one_clear_error(kwargs, fragments):
    with pytest.raises(UserError) as error:
        hf(**kwargs)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_without_transformers_the_message_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises ImportError
    with pytest.raises(UserError, match=r"pip install 'trainwright\[hf\]'"):
        hf("GPT2LMHeadModel", dict(CONFIG))


def test_a_local_pretrained_folder_loads_with_its_weights(tmp_path):
    saved = hf("GPT2LMHeadModel", dict(CONFIG))
    saved.save_pretrained(tmp_path / "gpt2")
    loaded = hf("AutoModelForCausalLM", pretrained=str(tmp_path / "gpt2"))
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    for (name, a), (_, b) in zip(saved.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name


def test_a_pretrained_folder_with_only_pickled_weights_is_refused_before_transformers_reads_it(tmp_path):
    saved = hf("GPT2LMHeadModel", dict(CONFIG))
    saved.save_pretrained(tmp_path / "gpt2")
    (tmp_path / "gpt2" / "model.safetensors").unlink()
    torch.save(saved.state_dict(), tmp_path / "gpt2" / "pytorch_model.bin")  # transformers would unpickle it
    with pytest.raises(UserError) as error:
        hf("GPT2LMHeadModel", pretrained=str(tmp_path / "gpt2"))
    assert "model.pretrained" in str(error.value) and "pickled weights (pytorch_model.bin)" in str(error.value)


def test_a_pretrained_folder_with_a_damaged_safetensors_file_is_refused(tmp_path):
    hf("GPT2LMHeadModel", dict(CONFIG)).save_pretrained(tmp_path / "gpt2")
    weights = tmp_path / "gpt2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match=f"model.pretrained: {weights} is damaged"):
        hf("GPT2LMHeadModel", pretrained=str(tmp_path / "gpt2"))


def test_export_hf_refuses_a_checkpoint_weight_of_another_dtype(recipe, tmp_path, capsys):
    from reliability_helpers import user_error
    from test_crafted_checkpoints import reseal, retype

    run_dir = tmp_path / "run"
    train(recipe, run_dir, "trainer.max_steps=8")
    checkpoint = step(run_dir, 8)
    retype(checkpoint / "model.safetensors", TIE[1], torch.float16)
    reseal(checkpoint)
    user_error(capsys, "export", checkpoint, "--hf", "--out", tmp_path / "out",
               fragments=(str(checkpoint), f"tensor {TIE[1]!r} is F16 [32, 32], where the model has F32 [32, 32]"))
    assert not (tmp_path / "out").exists()


def test_a_relative_pretrained_folder_is_pinned_absolute_in_the_run_recipe(tmp_path, monkeypatch):
    from trainwright.data.paths import pin_paths
    from trainwright.recipe import validate

    monkeypatch.chdir(tmp_path)
    recipe = validate({**RECIPE, "model": {"name": "hf", "architecture": "GPT2LMHeadModel", "pretrained": "gpt2"}}, "t")
    assert pin_paths(recipe).model.kwargs()["pretrained"] == str(tmp_path / "gpt2")


# --- end to end -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hf") / "hf_gpt2.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def assert_loads_tied(run_dir: Path) -> dict[str, torch.Tensor]:
    """model.safetensors holds the tied weight once, and loads into a fresh model with the tie intact."""
    sys.path.insert(0, str(TESTS))
    import trainwright

    final = load_file(run_dir / "model.safetensors")
    assert TIE[1] in final and TIE[0] not in final
    model = trainwright.load_run(run_dir).model
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(model.lm_head.weight, final[TIE[1]])
    return final


def losses(run_dir: Path) -> list[float]:
    records = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [record["train/loss"] for record in records if "train/loss" in record]


@pytest.mark.slow
def test_trains_on_one_process_with_its_own_loss(recipe, tmp_path):
    run_dir = tmp_path / "run"
    result = train(recipe, run_dir)
    assert "world_size=1 device=cpu precision=no strategy=ddp" in result.stdout
    curve = losses(run_dir)
    assert len(curve) == 3 and curve[-1] < curve[0] * 0.8, curve  # it learns the sequence
    assert "lm_head.weight" not in tensor_names(step(run_dir, 8) / "model.safetensors")
    final = assert_loads_tied(run_dir)
    recomputed = tmp_path / "recomputed"  # activation checkpointing of its blocks: the same training
    train(recipe, recomputed, "distributed.activation_checkpointing=[GPT2Block]")
    assert losses(recomputed) == pytest.approx(curve, rel=1e-6)
    for key, value in assert_loads_tied(recomputed).items():
        torch.testing.assert_close(value, final[key], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def fsdp_run(recipe, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("hf_fsdp") / "run"
    result = train(recipe, run_dir, processes=2)
    assert "world_size=2 device=cpu precision=no strategy=fsdp" in result.stdout
    return run_dir


@pytest.mark.slow
def test_fsdp_on_two_processes_checkpoints_resumes_and_keeps_the_tie(fsdp_run, recipe, tmp_path):
    for shard in (step(fsdp_run, 8) / "model").glob("*.safetensors"):
        assert TIE[1] in tensor_names(shard) and TIE[0] not in tensor_names(shard)
    final = assert_loads_tied(fsdp_run)
    resumed = tmp_path / "run"
    shutil.copytree(fsdp_run, resumed)
    result = train(recipe, resumed, "--resume", str(step(resumed, 8)), processes=2)
    assert_resumed(result.stdout + result.stderr, 8)
    assert (resumed / "model.safetensors").read_bytes() == (fsdp_run / "model.safetensors").read_bytes()
    single = tmp_path / "single"  # the sharded checkpoint, resharded into one unsharded process
    shutil.copytree(fsdp_run, single)
    result = train(recipe, single, "--resume", str(step(single, 16)))
    assert "world_size=1" in result.stdout
    assert_resumed(result.stdout + result.stderr, 16)
    for key, value in assert_loads_tied(single).items():
        torch.testing.assert_close(value, final[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_export_hf_writes_a_folder_from_pretrained_loads_with_the_tie(fsdp_run, tmp_path):
    out = tmp_path / "gpt2"
    result = run("export", str(fsdp_run), "--out", str(out), "--hf")
    assert "Exported step 24" in result.stdout
    assert (out / "config.json").is_file()
    model = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert model.lm_head.weight is model.transformer.wte.weight
    final = load_file(fsdp_run / "model.safetensors")
    for name, value in model.state_dict().items():
        assert torch.equal(value, final[TIE[1] if name == TIE[0] else name]), name
    plain = tmp_path / "weights.safetensors"  # and the plain export holds the tied weight once
    run("export", str(fsdp_run), "--out", str(plain))
    assert load_file(plain).keys() == final.keys()


@pytest.mark.slow
def test_export_hf_of_a_model_that_is_not_hf_is_refused(tmp_path):
    from test_tied_weights import RECIPE as TIED

    recipe = tmp_path / "tied.yaml"
    recipe.write_text(yaml.safe_dump({**TIED, "trainer": {"max_steps": 10}, "checkpoint": {"every_steps": 10}}))
    train(recipe, tmp_path / "run")
    from trainwright.finished.export import export_hf

    with pytest.raises(UserError, match="not a Hugging Face model"):
        export_hf(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()
