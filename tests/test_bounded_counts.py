"""Every count a user, a recipe or a file gives is bounded before any work (issue 26, item 5): `predict
--length`, `cv --folds`, a recipe that expands without bound through YAML aliases or nests without end.
Generation gives each token as it comes and feeds the model at most its context. (A checkpoint's position
beyond its epoch: tests/test_crafted_checkpoints.py.)"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from reliability_helpers import HEART, TINY, user_error
from trainwright.finished.generation import generate, text_pieces


class Counting(nn.Module):
    """A 'language model' over 4 tokens that always favours token (last + 1) % 4; counts its calls and the
    longest input it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.calls, self.longest = 0, 0

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.longest = max(self.longest, tokens.shape[1])
        return nn.functional.one_hot((tokens + 1) % 4, 4).float() * 10


def test_generation_gives_each_token_as_it_comes_and_feeds_at_most_the_context():
    model = Counting()
    tokens = generate(model, torch.tensor([0, 1, 2]), length=10**8, temperature=0, context=5)
    assert list(itertools.islice(tokens, 12)) == [3, 0, 1, 2] * 3
    assert model.calls == 12 and model.longest == 5  # nothing generated ahead, the prefix cut to the context
    one = generate(Counting(), torch.tensor([1]), length=3, temperature=0, context=1)
    assert list(one) == [2, 3, 0]


def test_text_pieces_wait_for_a_character_cut_between_tokens():
    text = "dé€f\nok"
    ids = list(text.encode())

    def decode(part: list[int]) -> str:
        return bytes(part).decode("utf-8", errors="replace")

    pieces = list(text_pieces(ids, decode))
    assert "".join(pieces) == text and not any("\ufffd" in piece for piece in pieces)
    assert pieces[:2] == ["d", "é"]  # one piece per finished character


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory) -> Path:
    from trainwright.cli import main

    run_dir = tmp_path_factory.mktemp("heart") / "run"
    assert main(["train", str(HEART), *TINY, "--run-dir", str(run_dir)]) == 0
    return run_dir


def test_predict_length_is_bounded_before_any_work(capsys, heart_run):
    user_error(capsys, "predict", heart_run, "--prompt", "x", "--length", "100000000",
               fragments=("--length 100000000: give 1 to 100,000 tokens",))


@pytest.mark.parametrize(("folds", "fragments"), [
    ("1000000000", ("--folds 1,000,000,000: a cv has at most 10,000 folds",)),
    ("5000", ("cv.folds=5000 is more folds than the", "items to split")),
])
def test_cv_folds_are_bounded_before_any_fold_is_made(capsys, tmp_path, folds, fragments):
    user_error(capsys, "cv", HEART, *TINY, "--folds", folds, "--run-dir", tmp_path / "cv", fragments=fragments)
    assert not (tmp_path / "cv").exists()


LAUGHS = "name: laughs\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n" for i in range(10)
)


@pytest.mark.parametrize(("text", "problem"), [
    (LAUGHS, "it holds more than 1,000,000 values once its aliases are expanded"),
    ("name: deep\nx: " + "[" * 5000 + "]" * 5000 + "\n", "it nests sections or lists more than 100 deep"),
    ("name: deep\nx: " + "[" * 101 + "]" * 101 + "\n", "it nests sections or lists more than 100 deep"),
    ("name: itself\nx: &x [1, *x]\n", "an alias holds itself"),
])
def test_a_recipe_that_expands_without_bound_is_refused(capsys, tmp_path, text, problem):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    for options in (["check"], ["train", "--run-dir", tmp_path / "run"], ["cv", "--run-dir", tmp_path / "cv"]):
        user_error(capsys, options[0], recipe, *options[1:], fragments=(f"{recipe}: refused: {problem}",))
    assert not (tmp_path / "run").exists() and not (tmp_path / "cv").exists()


def test_aliases_within_the_bounds_still_work():
    from trainwright.recipe import parse_yaml

    nested = "x: " + "[" * 100 + "]" * 100
    assert parse_yaml("a: &a [1, 2]\nb: [*a, *a]\n" + nested) == {"a": [1, 2], "b": [[1, 2], [1, 2]],
                                                                   "x": parse_yaml(nested)["x"]}


@pytest.mark.parametrize(("override", "fragment"), [
    ("data.num_workers=1000000", "num_workers must be 0 to 128"),
    ("data.prefetch_factor=1000000000", "prefetch_factor"),
])
def test_worker_counts_are_bounded_before_any_process_starts(capsys, override, fragment):
    user_error(capsys, "check", HEART, override, fragments=(fragment,))


def test_lr_find_steps_are_bounded_before_its_rates_are_made(capsys, tmp_path):
    user_error(capsys, "lr-find", HEART, "--steps", "1000000000", "--plot", tmp_path / "lr.png",
               fragments=("--steps 1,000,000,000: the range test takes at most 100,000 steps",))
