"""Using a trained run: `load_run` gives its recipe and model with the trained weights; `Run.predict` on
new inputs (tensors, DataFrames, files, images), `Run.evaluate` and `Run.predict_split` on its own data.
The CLI's eval, predict and plot use the same functions. Under a launcher (`load_run(..., launched=True)`)
the launch's processes share evaluation and prediction (launched.py).

New inputs are read by the data set's reader (data/inputs.py) with the statistics recorded in the run
(data.json), so predicting needs neither the training data nor a recomputation from the new inputs.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import nn

from trainwright.checkpoint.expected import weights_problem
from trainwright.checkpoint.format import read_train_state, step_of
from trainwright.checkpoint.retention import step_dirs
from trainwright.checkpoint.safetensors_header import header_problem
from trainwright.checkpoint.ties import retied, tied_aliases
from trainwright.components import build_data, build_model, build_scoring, input_reader, seeded_model
from trainwright.data.bundle import DataBundle, Task, split_size
from trainwright.data.fingerprint import check_same_data, data_record
from trainwright.data.input_batch import InputBatch
from trainwright.data.loading import iterate
from trainwright.data.tasks import kind_of
from trainwright.data.vocabulary import no_vocabulary, run_codec
from trainwright.distributed.launched import gathered_rows, launched_processes, share
from trainwright.distributed.processes import Processes, launch_rank
from trainwright.errors import UserError
from trainwright.finished.export import checkpoint_weights, find_checkpoint
from trainwright.finished.predictions import Predictions
from trainwright.recipe import Recipe
from trainwright.run.directory import RunDir
from trainwright.run.files import warn
from trainwright.step import TARGETS_KEY
from trainwright.training.evaluation import EVAL_BATCH_SIZE, Scoring, evaluate

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Run:
    """A trained run: its recipe, its model with the trained weights (in eval mode on `device`), and where
    the weights come from (`step`); `processes`: the processes that share evaluation and prediction (each
    method returns the whole result on every one of them)."""

    run_dir: RunDir
    recipe: Recipe
    model: nn.Module
    step: int | None
    device: torch.device
    allow_data_change: bool = False
    _record: dict[str, Any] | None = field(default=None, repr=False)  # data.json
    processes: Processes = field(default_factory=Processes.single, repr=False)

    @cached_property
    def data(self) -> DataBundle:
        """The run's data set, built from its recipe and checked against data.json (for eval and predict -n)."""
        bundle = build_data(self.recipe)
        check_same_data(self._record, data_record(bundle, self._record), self.run_dir.path, self.allow_data_change)
        return bundle

    @cached_property
    def task(self) -> Task:
        """Recorded in data.json; for runs older than that record, taken from the data set."""
        if self._record and "task" in self._record:
            return Task.from_record(self._record["task"])
        return self.data.task

    @cached_property
    def scoring(self) -> Scoring:
        return build_scoring(self.recipe, self.task)

    def evaluate(self, split: str | None = None) -> dict[str, float]:
        """Metrics on `split` ('val' or 'test'; default: test, or val where the data set has no test split)."""
        split = split or ("test" if self.data.test is not None else "val")
        dataset = {"val": self.data.val, "test": self.data.test}.get(split)
        if dataset is None:
            raise UserError(f"split must be 'val' or 'test' (a data set with a test split), got {split!r}")
        metrics = evaluate(self.model.to(self.processes.device), dataset, self.scoring, self.processes)
        self.model.to(self.device)
        return {f"{split}/{key}": value for key, value in metrics.items()}

    @torch.no_grad()
    def outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's outputs for a batch of prepared inputs, as floats on the CPU."""
        return self.model(inputs.to(self.device)).float().cpu()

    def predict(self, inputs: Any, batch_size: int = EVAL_BATCH_SIZE) -> Predictions:
        """Predictions for `inputs`: a tensor of prepared model inputs, a pandas DataFrame (the training's
        columns), a file or folder path (or a glob pattern of image files), a PIL image, or a list of image paths
        or PIL images."""
        if isinstance(inputs, torch.Tensor):
            ids = [str(i) for i in range(len(inputs))]
            return self._predictions(InputBatch(ids, inputs, ids.__getitem__))
        return _joined(list(self.predict_stream(inputs, batch_size)), self.task, self.scoring.output_kind)

    def predict_stream(self, source: Any, batch_size: int = EVAL_BATCH_SIZE) -> Iterator[Predictions]:
        """Predictions `batch_size` items at a time (bounded memory for large files)."""
        if isinstance(source, str):
            source = Path(source)
        if isinstance(source, Path) and not source.exists() and not glob.has_magic(str(source)):
            raise UserError(f"--input {source} does not exist")
        reader = input_reader(self.recipe)
        for batch in reader(source, self._record or {}, batch_size):
            yield self._predictions(batch)

    @torch.no_grad()
    def predict_split(self, count: int | None = None) -> tuple[torch.Tensor | dict[str, torch.Tensor], Predictions]:
        """(inputs, predictions) for the first `count` items of the evaluation split (actual values known);
        the inputs of batches of named tensors are those tensors but the targets."""
        self._require_read_outputs()
        if kind_of(self.task).per_position:
            generates = run_codec(self.recipe, self._record) is not None
            raise UserError(
                f"{self.run_dir.path} is a sequence model (a class per position): "
                + ("generate text from it with `trainwright predict RUN --prompt TEXT`, or " if generates else "")
                + "score its split with `trainwright eval RUN`"
            )
        split = self.data.eval_split
        size = split_size(split) if count is None else min(count, split_size(split))
        start, stop = share(size, self.processes)
        part = None
        if stop > start:  # this process's share, in order
            batches = list(iterate(split, torch.arange(start, stop).split(EVAL_BATCH_SIZE)))
            score = self.scoring.step.scorer(self.model, batches[0], self.device)
            scored = [score(batch) for batch in batches]
            inputs = [{k: v for k, v in b.items() if k != TARGETS_KEY} if isinstance(b, Mapping) else b[0]
                      for b in batches]
            part = (_joined_rows(inputs), *(_joined_rows([getattr(s, key).cpu() for s in scored])
                                            for key in ("outputs", "targets")))
        parts = [p for p in self.processes.gather(part) if p is not None]
        inputs, outputs, targets = (_joined_rows([p[i] for p in parts]) for i in range(3))
        actual = self.task.decode(targets) if kind_of(self.task).values else targets
        ids = [str(i) for i in range(size)]
        predictions = Predictions(ids, outputs, self.task, self.scoring.output_kind, actual, self.data.describe_input)
        return inputs, predictions

    def generate(self, prompt: str, length: int = 200, temperature: float = 0.8, seed: int = 0) -> str:
        """The text a language model (a sequence task: `gpt`, a transformers causal LM) writes after `prompt`:
        `length` tokens sampled at `temperature` (0: greedy), encoded and decoded with the run's vocabulary
        (vocabulary.run_codec)."""
        return "".join(self.generate_stream(prompt, length, temperature, seed))

    def generate_stream(self, prompt: str, length: int = 200, temperature: float = 0.8, seed: int = 0) -> Iterator[str]:
        """`generate`, piece by piece as the tokens are sampled: the prompt first, then the text of each new token."""
        from trainwright.finished.generation import MAX_LENGTH, generate, model_context, text_pieces, vocabulary_size

        if not 1 <= length <= MAX_LENGTH:  # (a count checked before any work)
            raise UserError(f"--length {length}: give 1 to {MAX_LENGTH:,} tokens")
        if not 0 <= temperature < math.inf:
            raise UserError(f"--temperature: must be 0 (greedy) or more, got {temperature}")
        if not kind_of(self.task).per_position:
            raise UserError(
                f"--prompt is for language models (a sequence task, e.g. data: text); {self.run_dir.path} is a "
                f"{self.task.kind} run: predict on it with --input, or without --prompt"
            )
        codec = run_codec(self.recipe, self._record)
        if codec is None:
            raise UserError(f"--prompt: {no_vocabulary(self.run_dir.path, self.recipe)}")
        if not prompt:
            raise UserError("--prompt is empty: give the text to go on from, e.g. --prompt 'def '")
        context = model_context(self.model) or int(self.recipe.data.kwargs().get("context", 128))
        ids = torch.from_numpy(codec.encode(prompt))
        if not len(ids):
            raise UserError(f"--prompt {prompt!r} is no token of the run's vocabulary: give more text")
        size = vocabulary_size(self.model)
        if size is not None and int(ids.max()) >= size:
            raise UserError(
                f"--prompt {prompt!r} holds token id {int(ids.max())}, but the model reads {size} token ids: "
                "its tokenizer and the model do not fit (give model.config.vocab_size at least the tokenizer's size)"
            )
        yield prompt
        yield from text_pieces(generate(self.model, ids, length, temperature, context, seed), codec.decode)

    def _require_read_outputs(self) -> None:
        """A run whose model scores itself (scored_by_model) has outputs nothing reads: predicting is refused."""
        if kind_of(self.task).scored_by_model:
            raise UserError(
                f"{self.run_dir.path} is a scored_by_model run (its model computes its own loss): its outputs have "
                "no meaning to predict with; score its split with `trainwright eval RUN`"
            )

    def _predictions(self, batch: InputBatch, describe: bool = True) -> Predictions:
        self._require_read_outputs()
        start, stop = share(len(batch.inputs), self.processes)  # each process its slice of the batch
        part = self.outputs(batch.inputs[start:stop]) if stop > start else torch.empty(0)
        return Predictions(
            batch.ids, gathered_rows(part, self.processes), self.task, self.scoring.output_kind, batch.actual,
            batch.describe if describe else None,
        )


def _joined_rows(parts: list[Any]) -> Any:
    """Row blocks (tensors, or mappings of tensors) joined in order."""
    if isinstance(parts[0], Mapping):
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}
    return torch.cat(parts)


def _joined(parts: list[Predictions], task: Task, output_kind: str) -> Predictions:
    """Several batches' predictions as one."""
    actuals = [p.actual for p in parts if p.actual is not None]
    actual = torch.cat(actuals) if len(actuals) == len(parts) else None
    ids = [item for p in parts for item in p.ids]
    describers = [(len(p), p.describe) for p in parts]

    def describe(index: int) -> str:
        for size, part in describers:
            if index < size:
                return part(index) if part else ids[index]
            index -= size
        raise IndexError(index)

    return Predictions(ids, torch.cat([p.outputs for p in parts]), task, output_kind, actual, describe)


def load_run(
    run_dir: str | Path | RunDir, checkpoint: str | Path | None = None, device: str = "cpu",
    allow_data_change: bool = False, raw: bool = False, launched: bool = False,
) -> Run:
    """A trained run: its final weights (model.safetensors), or with `checkpoint` ('latest' or a checkpoint
    folder) a checkpoint's, e.g. of a run that has not finished. `device`: 'cpu', 'cuda' or 'auto'. With
    trainer.ema these are the averaged weights; `raw`: the raw ones instead. Says on stderr which step the
    weights are from. `launched`: under a launcher, the launch's processes share its evaluation and
    prediction (each on its own GPU where `device` is CUDA)."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir.existing(run_dir)
    recipe, record = run.recipe(), run.read_json(run.data_file)
    model = build_model(recipe, Task.from_record(record["task"]) if record and "task" in record else None)
    if checkpoint is None:
        source, weights, step = _final_weights(run, raw)
    else:
        source = find_checkpoint(run.path if str(checkpoint) == "latest" else Path(checkpoint))
        weights, step = checkpoint_weights(source, raw), read_train_state(source).step
        if recipe.adapter is not None:  # the checkpoint holds the adapter alone: merged into its base here
            from trainwright.models.adapters import restored

            weights = restored(recipe, seeded_model(recipe), source, weights).merge_and_unload().state_dict()
        _note(f"using the weights of checkpoint step {step} ({source})")
    if problem := weights_problem(weights, model, str(source)):
        raise UserError(
            f"{problem}: it does not fit the run's model; train the run again to write its final weights from its "
            "newest checkpoint, or use --checkpoint with another checkpoint"
        )
    model.load_state_dict(retied(weights, tied_aliases(model)))
    model.eval()
    target = _device(device)
    processes = launched_processes(target) if launched else Processes.single()
    if processes.world_size > 1 and target.type == "cuda":
        target = processes.device  # this process's GPU
    return Run(run, recipe, model.to(target), step, target, allow_data_change, record, processes)


def _note(message: str) -> None:
    """A note on stderr, said once under a launcher (by the main process)."""
    if launch_rank() == 0:
        warn(message)


def _device(name: str) -> torch.device:
    if name not in DEVICES:
        raise UserError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is available here; use --device cpu (or auto)")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def _final_weights(run: RunDir, raw: bool = False) -> tuple[Path, dict[str, torch.Tensor], int | None]:
    """The run's model.safetensors (`raw`: model_raw.safetensors, where trainer.ema averaged the weights) and
    its step; a run that has not finished says so and offers --checkpoint."""
    newest = max((step_of(folder) for folder in step_dirs(run.checkpoints)), default=None)
    if not run.model_file.is_file() and run.completed_summary() is None and newest is not None:
        raise UserError(
            f"{run.path} has not finished training (it has no model.safetensors yet); pass --checkpoint latest to "
            f"use its newest checkpoint (step {newest}), or run `trainwright train` again to finish it"
        )
    weights_file = run.require_model()
    if raw and run.raw_model_file.is_file():
        weights_file = run.raw_model_file
    if problem := header_problem(weights_file):  # checked whole before safetensors trusts it
        raise UserError(f"{weights_file} is damaged: {problem}")
    try:
        with safe_open(str(weights_file), "pt") as file:
            recorded = (file.metadata() or {}).get("step")
        weights = load_file(weights_file)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{weights_file} is damaged: {str(exc).splitlines()[0]}") from None
    step = int(recorded) if recorded and recorded.isdigit() else None
    note = f"using the weights of step {step} ({weights_file})"
    if newest is not None and step is not None and newest > step:
        note += f"; the run has trained on to step {newest} since and is not finished (train it again to complete it)"
    _note(note)
    return weights_file, weights, step
