"""`predict --prompt` on Hugging Face causal LMs as on `gpt`: a GPT-2 loaded from a local pretrained folder that
holds its tokenizer (tokenizer.json) trains on token windows, then generates text with that tokenizer
(temperature, length, seed); `export --hf` passes the tokenizer on, and a run from the exported folder
generates too. A sequence run without any vocabulary says so once, and never sends the user in a circle
between `--prompt` and no `--prompt`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from conftest import assert_user_error
from reliability_helpers import call, train_ok
from test_hf_models import CONFIG, RECIPE

pytestmark = pytest.mark.slow
TESTS = Path(__file__).resolve().parent
CHARS = "abcdefghijklmnopqrstuvwxyz .,;:!"  # one token each: 32, the model's vocab_size


@pytest.fixture(autouse=True)
def tests_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))  # the recipes' data set: token_batches:token_windows


def pretrained_folder(folder: Path) -> Path:
    """A tiny GPT-2 saved by save_pretrained, with a character-level tokenizer.json beside it."""
    from tokenizers import Tokenizer, decoders, models

    from trainwright.models.hf import hf

    torch.manual_seed(0)
    hf("GPT2LMHeadModel", dict(CONFIG)).save_pretrained(folder)
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(CHARS)}, merges=[]))
    tokenizer.decoder = decoders.Fuse()
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder


def write_recipe(path: Path, pretrained: Path | None) -> Path:
    model = {"name": "hf", "architecture": "GPT2LMHeadModel"}
    model.update({"pretrained": str(pretrained)} if pretrained else {"config": CONFIG})
    recipe = {**RECIPE, "model": model, "trainer": {"max_steps": 8, "log_every_steps": 8}}
    path.write_text(yaml.safe_dump(recipe))
    return path


def predicted(capsys, run_dir: Path, *args: str) -> str:
    code, out, err = call(capsys, "predict", run_dir, *args)
    assert code == 0 and "Traceback" not in err, err
    return out.rstrip("\n")


def test_an_hf_run_generates_with_its_tokenizer_also_after_export(capsys, tmp_path):
    folder = pretrained_folder(tmp_path / "gpt2")
    run_dir = tmp_path / "run"
    train_ok(capsys, write_recipe(tmp_path / "hf.yaml", folder), "--run-dir", run_dir)
    greedy = predicted(capsys, run_dir, "--prompt", "hello ", "--length", "20", "--temperature", "0")
    assert greedy.startswith("hello ") and len(greedy) == 26 and set(greedy) <= set(CHARS), greedy
    assert predicted(capsys, run_dir, "--prompt", "hello ", "--length", "20", "--temperature", "0") == greedy
    sampled = predicted(capsys, run_dir, "--prompt", "hello ", "--length", "20", "--seed", "3")
    assert predicted(capsys, run_dir, "--prompt", "hello ", "--length", "20", "--seed", "3") == sampled != greedy
    code, _, err = call(capsys, "predict", run_dir, "--prompt", "HELLO")  # capitals: no token of the tokenizer
    assert_user_error(code, err, "--prompt 'HELLO' is no token of the run's vocabulary")
    code, _, err = call(capsys, "predict", run_dir, "-n", "3")  # a sequence run: --prompt is the way
    assert "--prompt TEXT" in assert_user_error(code, err, "sequence model")

    exported = tmp_path / "exported"
    code, _, err = call(capsys, "export", run_dir, "--out", exported, "--hf")
    assert code == 0, err
    assert (exported / "tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    again = tmp_path / "again"
    train_ok(capsys, write_recipe(tmp_path / "again.yaml", exported), "--run-dir", again)
    assert predicted(capsys, again, "--prompt", "hello ", "--length", "20").startswith("hello ")


def test_a_sequence_run_without_a_vocabulary_says_why_without_a_circle(capsys, tmp_path):
    run_dir = tmp_path / "run"
    train_ok(capsys, write_recipe(tmp_path / "hf.yaml", None), "--run-dir", run_dir)
    code, _, err = call(capsys, "predict", run_dir, "--prompt", "hello")
    message = assert_user_error(code, err, "no vocabulary", "'token_batches:token_windows'", "tokenizer.json",
                                "data: text")
    assert "without --prompt" not in message
    code, _, err = call(capsys, "predict", run_dir, "-n", "3")
    message = assert_user_error(code, err, "sequence model", "trainwright eval")
    assert "--prompt" not in message
