"""Hugging Face `datasets` folders (issue 28): a folder written by save_to_disk (a Dataset, or a DatasetDict with
splits) as the instructions data set's items, and as a plain data set (`hf_dataset`) by a column mapping for any
task; a missing column, a folder that is not a saved dataset and a split that does not exist are one message each."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch
import yaml

from reliability_helpers import user_error
from test_instructions import sums, tokenizer_folder
from trainwright.data.hf_datasets import hf_dataset
from trainwright.data.instructions import instructions
from trainwright.errors import UserError


def saved_sums(folder: Path, count: int = 20) -> Path:
    """`count` sums as a DatasetDict (train, test) with the columns question and answer."""
    rows = sums(count)
    columns = {"question": [r["prompt"] for r in rows], "answer": [r["response"] for r in rows]}
    table = datasets.Dataset.from_dict(columns)
    datasets.DatasetDict({"train": table, "test": table.select(range(4))}).save_to_disk(str(folder))
    return folder


def test_a_saved_split_gives_the_items_a_jsonl_file_gives(tmp_path):
    from test_instructions import write_jsonl

    tokenizer = tokenizer_folder(tmp_path / "tok")
    folder = saved_sums(tmp_path / "sums")
    from_folder = instructions(folder, tokenizer, context=16, val_fraction=0.25,
                               columns={"prompt": "question", "response": "answer"})
    from_file = instructions(write_jsonl(tmp_path / "d.jsonl", sums(20)), tokenizer, context=16, val_fraction=0.25)
    for split in ("train", "val"):
        got, expected = getattr(from_folder, split), getattr(from_file, split)
        assert len(got) == len(expected) and all(
            got[i]["input_ids"].equal(expected[i]["input_ids"]) and got[i]["labels"].equal(expected[i]["labels"])
            for i in range(len(got)))
    assert len(instructions(folder, tokenizer, context=16, split="test",
                            columns={"prompt": "question", "response": "answer"}, val_fraction=0.25).train) == 3


def test_a_saved_dataset_is_a_plain_data_set_by_a_column_mapping(tmp_path):
    table = datasets.Dataset.from_dict({
        "x": [float(i) for i in range(10)], "pair": [[i, -i] for i in range(10)],
        "label": datasets.ClassLabel(names=["even", "odd"]).str2int(["even", "odd"] * 5)},
    ).cast_column("label", datasets.ClassLabel(names=["even", "odd"]))
    table.save_to_disk(str(tmp_path / "rows"))
    bundle = hf_dataset(tmp_path / "rows", inputs=["x", "pair"], target="label")
    assert bundle.task.class_names == ("even", "odd") and len(bundle.train) == 8 and len(bundle.val) == 2
    features, labels = bundle.train[:8]
    assert features[3].tolist() == [3.0, 3.0, -3.0] and labels.tolist() == [0, 1] * 4
    value = hf_dataset(tmp_path / "rows", inputs=["x"], target="x", task="regression")
    assert value.train[:2][1].equal(torch.tensor([[0.0], [1.0]]))


def test_bad_folders_columns_and_splits_are_one_message_each(capsys, tmp_path):
    folder = saved_sums(tmp_path / "sums")
    tokenizer = tokenizer_folder(tmp_path / "tok")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hi")

    def refused(data: dict, *fragments: str) -> None:
        model = {"name": "hf", "architecture": "GPT2LMHeadModel",
                 "config": {"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 1, "vocab_size": 64}} \
            if data["name"] == "instructions" else {"name": "mlp", "in_features": 1, "hidden": [4], "out_features": 2}
        recipe = {"name": "rows", "data": {**data, "batch_size": 2}, "model": model,
                  "loss": {"name": "model" if data["name"] == "instructions" else "cross_entropy"},
                  "optimizer": {"name": "adamw", "lr": 0.01}, "logging": {"wandb": False}}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
        user_error(capsys, "train", tmp_path / "r.yaml", "--run-dir", tmp_path / "run", fragments=fragments)

    refused({"name": "hf_dataset", "path": str(folder), "inputs": ["questoin"], "target": "answer"},
            "data.inputs: ", "no column 'questoin'", "did you mean 'question'?")
    refused({"name": "hf_dataset", "path": str(tmp_path / "plain"), "inputs": ["x"], "target": "y"},
            "is not a folder written by datasets' save_to_disk", "notes.txt")
    refused({"name": "hf_dataset", "path": str(folder), "split": "tset", "inputs": ["x"], "target": "y"},
            "data.split: ", "no split 'tset'", "did you mean 'test'?")
    refused({"name": "instructions", "path": str(folder), "tokenizer": str(tokenizer)},
            "data.columns.prompt: ", "no column 'prompt'", "its columns: question, answer")


@pytest.mark.parametrize("columns", [{"prompt": "question", "respones": "answer"}])
def test_a_column_mapping_names_only_item_fields(tmp_path, columns):
    from trainwright.errors import UserError

    with pytest.raises(UserError, match="data.columns: respones is not an item's field"):
        instructions(saved_sums(tmp_path / "sums"), tokenizer_folder(tmp_path / "tok"), columns=columns)


def test_a_file_for_the_folder_and_a_text_target_for_numbers_are_one_message_each(tmp_path):
    table = datasets.Dataset.from_dict({"x": [0.0, 1.0, 2.0, 3.0], "word": ["a", "b", "a", "b"]})
    table.save_to_disk(str(tmp_path / "rows"))
    (tmp_path / "rows.txt").write_text("not a dataset")
    with pytest.raises(UserError, match=r"rows\.txt is a file, not a folder"):
        hf_dataset(tmp_path / "rows.txt", inputs=["x"], target="word")
    for task in ("binary", "regression"):
        with pytest.raises(UserError, match=f"column 'word' holds .*string.*, not numbers, which a {task} task needs"):
            hf_dataset(tmp_path / "rows", inputs=["x"], target="word", task=task)
