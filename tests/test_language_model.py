"""Sequence tasks end to end: the built-in text data set and gpt model, cross_entropy over (batch, time,
vocab) outputs without a reshape, per-token metrics (padding not counted), the start-up shape check's
messages, `predict --prompt`, and the token cache."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, TEXT_MEDIUM, assert_ok, cli_env, run_cli, text_corpus
from reliability_helpers import call, user_error
from trainwright.components import build_scoring
from trainwright.data.bundle import DataBundle, Task, TensorSplit
from trainwright.distributed.accelerate_compat import forget_accelerator_state
from trainwright.distributed.processes import Processes
from trainwright.errors import UserError
from trainwright.recipe import load_recipe
from trainwright.training.evaluation import evaluate
from trainwright.training.start import train as train_recipe

TINY_GPT = REPO / "recipes" / "tiny_gpt.yaml"
# A small model on a small corpus: seconds per run on one core (tied embeddings, as the recipe ships).
SMALL = ["model.layers=1", "model.width=32", "model.heads=2", "model.context=16", "data.context=16",
         "data.batch_size=16", "logging.wandb=false", "checkpoint.every_steps=null", "trainer.log_every_steps=10",
         "scheduler.warmup_steps=5"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 40 kB of Python source (the stdlib's argparse module), as a user's own text file."""
    return text_corpus(tmp_path_factory.mktemp("corpus") / "argparse.txt", TEXT_MEDIUM)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINWRIGHT_CACHE", str(tmp_path / "cache"))
    forget_accelerator_state()


def unigram_entropy(text: str, val_fraction: float = 0.1) -> float:
    """Nats per character of the training part's character frequencies, scored on the validation part."""
    cut = int(len(text) * (1 - val_fraction))
    counts: dict[str, int] = {}
    for char in text[:cut]:
        counts[char] = counts.get(char, 0) + 1
    total = sum(counts.values())
    val = text[cut:]
    return -sum(math.log(counts.get(c, 1) / total) for c in val) / len(val)


def test_gpt_learns_the_corpus_below_its_unigram_entropy(corpus, tmp_path):
    """cross_entropy scores (batch, time, vocab) logits against (batch, time) targets as they are; the
    validation loss ends well below the corpus's unigram entropy and perplexity is exp(loss)."""
    recipe = load_recipe(TINY_GPT, [*SMALL, f"data.path={corpus}", "data.pattern=*", "trainer.max_steps=150",
                                     "data.max_bytes=null"])
    outcome = train_recipe(recipe, tmp_path / "run")
    summary = outcome.summary
    baseline = unigram_entropy(corpus.read_text())
    assert summary["val/loss"] < baseline - 0.5, (summary, baseline)
    assert summary["val/perplexity"] == pytest.approx(
        math.exp(summary["val/loss"]), rel=1e-6
    )  # float32 loss, float64 sums
    assert 0.2 < summary["val/accuracy"] < 1.0
    record = json.loads((tmp_path / "run" / "data.json").read_text())
    assert record["task"]["kind"] == "sequence" and "".join(record["task"]["class_names"]) == "".join(
        sorted(set(corpus.read_text()))
    )
    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert weights["tokens.weight"].shape[0] == len(record["task"]["class_names"])  # vocab_size from the data


def test_windows_follow_the_token_stream_and_are_stored_once(corpus, tmp_path):
    from trainwright.data.text import text

    bundle = text(path=corpus, pattern="*", context=16, val_fraction=0.1)
    stored = list((tmp_path / "cache" / "tokens").glob("*.npy"))
    assert len(stored) == 1
    written = stored[0].stat().st_mtime_ns
    chars = bundle.task.class_names
    source = corpus.read_text()
    decoded = "".join(chars[i] for i in bundle.train.inputs[3].tolist())
    assert decoded == source[48:64]
    assert "".join(chars[i] for i in bundle.train.targets[3].tolist()) == source[49:65]
    assert torch.equal(
        bundle.val.inputs[0], torch.tensor([chars.index(c) for c in source[int(len(source) * 0.9) :][:16]])
    )
    again = text(path=corpus, pattern="*", context=16, val_fraction=0.1)  # read back, not written again
    assert stored[0].stat().st_mtime_ns == written and torch.equal(again.train.inputs, bundle.train.inputs)


def test_the_token_cache_is_keyed_by_the_texts_content(tmp_path):
    """The same file rewritten with other text of the same length, characters and modification time gets
    tokens of its new text; the same text under another name reads the array already stored."""
    from trainwright.data.text import text

    def decoded(bundle: DataBundle) -> str:
        return "".join(bundle.task.class_names[i] for i in bundle.train.inputs[0].tolist())

    corpus = tmp_path / "corpus.txt"
    first, second = "abcdefgh" * 40, "hgfedcba" * 40
    corpus.write_text(first)
    assert decoded(text(path=corpus, pattern="*", context=8)) == first[:8]
    stat = corpus.stat()
    corpus.write_text(second)
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert decoded(text(path=corpus, pattern="*", context=8)) == second[:8]
    stored = sorted((tmp_path / "cache" / "tokens").glob("*.npy"))
    assert len(stored) == 2
    (tmp_path / "copy.txt").write_text(second)
    assert decoded(text(path=tmp_path / "copy.txt", pattern="*", context=8)) == second[:8]
    assert sorted((tmp_path / "cache" / "tokens").glob("*.npy")) == stored


class _Padded(torch.nn.Module):
    """Logits that favour class 0 everywhere (a fixed linear map of the one-hot input ids)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(ids.clamp(min=0), 3).float() * 2.0


def test_metrics_count_tokens_not_padding_nor_batches():
    """Batches of 5, 1 and 0 real tokens whose mean losses differ: loss, accuracy and perplexity are means
    over the real tokens of the whole split, not means of batch means (nor counts of padding)."""
    inputs = torch.tensor([[0, 1, 2, 0], [1, 1, 0, 2], [2, 0, 0, 0], [0, 2, 1, 1], [2, 0, 0, 0]])
    targets = torch.tensor([[0, 1, 2, 1], [-100, -100, -100, 2], [-100, -100, 0, -100], [-100] * 4, [-100] * 4])
    task = Task("sequence", class_names=("a", "b", "c"))
    recipe = load_recipe(TINY_GPT, ["logging.wandb=false"])
    scoring = build_scoring(recipe, task)
    metrics = evaluate(_Padded(), TensorSplit(inputs, targets), scoring, Processes.single(), batch_size=2)
    logits = _Padded()(inputs)
    real = targets != -100
    token_losses = torch.nn.functional.cross_entropy(logits[real], targets[real], reduction="none").double()
    assert metrics["loss"] == pytest.approx(token_losses.mean().item(), rel=1e-6)
    assert metrics["perplexity"] == pytest.approx(math.exp(token_losses.mean().item()), rel=1e-6)
    assert metrics["accuracy"] == pytest.approx((logits.argmax(-1)[real] == targets[real]).double().mean().item())


def test_shape_check_names_the_right_numbers(corpus, tmp_path):
    """A model with more outputs than the data have tokens is told the data's (batch, time, classes) and
    vocab_size; one with fewer fails in its embedding and is told the same vocab_size."""
    classes = len(set(corpus.read_text()))
    overrides = [*SMALL, f"data.path={corpus}", "data.pattern=*", "data.max_bytes=null"]
    for vocab_size, fragments in (
        (classes + 5, [f"outputs of shape (16, 16, {classes + 5})", f"{classes} classes per position",
                       f"must have shape (16, 16, {classes})"]),
        (7, ["fails in its forward pass", f"has {classes} tokens"]),
    ):
        with pytest.raises(UserError) as caught:
            train_recipe(load_recipe(TINY_GPT, [*overrides, f"model.vocab_size={vocab_size}"]), tmp_path / "run")
        message = str(caught.value)
        for fragment in [*fragments, f"set model.vocab_size={classes}"]:
            assert fragment in message, message
        assert not (tmp_path / "run").exists()


def test_a_per_position_model_on_a_multiclass_data_set_is_told_what_a_sequence_task_needs():
    from trainwright.training.preflight import _check_output_shape

    recipe = load_recipe(TINY_GPT, ["logging.wandb=false"])
    data = DataBundle(TensorSplit(torch.zeros(4, 8), torch.zeros(4)), TensorSplit(torch.zeros(4, 8), torch.zeros(4)),
                      Task("multiclass", class_names=tuple("abcdefghijklmnop")))
    with pytest.raises(UserError, match=r"shape \(64, 32, 16\).*16 classes.*class per position.*'sequence'"):
        _check_output_shape(recipe, data, torch.zeros(64, 32, 16), torch.zeros(64, dtype=torch.long))


class _TwoTokens(torch.nn.Module):
    """Next-token logits [0, 2] at every position: token 1 has probability sigmoid(2 / temperature)."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.tensor([0.0, 2.0]))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*ids.shape, 2)


@pytest.mark.parametrize("temperature", [0.5, 4.0])
def test_generation_divides_the_logits_by_the_temperature(temperature):
    """A low temperature sharpens the distribution and a high one flattens it: the share of token 1 in
    1000 seeded samples is sigmoid(2 / t) (0.98 at t=0.5, 0.62 at t=4; the logits multiplied by t would
    give 0.73 and 0.9997)."""
    from trainwright.finished.generation import generate

    tokens = list(generate(_TwoTokens(), torch.tensor([0]), length=1000, temperature=temperature, context=1))
    assert sum(tokens) / len(tokens) == pytest.approx(1 / (1 + math.exp(-2 / temperature)), abs=0.04)


def test_predict_prompt_generates_text(corpus, tmp_path, capsys):
    """Trained by the CLI; predict and plot then run in this process (a CLI start-up is most of their time),
    on the same token cache (the autouse fixture's)."""
    run_dir = tmp_path / "run"
    overrides = [*SMALL, f"data.path={corpus}", "data.pattern=*", "data.max_bytes=null", "trainer.max_steps=60"]
    env = cli_env(TRAINWRIGHT_CACHE=str(tmp_path / "cache"))
    assert_ok(run_cli("train", TINY_GPT, *overrides, "--run-dir", run_dir, env=env))

    def predicted(*args: str) -> str:
        code, out, err = call(capsys, "predict", run_dir, *args)
        assert code == 0 and "Traceback" not in err, err
        return out

    greedy = predicted("--prompt", "def ", "--length", "40", "--temperature", "0")
    again = predicted("--prompt", "def ", "--length", "40", "--temperature", "0")
    text = greedy.rstrip("\n")
    assert text.startswith("def ") and len(text) == 44 and greedy == again
    sampled = predicted("--prompt", "def ", "--length", "40")
    assert sampled.startswith("def ") and sampled != greedy
    user_error(capsys, "predict", run_dir, "--prompt", "\u20ac", fragments=("the prompt holds characters", "'\u20ac'"))
    user_error(capsys, "predict", run_dir, "-n", "3", fragments=("--prompt",))
    code, _, err = call(capsys, "plot", run_dir)
    assert code == 0, err
    assert (run_dir / "plots" / "loss_curves.png").is_file()


def test_a_tokenizers_file_and_bytes_are_vocabularies_too(corpus, tmp_path):
    """data.tokenizer: a Hugging Face `tokenizers` JSON file (here a small BPE trained on the corpus);
    vocabulary bytes: 256 byte tokens. Both encode the corpus and decode back to it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from trainwright.data.text import Codec, text

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train(
        [str(corpus)], trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    bundle = text(path=corpus, pattern="*", tokenizer=path, context=16)
    assert bundle.task.kind == "sequence" and len(bundle.task.class_names) == tokenizer.get_vocab_size()
    assert bundle.sources["tokenizer"] == path and bundle.preprocessing["vocabulary"] == "tokenizer"
    codec = Codec.from_record({"preprocessing": bundle.preprocessing, "task": bundle.task.to_record()})
    window = bundle.train.inputs[:4].flatten().tolist()
    assert codec.decode(window) == corpus.read_text()[: len(codec.decode(window))]
    assert int(bundle.train.inputs.max()) < tokenizer.get_vocab_size()

    raw = text(path=corpus, pattern="*", vocabulary="bytes", context=16)
    assert len(raw.task.class_names) == 256
    codec = Codec.from_record({"preprocessing": raw.preprocessing, "task": raw.task.to_record()})
    assert codec.decode(raw.train.inputs[:2].flatten().tolist()) == corpus.read_text()[:32]
