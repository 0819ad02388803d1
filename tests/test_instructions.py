"""Instruction data (`data.name: instructions`, issue 28): {prompt, response} and chat `messages` items from a
JSONL file, tokenized with a tokenizers file or a transformers tokenizer folder (its chat template), the loss
on the response tokens only; packing keeps the counted tokens and lets attention cross examples; bad input
is one message each; a tiny GPT-2 trains on it and resumes bitwise after a kill at a chosen step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import transformers
import yaml
from tokenizers import Tokenizer, decoders, models

import processes
import resuming
from conftest import cli_env_with_tests, describe
from reliability_helpers import user_error
from trainwright.data.bundle import IGNORE_INDEX, Task
from trainwright.data.collate import pad
from trainwright.data.instructions import instructions
from trainwright.step import DefaultStep, ModelLoss

CHARS = list(" abcdefghijklmnopqrstuvwxyz0123456789:+=?") + ["<eos>", "<s>"]
TEMPLATE = ("{% for m in messages %}<s>{{ m.role }}:{{ m.content }}<eos>{% endfor %}"
            "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def tokenizer_file(folder: Path) -> Path:
    """A character-level tokenizers JSON file (no chat template)."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(CHARS)}, merges=[]))
    tokenizer.add_special_tokens(["<eos>", "<s>"])
    tokenizer.decoder = decoders.Fuse()
    tokenizer.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def tokenizer_folder(folder: Path, template: str | None = TEMPLATE) -> Path:
    """The same tokenizer as a transformers folder (eos `<eos>`), with `template` as its chat template."""
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file(folder / "raw")), eos_token="<eos>")
    if template:
        fast.chat_template = template
    fast.save_pretrained(folder)
    return folder


def sums(count: int, seed: int = 0) -> list[dict[str, str]]:
    g = torch.Generator().manual_seed(seed)
    pairs = torch.randint(0, 50, (count, 2), generator=g).tolist()
    return [{"prompt": f"{a}+{b}=", "response": str(a + b)} for a, b in pairs]


def write_jsonl(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def gpt2(vocab: int = len(CHARS), positions: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=vocab, n_positions=positions,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).eval()


def test_prompt_tokens_are_masked_and_the_response_ends_with_eos(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "ab=", "response": "ba"}] * 4)
    bundle = instructions(data, tokenizer_folder(tmp_path / "tok"), context=16, val_fraction=0.25)
    item = bundle.train[0]
    ids = [CHARS.index(c) for c in "ab=ba"] + [CHARS.index("<eos>")]
    assert item["input_ids"].tolist() == ids
    assert item["labels"].tolist() == [IGNORE_INDEX] * 3 + ids[3:]
    assert item["attention_mask"].tolist() == [1] * 6
    plain = instructions(data, tokenizer_file(tmp_path / "file"), context=16, val_fraction=0.25).train[0]
    assert plain["input_ids"].tolist() == ids[:-1]  # a tokenizers file has no eos unless data.eos names one


def test_messages_count_only_what_the_assistant_says(tmp_path):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "ok?"}, {"role": "assistant", "content": "ok"}]
    data = write_jsonl(tmp_path / "d.jsonl", [{"messages": messages}] * 2)
    folder = tokenizer_folder(tmp_path / "tok")
    item = instructions(data, folder, context=64, val_fraction=0.5).train[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert tokenizer.decode(item["input_ids"]) == tokenizer.apply_chat_template(messages, tokenize=False)
    counted = [i for i, label in zip(item["input_ids"].tolist(), item["labels"].tolist()) if label != IGNORE_INDEX]
    assert tokenizer.decode(counted) == "yo<eos>ok<eos>"


def test_a_response_only_loss_equals_a_hand_computation_over_the_response_tokens(tmp_path):
    items = sums(8)
    bundle = instructions(write_jsonl(tmp_path / "d.jsonl", items), tokenizer_folder(tmp_path / "tok"),
                          context=16, val_fraction=0.5)
    batch = pad([bundle.train[i] for i in range(4)])
    model = gpt2()
    step = DefaultStep(ModelLoss(), Task("sequence", class_names=tuple(CHARS)))
    with torch.no_grad():
        loss = step.scorer(model, batch, torch.device("cpu"))(batch).loss
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    terms = []
    for row, item in enumerate(items[:4]):  # the response's characters and <eos>, after the prompt's
        start = len(item["prompt"])
        for position in range(start, start + len(item["response"]) + 1):
            target = batch["input_ids"][row, position]
            terms.append(-torch.log_softmax(logits[row, position - 1], -1)[target])
    assert step.count(batch) == len(terms) == sum(len(i["response"]) + 1 for i in items[:4])
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_packing_keeps_the_counted_tokens_and_attention_crosses_examples(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", sums(40))
    folder = tokenizer_folder(tmp_path / "tok")
    plain = instructions(data, folder, context=32, val_fraction=0.25)
    packed = instructions(data, folder, context=32, val_fraction=0.25, packing=True)
    examples = [plain.train[i] for i in range(len(plain.train))]
    windows = [packed.train[i] for i in range(len(packed.train))]
    assert len(windows) < len(examples) and all(len(w["input_ids"]) <= 32 for w in windows)
    assert torch.cat([w["input_ids"] for w in windows]).equal(torch.cat([e["input_ids"] for e in examples]))
    # the tokens a causal LM is scored on (its labels from the second on) are the same, packed or not
    assert sum(int((w["labels"] != IGNORE_INDEX).sum()) for w in windows) == sum(
        int((e["labels"][1:] != IGNORE_INDEX).sum()) for e in examples)
    model, first, second = gpt2(), examples[0], examples[1]
    window = windows[0]
    with torch.no_grad():
        joint = model(input_ids=window["input_ids"][None]).logits[0]
        alone = [model(input_ids=e["input_ids"][None]).logits[0] for e in (first, second)]
    n, m = len(first["input_ids"]), len(second["input_ids"])
    assert window["input_ids"][: n + m].equal(torch.cat([first["input_ids"], second["input_ids"]]))
    torch.testing.assert_close(joint[:n], alone[0])  # the first example sees only itself
    assert not torch.allclose(joint[n : n + m], alone[1])  # the second attends to the first (documented)


def test_bad_input_is_one_message_each(capsys, tmp_path):
    folder = tokenizer_folder(tmp_path / "tok")
    plain = tokenizer_folder(tmp_path / "plain", template=None)
    last_only = tokenizer_folder(tmp_path / "last", template="{{ messages[-1].content }}")

    def refused(items: list | str, tokenizer: Path, *fragments: str) -> None:
        path = tmp_path / "d.jsonl"
        path.write_text(items if isinstance(items, str) else "".join(json.dumps(i) + "\n" for i in items))
        recipe = {"name": "sft", "data": {"name": "instructions", "path": str(path), "tokenizer": str(tokenizer),
                                          "context": 32, "batch_size": 2},
                  "model": {"name": "hf", "architecture": "GPT2LMHeadModel",
                            "config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 1,
                                       "vocab_size": len(CHARS), "n_positions": 32}},
                  "loss": {"name": "model"}, "optimizer": {"name": "adamw", "lr": 0.01}, "logging": {"wandb": False}}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
        user_error(capsys, "train", tmp_path / "r.yaml", "--run-dir", tmp_path / "run", fragments=fragments)

    good = sums(3)
    refused([*good, {"prompt": "1+1="}], folder, f"{tmp_path / 'd.jsonl'} line 4", "no text response")
    refused([*good, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
            plain, "line 4", "no chat template")
    refused([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}],
            tokenizer_file(tmp_path / "file"), "line 1", "no chat template")
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    refused([chat, chat], last_only, "line 1", "does not begin the rendering")
    strict = tokenizer_folder(tmp_path / "strict", template="{{ raise_exception('roles must alternate') }}")
    refused([chat, chat], strict, "line 1", "refuses its messages: roles must alternate")
    refused("\n", folder, "holds no items")
    refused([*good, {"prompt": "1+1=" * 10, "response": "2"}], folder, "line 4", "more than data.context=32")
    refused('{"prompt": "1+1=", "response": "2"}\n{"prompt": ', folder, "line 2 is not JSON")


def test_a_tiny_gpt2_trains_on_instructions_and_resumes_bitwise_after_a_kill(tmp_path):
    data = write_jsonl(tmp_path / "sums.jsonl", sums(80))
    recipe = {"name": "sft", "seed": 0,
              "data": {"name": "instructions", "path": "sums.jsonl", "tokenizer": "tok", "context": 32,
                       "packing": True, "val_fraction": 0.2, "batch_size": 4},
              "model": {"name": "hf", "architecture": "GPT2LMHeadModel",
                        "config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2,
                                   "vocab_size": len(CHARS), "n_positions": 32}},
              "loss": {"name": "model"}, "optimizer": {"name": "adamw", "lr": 0.01},
              "trainer": {"epochs": 2}, "checkpoint": {"every_steps": 3}, "logging": {"wandb": False}}
    tokenizer_folder(tmp_path / "tok")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))

    def train(run_dir: Path, script: list[object]):
        return processes.run([sys.executable, *script, "train", "r.yaml", "--run-dir", run_dir], cli_env_with_tests(),
                             cwd=tmp_path)

    whole = train(tmp_path / "whole", ["-m", "trainwright"])
    assert whole.returncode == 0 and "Traceback" not in whole.stderr, describe(whole)
    record = json.loads((tmp_path / "whole" / "data.json").read_text())
    assert record["files"]["items"]["path"] == str(data) and record["preprocessing"]["packing"] is True
    pinned = yaml.safe_load((tmp_path / "whole" / "recipe.yaml").read_text())["data"]
    assert pinned["path"] == str(data) and pinned["tokenizer"] == str(tmp_path / "tok")
    answer = processes.run([sys.executable, "-m", "trainwright", "predict", tmp_path / "whole", "--prompt", "12+3=",
                            "--length", "3", "--temperature", "0"], cli_env_with_tests())
    assert answer.returncode == 0 and answer.stdout.startswith("12+3="), describe(answer)
    resuming.kill_and_resume(3, ["train", "r.yaml", "--run-dir", tmp_path / "run"], tmp_path / "run",
                             env=cli_env_with_tests(), cwd=tmp_path)
    resuming.assert_same_weights(tmp_path / "run", tmp_path / "whole")
