"""Make what `recipes/lora_sft.yaml` fine-tunes, with no download: a base model and an instruction set.

    python examples/make_lora_base.py data/lora_sft          # the folder must not exist yet
    trainwright train recipes/lora_sft.yaml                  # LoRA: val/exact_match after each epoch
    trainwright predict runs/lora_sft --prompt "reverse kqzv: " --length 5 --temperature 0

writes
  data/lora_sft/base/          a tiny GPT-2 (transformers' GPT2LMHeadModel, save_pretrained) with its character
                               tokenizer (97 characters and <eos>), pretrained briefly on the running Python's
                               standard-library source (the first 300 kB of its top-level modules)
  data/lora_sft/reverse.jsonl  {"prompt": "reverse abcd: ", "response": "dcba"} items of 4 random letters;
                               the last 20% (words that training never shows) are held out: lora_sft.yaml
                               validates on them (data.val_fraction: 0.2)
and prints the base model's exact match on the held-out prompts, by greedy generation: the figure before
fine-tuning (the run's val/exact_match is the one after)."""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models

from trainwright.data.text import corpus_files, read_corpus
from trainwright.finished.generation import generate

CHARS = [*string.printable[:95], "\n", "\t"]  # printable ASCII (digits, letters, punctuation, space), newline, tab
EOS = "<eos>"
HELD_OUT = 0.2  # the share of items held out (recipes/lora_sft.yaml's data.val_fraction)


def tokenizer(folder: Path) -> transformers.PreTrainedTokenizerFast:
    """A character tokenizer (a tokenizers BPE without merges: one token per character), eos `<eos>`."""
    folder.mkdir(parents=True)
    raw = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate([*CHARS, EOS])}, merges=[]))
    raw.add_special_tokens([EOS])
    raw.decoder = decoders.Fuse()
    raw.save(str(folder / "raw.json"))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "raw.json"), eos_token=EOS)
    (folder / "raw.json").unlink()
    return fast


def pretrain(ids: torch.Tensor, steps: int, layers: int, width: int, context: int) -> transformers.GPT2LMHeadModel:
    """A GPT-2 trained for `steps` AdamW steps on random windows of the token stream `ids`."""
    config = transformers.GPT2Config(vocab_size=len(CHARS) + 1, n_positions=context, n_layer=layers, n_embd=width,
                                     n_head=4, eos_token_id=len(CHARS), bos_token_id=len(CHARS),
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # no dropout
    model = transformers.GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(ids) - context, (32,))
        batch = torch.stack([ids[s : s + context] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step == 1 or step % 100 == 0 or step == steps:
            print(f"pretraining step {step}/{steps}: loss {loss.item():.3f}", flush=True)
    return model.eval()


def reversals(count: int, rng: random.Random) -> list[dict[str, str]]:
    """`count` items reversing distinct words of 4 random lowercase letters."""
    words: dict[str, None] = {}
    while len(words) < count:
        words["".join(rng.choices(string.ascii_lowercase, k=4))] = None
    return [{"prompt": f"reverse {word}: ", "response": word[::-1]} for word in words]


def exact_match(model: torch.nn.Module, fast: transformers.PreTrainedTokenizerFast,
                items: list[dict[str, str]]) -> tuple[int, list[str]]:
    """How many responses greedy generation from the prompts gives exactly (its tokens, then <eos>), and what
    it gave for each prompt."""
    right, answers = 0, []
    for item in items:
        wanted = [*fast(item["response"], add_special_tokens=False)["input_ids"], fast.eos_token_id]
        prompt = torch.tensor(fast(item["prompt"])["input_ids"])
        given: list[int] = []
        for token in generate(model, prompt, len(wanted), temperature=0.0, context=model.config.n_positions):
            given.append(token)
            if token == fast.eos_token_id:
                break
        right += given == wanted
        answers.append(fast.decode(given))
    return right, answers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write base/ and reverse.jsonl (must not exist yet)")
    parser.add_argument("--steps", type=int, default=400, help="pretraining steps (default 400)")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks (default 2)")
    parser.add_argument("--width", type=int, default=64, help="embedding width (default 64)")
    parser.add_argument("--items", type=int, default=2000, help="instruction items, 20%% of them held out (2000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.folder.exists():
        print(f"{args.folder} exists already: give a new folder (nothing was written)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    fast = tokenizer(args.folder / "base")
    text = read_corpus(corpus_files(None, "[a-z]*.py"), 300_000).decode(errors="replace")
    corpus = "".join(c for c in text if c in CHARS)
    model = pretrain(torch.tensor(fast(corpus)["input_ids"]), args.steps, args.layers, args.width, context=64)
    model.save_pretrained(args.folder / "base")
    fast.save_pretrained(args.folder / "base")
    items = reversals(args.items, random.Random(args.seed))
    (args.folder / "reverse.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    held_out = items[int(len(items) * (1 - HELD_OUT)):]
    right, answers = exact_match(model, fast, held_out)
    print(f"wrote {args.folder / 'base'} (GPT-2, {sum(p.numel() for p in model.parameters()):,} parameters) and "
          f"{args.folder / 'reverse.jsonl'} ({len(items)} items) in {time.perf_counter() - started:.0f} s")
    print(f"the base model's exact match on the {len(held_out)} held-out prompts: {right / len(held_out):.3f} "
          f"({right}/{len(held_out)}); e.g. {held_out[0]['prompt']!r} -> {answers[0]!r}, "
          f"not {held_out[0]['response']!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
