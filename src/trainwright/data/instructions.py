"""Instruction data (`data.name: instructions`): a local JSONL file of `{prompt, response}` or `{messages:
[{role, content}, ...]}` items (or the rows of a Hugging Face `datasets` folder written by save_to_disk: its
`split`, with `columns` naming its prompt/response or messages columns where they are called otherwise),
tokenized with the recipe's tokenizer, the loss on the response tokens only.

An item is `{input_ids, labels, attention_mask}` (labels aligned with input_ids, as a Hugging Face causal
LM takes them: it shifts them itself): the prompt's labels (and everything a chat template adds around the
assistant's words, the assistant turn's header included) are -100, so only the response's tokens count.
A `{prompt, response}` item is the prompt's tokens then the response's and the tokenizer's end-of-text token
(`eos`); a `messages` item is rendered by the tokenizer's chat template (a transformers tokenizer folder that
has one), each assistant message's content counted. Items longer than `context` tokens are refused.

With `packing: true` consecutive examples (in file order) are packed whole into items of at most `context`
tokens. Attention crosses the examples of a packed item (the model sees one sequence); only the loss is
per example: each example's first label is -100, so no token is predicted from the example before it and
the counted tokens are those of the unpacked data. The last `val_fraction` of the examples validate.

Items are ragged: the splits are collated by `pad` (data/collate.py) unless the recipe sets data.collate.
The tokenizer's tokenizers JSON file is recorded in data.json as the run's vocabulary (as `text` records
its own), so `predict --prompt` encodes a prompt as training did for {prompt, response} items.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from trainwright.data.arguments import check_data_arguments
from trainwright.data.bundle import IGNORE_INDEX, DataBundle, Task
from trainwright.data.collate import COLLATE_ATTRIBUTE, pad
from trainwright.data.hf_datasets import check_columns, dataset_files, load_split
from trainwright.errors import UserError

ROLES_COUNTED = ("assistant",)  # the roles of a messages item whose content the loss counts
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "chat_template.json",
                   "vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer.model")


@dataclass(frozen=True)
class Example:
    """One tokenized item: its token ids and their labels (-100 where the loss does not count)."""

    ids: list[int]
    labels: list[int]


class InstructionSplit(Dataset):
    """Examples (packed or not) served as {input_ids, labels, attention_mask}, collated by `pad`."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples
        setattr(self, COLLATE_ATTRIBUTE, pad)  # the recipe's data.collate replaces it (components.build_data)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        example = self.examples[index]
        ids = torch.tensor(example.ids, dtype=torch.long)
        return {"input_ids": ids, "labels": torch.tensor(example.labels, dtype=torch.long),
                "attention_mask": torch.ones_like(ids)}

    def fingerprint(self) -> dict[str, Any]:
        """The sha256 of every item's ids and labels (what data.json records for this split)."""
        digest = hashlib.sha256()
        for example in self.examples:
            digest.update(json.dumps([example.ids, example.labels]).encode())
        return {"sha256": digest.hexdigest()}


def read_items(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """The JSONL file's items with their line numbers (blank lines skipped); a line that is not a JSON
    object with `prompt` and `response` or with `messages` is a UserError naming the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"data.path: {path} does not exist (give a JSONL file of {{prompt, response}} or "
                        "{messages} items, one a line)")
    items = []
    with open(path, encoding="utf-8", errors="replace") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"data.path: {path} line {number} is not JSON ({exc.msg})") from None
            _check_item(item, f"data.path: {path} line {number}")
            items.append((number, item))
    if not items:
        raise UserError(f"data.path: {path} holds no items (give one JSON object a line: "
                        '{"prompt": ..., "response": ...} or {"messages": [{"role": ..., "content": ...}, ...]})')
    return items


def read_rows(path: Path, split: str | None, columns: dict[str, str] | None) -> list[tuple[int, dict[str, Any]]]:
    """The rows of a saved `datasets` folder's split as items (`columns` maps prompt, response or messages to
    the dataset's own column names), with their row numbers (from 1), checked as the JSONL file's lines are."""
    dataset = load_split(path, split)
    names = dict(columns or {})
    unknown = sorted(set(names) - {"prompt", "response", "messages"})
    if unknown:
        raise UserError(f"data.columns: {unknown[0]} is not an item's field (map prompt, response or messages to "
                        "the dataset's columns)")
    if not names:
        have = set(dataset.column_names)
        names = {"messages": "messages"} if "messages" in have else {"prompt": "prompt", "response": "response"}
    check_columns(dataset, [(f"data.columns.{key}", column) for key, column in names.items()], path)
    rows = dataset.select_columns(list(names.values())).to_list()
    items = []
    for number, row in enumerate(rows, 1):
        item = {key: row[column] for key, column in names.items()}
        _check_item(item, f"data.path: {path} row {number}")
        items.append((number, item))
    if not items:
        raise UserError(f"data.path: {path} holds no rows")
    return items


def _check_item(item: Any, where: str) -> None:
    if not isinstance(item, dict):
        raise UserError(f"{where} is {type(item).__name__}, not an object with prompt and response or messages")
    if "messages" in item:
        messages = item["messages"]
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise UserError(f"{where}: messages must be a list of {{role, content}} objects with text values")
        if not any(m["role"] in ROLES_COUNTED for m in messages):
            raise UserError(f"{where}: no assistant message, so nothing for the loss (roles: "
                            f"{', '.join(m['role'] for m in messages)})")
        return
    missing = [key for key in ("prompt", "response") if not isinstance(item.get(key), str)]
    if missing:
        keys = ", ".join(item) or "none"
        raise UserError(f"{where} has no text {' and '.join(missing)}, nor messages (its keys: {keys}); give "
                        '{"prompt": ..., "response": ...} or {"messages": [{"role": ..., "content": ...}, ...]}')


class Encoder:
    """The recipe's tokenizer: a `tokenizers` JSON file, or a transformers tokenizer folder (with its chat
    template when it has one)."""

    def __init__(self, path: Path, eos: str | None) -> None:
        self.path = Path(path).expanduser()
        if self.path.is_file():
            from tokenizers import Tokenizer

            try:
                self.tokenizer: Any = Tokenizer.from_file(str(self.path))
            except Exception as exc:  # tokenizers raises a plain Exception
                raise UserError(f"data.tokenizer: {self.path} is not a tokenizers JSON file ({exc})") from None
            self.hf = False
        elif self.path.is_dir():
            self.tokenizer, self.hf = _transformers_tokenizer(self.path), True
        else:
            raise UserError(f"data.tokenizer: {self.path} does not exist (give a tokenizers JSON file or a "
                            "transformers tokenizer folder, written by save_pretrained)")
        self.eos = self._eos(eos)

    def _eos(self, eos: str | None) -> list[int]:
        """The ids appended after a response: `eos`'s token, else the transformers tokenizer's eos_token."""
        if eos is None:
            token = getattr(self.tokenizer, "eos_token_id", None) if self.hf else None
            return [] if token is None else [token]
        token = self.tokenizer.convert_tokens_to_ids(eos) if self.hf else self.tokenizer.token_to_id(eos)
        if token is None or (self.hf and token == self.tokenizer.unk_token_id):
            raise UserError(f"data.eos: {eos!r} is not a token of {self.path}")
        return [token]

    def encode(self, text: str, special: bool) -> list[int]:
        if self.hf:
            return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])
        return list(self.tokenizer.encode(text, add_special_tokens=special).ids)

    def vocabulary(self) -> tuple[str, ...]:
        """The tokens by id (the task's class names)."""
        if self.hf:
            return tuple(self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer)))))
        return tuple(self.tokenizer.id_to_token(i) or "" for i in range(self.tokenizer.get_vocab_size()))

    def files(self) -> dict[str, Path]:
        """The files the tokenizer was read from (for data.json's fingerprint)."""
        if not self.hf:
            return {"tokenizer": self.path}
        return {f"tokenizer/{name}": self.path / name for name in TOKENIZER_FILES if (self.path / name).is_file()}

    def record(self) -> dict[str, Any]:
        """What data.json's preprocessing holds of it: its path, and the vocabulary `predict --prompt` and
        `export --hf` use (vocabulary.run_codec): its tokenizers JSON file (a folder's tokenizer.json)."""
        record: dict[str, Any] = {"tokenizer_path": str(self.path)}
        file = self.path / "tokenizer.json" if self.hf else self.path
        if file.is_file():
            record.update(vocabulary="tokenizer", tokenizer=str(file))
        return record

    def has_chat_template(self) -> bool:
        return self.hf and bool(getattr(self.tokenizer, "chat_template", None))

    def render(self, messages: list[dict[str, str]], prompt: bool, where: str) -> str:
        """The chat template's text of `messages` (with the generation prompt after them: `prompt`); what the
        template refuses (its raise_exception) is a UserError naming the item."""
        from jinja2 import TemplateError  # a dependency of transformers' chat templates

        if not messages:
            return ""
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        except TemplateError as exc:
            raise UserError(f"{where}: the chat template of {self.path} refuses its messages: {exc}") from None


def _transformers_tokenizer(folder: Path) -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError("data.tokenizer: a tokenizer folder needs the Hugging Face transformers library, which "
                        "is not installed: pip install 'trainwright[hf]' (or give a tokenizers JSON file)") from None
    try:
        return transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"data.tokenizer: {folder} is not a tokenizer folder transformers can read ({exc})") from None


def prompt_response(encoder: Encoder, prompt: str, response: str) -> Example:
    """The prompt's tokens (labels -100), then the response's and the end-of-text token (counted)."""
    head = encoder.encode(prompt, special=True)
    tail = encoder.encode(response, special=False) + encoder.eos
    return Example(head + tail, [IGNORE_INDEX] * len(head) + tail)


def chat(encoder: Encoder, messages: list[dict[str, str]], where: str) -> Example:
    """The chat template's rendering of `messages`, cut where each message's rendering ends: the text an
    assistant message adds (after the template's generation prompt) counts, the rest is -100. A template
    whose rendering of the first messages is not the start of its rendering of more is a UserError."""
    if not encoder.has_chat_template():
        raise UserError(
            f"{where} is a messages item, but the tokenizer {encoder.path} has no chat template to render it; use "
            "a transformers tokenizer folder whose tokenizer_config.json (or chat_template.jinja) has one, set "
            "its chat_template, or give {prompt, response} items"
        )
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, message in enumerate(messages):
        counted = message["role"] in ROLES_COUNTED
        for text, counts in ((encoder.render(messages[:i], counted, where), False),
                             (encoder.render(messages[: i + 1], False, where), counted)):
            if not text.startswith(done):
                raise UserError(
                    f"{where}: the chat template of {encoder.path} renders the first {i} messages as text that does "
                    "not begin the rendering of more of them, so the assistant's tokens cannot be marked; use "
                    "{prompt, response} items, or a template that renders a conversation's turns one after another"
                )
            part = encoder.encode(text[len(done):], special=False)
            ids += part
            labels += part if counts else [IGNORE_INDEX] * len(part)
            done = text
    return Example(ids, labels)


def pack(examples: list[Example], context: int) -> list[Example]:
    """Consecutive examples, whole, in items of at most `context` tokens (a new item where the next does not
    fit); each example's first label is -100 (nothing is predicted across an example's start)."""
    packed: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    for example in examples:
        if ids and len(ids) + len(example.ids) > context:
            packed.append(Example(ids, labels))
            ids, labels = [], []
        ids += example.ids
        labels += [IGNORE_INDEX, *example.labels[1:]]
    if ids:
        packed.append(Example(ids, labels))
    return packed


def instructions(
    path: Path,
    tokenizer: Path,
    context: int = 512,
    packing: bool = False,
    val_fraction: float = 0.1,
    eos: str | None = None,
    split: str | None = None,
    columns: dict[str, str] | None = None,
) -> DataBundle:
    """An instruction data set (see the module's docstring)."""
    check_data_arguments({"context": context, "val_fraction": val_fraction})
    saved = Path(path).expanduser().is_dir()  # a datasets folder (load_split says when it is not one)
    if not saved and (split is not None or columns is not None):
        raise UserError(f"data.split and data.columns are for a saved datasets folder; {path} is not one (a JSONL "
                        "file's items have the fields prompt and response, or messages)")
    items = read_rows(Path(path).expanduser(), split, columns) if saved else read_items(path)
    encoder = Encoder(tokenizer, eos)
    examples = []
    for number, item in items:
        where = f"data.path: {Path(path).expanduser()} {'row' if saved else 'line'} {number}"
        example = (chat(encoder, item["messages"], where) if "messages" in item
                   else prompt_response(encoder, item["prompt"], item["response"]))
        if len(example.ids) > context:
            raise UserError(
                f"{where} is {len(example.ids)} tokens, more than data.context={context} (examples are never cut: "
                "the response's end would be lost); raise data.context (up to the model's own limit), or shorten "
                "or remove the item"
            )
        if not any(label != IGNORE_INDEX for label in example.labels[1:]):
            raise UserError(f"{where} has no response tokens to count (its response is empty)")
        examples.append(example)
    cut = int(len(examples) * (1.0 - val_fraction))
    if cut == 0 or cut == len(examples):
        raise UserError(f"data: {len(examples)} items make {cut} training and {len(examples) - cut} validation "
                        f"items with data.val_fraction={val_fraction}; give more items")
    train, val = examples[:cut], examples[cut:]
    if packing:
        train, val = pack(train, context), pack(val, context)
    counted = sum(sum(label != IGNORE_INDEX for label in e.labels[1:]) for e in examples)
    return DataBundle(
        train=InstructionSplit(train), val=InstructionSplit(val),
        task=Task("sequence", class_names=encoder.vocabulary()),
        sources={**(dataset_files(Path(path).expanduser()) if saved else {"items": Path(path).expanduser()}),
                 **encoder.files()},
        preprocessing={**encoder.record(), "context": context, "packing": packing,
                       "examples": len(examples), "train_examples": cut, "tokens": sum(len(e.ids) for e in examples),
                       "response_tokens": counted},
    )
