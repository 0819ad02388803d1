"""Adapters through peft (the optional extra trainwright[finetune]; imported only by recipes with an `adapter`
section): the recipe's base model wrapped by `peft.get_peft_model`, so that only the adapter trains.

A run with an adapter checkpoints only what trains (the adapter's weights, their optimizer state); the
frozen base is built again from the recipe on resume, and the run's data.json records it (`base`: the
files of its `pretrained` folder, or the sha256 of its weights as built) so that a resume onto a changed
base is refused. The final model.safetensors holds the merged weights under the base's own names."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainwright.checkpoint.ties import retied, tied_aliases, untied
from trainwright.data.fingerprint import file_fingerprint
from trainwright.errors import UserError, did_you_mean
from trainwright.recipe import AdapterConfig, Recipe

if TYPE_CHECKING:
    from peft import PeftModel

_SET_BY_TRAINWRIGHT = ("peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode",
                       "auto_mapping", "peft_version")


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise UserError(
            "adapter: peft is not installed; install the optional extra: pip install 'trainwright[finetune]'"
        ) from None
    return peft


def peft_config(config: AdapterConfig) -> Any:
    """The peft config of the recipe's `adapter` section: `name` is the peft kind (lora, loha, ia3, ...),
    the other keys its settings, checked against the config class's fields."""
    peft = _peft()
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    kinds = {str(kind.value).lower(): cls for kind, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    cls = kinds.get(config.name.lower())
    if cls is None:
        raise UserError(f"adapter.name: peft has no adapter '{config.name}'{did_you_mean(config.name.lower(), kinds)} "
                        f"(for instance: lora, loha, lokr, ia3, adalora; peft {peft.__version__})")
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in _SET_BY_TRAINWRIGHT]
    for key in config.kwargs():
        if key not in fields:
            raise UserError(f"adapter.{key}: no setting of peft's {cls.__name__}{did_you_mean(key, fields)} "
                            f"(it takes: {', '.join(fields)})")
    try:
        return cls(**config.kwargs())
    except (TypeError, ValueError) as exc:
        raise UserError(f"adapter: peft's {cls.__name__} refuses {config.kwargs()}: {exc}") from None


def apply_adapter(config: AdapterConfig, model: nn.Module) -> PeftModel:
    """`model` wrapped by peft with the recipe's adapter; its base frozen, the adapter training."""
    settings = peft_config(config)
    _check_targets(settings, model)
    try:
        return _peft().get_peft_model(model, settings)
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"adapter: peft cannot apply '{config.name}' to this model: {exc}") from None


def _check_targets(settings: Any, model: nn.Module) -> None:
    """Each name of a list `target_modules` must name modules (their name, or the end of it after a dot)."""
    targets = getattr(settings, "target_modules", None)
    if not isinstance(targets, (list, set, tuple)):
        return  # a regular expression, 'all-linear' or peft's own default for the architecture: peft checks it
    names = [name for name, _ in model.named_modules() if name]
    ends = {name.rpartition(".")[2] for name in names}
    for target in sorted(targets):
        if not any(name == target or name.endswith(f".{target}") for name in names):
            raise UserError(
                f"adapter.target_modules: '{target}' names no module of the model{did_you_mean(target, ends)} "
                f"(its module names end in: {', '.join(sorted(ends)[:20])}{' ...' if len(ends) > 20 else ''})"
            )


def base_record(recipe: Recipe, base: nn.Module, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """What identifies the base model: each file of its `pretrained` folder (size, mtime, sha256; the sha256
    of `previous` is reused for a file whose size and mtime are unchanged), or, without one, the sha256 of
    its weights as built."""
    pretrained = recipe.model.kwargs().get("pretrained")
    if pretrained is not None:
        folder = Path(pretrained).absolute()
        if not folder.is_dir():
            raise UserError(f"model.pretrained: the base model folder {folder} does not exist")
        before = (previous or {}).get("files", {})
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        rel = [str(p.relative_to(folder)) for p in files]
        return {"pretrained": str(folder), "files": {r: file_fingerprint(p, before.get(r)) for r, p in zip(rel, files)}}
    digest = hashlib.sha256()
    for name, tensor in base.state_dict().items():
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return {"sha256": digest.hexdigest()}


def check_same_base(saved: dict[str, Any] | None, current: dict[str, Any], where: Path) -> None:
    """Refuse to resume onto a base model other than the one the adapter trained on."""
    if saved is None or saved == current:
        return
    if "files" in saved and "files" in current:
        changed = sorted(
            name for name in saved["files"].keys() | current["files"].keys()
            if (saved["files"].get(name) or {}).get("sha256") != (current["files"].get(name) or {}).get("sha256")
        )
        if not changed and saved["pretrained"] == current["pretrained"]:
            return
        what = f"{current['pretrained']}: {', '.join(changed[:5]) or 'its path'} changed"
    else:
        what = "its weights as built differ (sha256)"
    raise UserError(
        f"the base model differs from the one the adapter in {where} was trained on ({what}); the checkpoints "
        "hold only the adapter, so they resume only onto the same base: restore it, or start over with --restart"
    )


Weights = dict[str, torch.Tensor]


def merger(recipe: Recipe, build_base: Callable[[], nn.Module]) -> Callable[[Weights], Weights]:
    """A function from the adapted model's whole state dict to the merged weights under the base's own names
    (peft's merge_and_unload on a CPU copy built again; main process only)."""

    def merged(weights: Weights) -> Weights:
        model = apply_adapter(recipe.adapter, build_base())  # type: ignore[arg-type]
        model.load_state_dict(retied(weights, tied_aliases(model)))
        base = model.merge_and_unload()
        return untied(base.state_dict(), tied_aliases(base))

    return merged


def restored(recipe: Recipe, base: nn.Module, checkpoint: Path, weights: dict[str, torch.Tensor]) -> PeftModel:
    """The adapted model of a run from a checkpoint's weights (the adapter's alone). `base`: the recipe's model
    built again as training built it (components.seeded_model: a base without `pretrained` is its seeded
    weights), checked against the run's record of it when the run dir holds one."""
    run_dir = checkpoint.parent.parent
    saved = (_read_json(run_dir / "data.json") or {}).get("base")
    check_same_base(saved, base_record(recipe, base, saved), run_dir)
    model = apply_adapter(recipe.adapter, base)  # type: ignore[arg-type]
    frozen = {name for name, param in model.named_parameters() if not param.requires_grad}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or set(missing) - frozen - set(tied_aliases(model)):
        raise UserError(f"{checkpoint} does not fit the run's adapted model (missing {sorted(set(missing) - frozen)}, "
                        f"unexpected {sorted(unexpected)})")
    return model


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text()) if path.is_file() else None
