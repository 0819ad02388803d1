"""`trainwright export`: the whole model's weights of any checkpoint, full or sharded, as one safetensors
file, in one CPU process (no launcher, no process group); with `--hf`, a Hugging Face model's folder
(config.json and model.safetensors, by `save_pretrained`) that `from_pretrained` loads. A run with a peft
adapter exports the adapter alone in peft's format (a folder), and with `--hf` the merged model. Also finds and
reads the checkpoint for `predict --checkpoint`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from trainwright.checkpoint import retention
from trainwright.checkpoint.format import EMA_FILE, MANIFEST, SHARDED_EMA_DIR, read_recipe, read_train_state, verify
from trainwright.checkpoint.ties import retied, tied_aliases
from trainwright.checkpoint.weights import save_weights
from trainwright.errors import UserError
from trainwright.recipe import Recipe, validate
from trainwright.run.directory import RunDir
from trainwright.run.files import check_new_output, publish_dir, remove_tree, temporary_beside, warn


@dataclass(frozen=True)
class Exported:
    checkpoint: Path
    step: int
    tensors: int
    parameters: int


def export_weights(source: str | Path, out: str | Path, raw: bool = False) -> Exported:
    """Write the model weights of `source` (a checkpoint folder, or a run dir: its newest valid checkpoint)
    to `out`, which must not exist yet: the averaged ones of trainer.ema, if it kept them, unless `raw`."""
    out = Path(out)
    check_new_output(out, "--out")
    checkpoint = find_checkpoint(Path(source))
    saved = read_recipe(checkpoint)
    if saved.get("adapter") is not None:  # the weights alone need no recipe this trainwright reads
        return _export_adapter(checkpoint, validate(saved, str(checkpoint / "recipe.json")), out, raw)
    weights = checkpoint_weights(checkpoint, raw)
    _require_fit(checkpoint, weights, _recipe_model(checkpoint))
    step = read_train_state(checkpoint).step
    save_weights(weights, out, {"step": str(step), "exported_from": str(checkpoint)}, replace=False)
    return Exported(checkpoint, step, len(weights), sum(t.numel() for t in weights.values()))


def export_hf(source: str | Path, out: str | Path, raw: bool = False) -> Exported:
    """Write the Hugging Face model of `source` (a run with `model.name: hf`) to the folder `out` with
    `save_pretrained`: its config.json and weights, tied weights as transformers ties them, and the run's
    tokenizer files where it has them (vocabulary.tokenizer_files), so that a run from the folder generates."""
    out = Path(out)
    check_new_output(out, "--out")
    checkpoint = find_checkpoint(Path(source))
    recipe = validate(read_recipe(checkpoint), str(checkpoint / "recipe.json"))
    if recipe.model.name != "hf":
        raise UserError(
            f"--hf: the model of {checkpoint} is '{recipe.model.name}', not a Hugging Face model (model.name: hf); "
            "export its weights as one safetensors file without --hf"
        )
    from trainwright.components import build_model, seeded_model  # torch and transformers: only now

    weights = checkpoint_weights(checkpoint, raw)
    if recipe.adapter is not None:
        from trainwright.models.adapters import restored  # peft: only for runs with an adapter

        base = seeded_model(recipe)
        model = restored(recipe, base, checkpoint, weights).merge_and_unload()  # the merged model, the base's names
    else:
        model = build_model(recipe)
        _require_fit(checkpoint, weights, model)
        model.load_state_dict(retied(weights, tied_aliases(model)))
    _publish_pretrained(model, out, lambda folder: _copy_tokenizer(recipe, checkpoint, folder, out))
    return Exported(
        checkpoint, read_train_state(checkpoint).step, len(weights), sum(t.numel() for t in weights.values())
    )


def _publish_pretrained(model: Any, out: Path, extra: Callable[[Path], None] | None = None) -> None:
    """A transformers model's `save_pretrained` into a temporary folder beside `out` (plus what `extra` adds),
    then moved to `out` (which must not exist); the temporary folder, trainwright's own, is removed on any failure."""
    tmp = temporary_beside(out, folder=True)
    try:
        model.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
        publish_dir(tmp, out)
    except BaseException:
        remove_tree(tmp)
        raise


def _copy_tokenizer(recipe: Recipe, checkpoint: Path, folder: Path, out: Path) -> None:
    """The run's tokenizer files into `folder`, the export to `out` being written (the run's data.json is in
    the run dir of `checkpoint`)."""
    from trainwright.data.vocabulary import tokenizer_files

    data_file = checkpoint.parent.parent / "data.json"
    record = json.loads(data_file.read_text()) if data_file.is_file() else None
    for name, path in tokenizer_files(recipe, record).items():
        if path.is_file():
            shutil.copyfile(path, folder / name)
        else:
            warn(f"the run's tokenizer file {path} is gone: {out} has no {name}")


def _export_adapter(checkpoint: Path, recipe: Recipe, out: Path, raw: bool) -> Exported:
    """A run with an adapter: the adapter alone, in peft's own format (adapter_model.safetensors and
    adapter_config.json in the folder `out`), which `PeftModel.from_pretrained(base, out)` loads."""
    from trainwright.components import seeded_model
    from trainwright.models.adapters import restored  # peft: only for runs with an adapter

    weights = checkpoint_weights(checkpoint, raw)
    _publish_pretrained(restored(recipe, seeded_model(recipe), checkpoint, weights), out)
    step = read_train_state(checkpoint).step
    return Exported(checkpoint, step, len(weights), sum(t.numel() for t in weights.values()))


def checkpoint_weights(folder: Path, raw: bool = False) -> dict[str, torch.Tensor]:
    """The whole model's weights of a verified checkpoint, full or sharded; with trainer.ema its averaged
    parameters (ema.safetensors) in place of the raw ones, unless `raw`."""
    from trainwright.checkpoint.sharded import consolidated_part, consolidated_weights  # torch's DCP: a second

    weights = consolidated_weights(folder)
    if not raw and (folder / EMA_FILE).is_file():
        weights.update(load_file(folder / EMA_FILE))
    elif not raw and (folder / SHARDED_EMA_DIR).is_dir():
        weights.update(consolidated_part(folder / SHARDED_EMA_DIR))
    return weights


def _recipe_model(checkpoint: Path) -> nn.Module | None:
    """The model of the checkpoint's recipe (for a sequence task, with the vocabulary its run recorded), on
    the meta device: its tensors' names, shapes and dtypes without their memory (a pretrained Hugging Face
    model is loaded: transformers loads no weights onto the meta device). None: a model that needs its run's
    data.json, of a checkpoint away from its run dir."""
    from trainwright.components import build_model  # torch and transformers: only now
    from trainwright.data.bundle import Task

    recipe = validate(read_recipe(checkpoint), str(checkpoint / "recipe.json"))
    run = RunDir(checkpoint.parent.parent)
    record = run.read_json(run.data_file) if run.holds_run() else None
    task = Task.from_record(record["task"]) if isinstance(record, dict) and "task" in record else None
    device = "cpu" if recipe.model.kwargs().get("pretrained") else "meta"
    try:
        with torch.device(device):
            return build_model(recipe, task)
    except UserError:
        if task is not None:
            raise
        warn(f"{checkpoint} is not in its run dir, whose data.json its model needs: its tensors are exported unchecked")
        return None


def _require_fit(checkpoint: Path, weights: dict[str, torch.Tensor], model: nn.Module | None) -> None:
    """Refuse weights that the checkpoint's own model could not load (see expected.weights_problem)."""
    from trainwright.checkpoint.expected import weights_problem

    if model is not None and (problem := weights_problem(weights, model, f"checkpoint {checkpoint}")):
        raise UserError(f"{problem}: it does not fit its recipe's model; export another checkpoint")


def find_checkpoint(source: Path) -> Path:
    """`source` if it is a checkpoint folder, else the newest valid checkpoint of the run dir `source`."""
    if not source.is_dir():
        raise UserError(f"{source} is not a checkpoint folder or a run dir")
    if (source / MANIFEST).is_file():
        problem = verify(source)
        if problem is not None:
            raise UserError(f"checkpoint {source} cannot be used: {problem}")
        return source
    choice = retention.newest_valid(RunDir(source).checkpoints)
    for folder, problem in choice.damaged:
        warn(f"checkpoint {folder} is damaged ({problem}); skipping it")
    if choice.folder is None:
        raise UserError(f"{source} holds no valid checkpoint (a run dir's checkpoints/ or a checkpoint folder)")
    return choice.folder
