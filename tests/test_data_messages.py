"""Data files that are damaged or not what they seem are said to be so (issue 26, item 9): a tar shard cut
short in the middle of a member is 'truncated' (not a sample without a .cls member); text that is not
UTF-8 says how many bytes were replaced, and one that is mostly not text is refused."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
import webdataset as wds
import yaml

from reliability_helpers import user_error
from trainwright.data.text import text
from trainwright.errors import UserError


def test_a_shard_cut_short_in_a_member_is_called_truncated(capsys, tmp_path):
    for split in ("train", "val"):
        with wds.TarWriter(str(tmp_path / f"{split}-00.tar")) as writer:
            for number in range(8):
                writer.write({"__key__": f"{number:06d}", "npy": np.zeros(64, dtype=np.float32), "cls": number % 2})
    shard = tmp_path / "train-00.tar"
    with tarfile.open(shard) as tar:
        last = [member for member in tar.getmembers() if member.name.endswith(".npy")][-1]
    shard.write_bytes(shard.read_bytes()[: last.offset_data + 100])  # cut inside the last sample's .npy
    recipe = {
        "name": "cut", "data": {"name": "shards", "root": str(tmp_path), "class_names": ["a", "b"], "batch_size": 4},
        "model": {"name": "mlp", "in_features": 64, "hidden": [8], "out_features": 2},
        "loss": {"name": "cross_entropy"}, "optimizer": {"name": "sgd", "lr": 0.1}, "logging": {"wandb": False},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    message = user_error(capsys, "train", tmp_path / "recipe.yaml", "--run-dir", tmp_path / "run",
                         fragments=(f"data.root: {shard} is truncated: its member 000007.npy needs 384 bytes",
                                    "copy the shard again or remove it"))
    assert "has no .cls member" not in message


@pytest.fixture
def cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRAINWRIGHT_CACHE", str(tmp_path / "cache"))


def test_text_that_is_not_utf8_says_how_many_bytes_were_replaced(capsys, tmp_path, cache):
    corpus = tmp_path / "latin.txt"
    corpus.write_bytes("un caf\xe9 cr\xe8me, ".encode("latin-1") * 50)  # two latin-1 bytes per 15
    bundle = text(corpus, context=8)
    assert "\ufffd" in bundle.task.class_names
    err = capsys.readouterr().err
    assert f"data.path: 100 bytes of the text are not UTF-8 (the first at byte 6 of {corpus})" in err
    assert "data.vocabulary=bytes" in err


def test_a_binary_file_is_not_read_as_text(tmp_path, cache):
    corpus = tmp_path / "random.bin"
    corpus.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(UserError, match=rf"bytes \(\d+%\) are not UTF-8 text \(the first at byte \d+ of {corpus}\): "
                                        "is it a binary file"):
        text(corpus, context=8)
    assert text(corpus, context=8, vocabulary="bytes").task.kind == "sequence"  # as bytes it is fine


def test_utf8_text_is_read_without_a_word(capsys, tmp_path, cache):
    corpus = tmp_path / "utf8.txt"
    corpus.write_text("un café crème, " * 50, encoding="utf-8")
    text(corpus, context=8)
    assert capsys.readouterr().err == ""
