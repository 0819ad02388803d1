"""The files trainwright ships beside its code: recipes, Accelerate launch configs and sbatch scripts.

An installed wheel holds them in the package (trainwright/shipped/, copied there by setup.py's build step);
an editable checkout reads them where they live, at the top of the checkout. `trainwright ls` lists them,
`trainwright cp` copies one out, and `train`, `check`, `cv` and `lr-find` take a shipped recipe by name."""

from __future__ import annotations

import shutil
from pathlib import Path

from trainwright.errors import UserError, did_you_mean

FOLDERS = ("recipes", "accelerate_configs", "slurm")
_PACKAGE = Path(__file__).resolve().parents[1]  # the trainwright package


def shipped_root() -> Path:
    """The folder holding recipes/, accelerate_configs/ and slurm/: the package's own copy, else the checkout's."""
    installed = _PACKAGE / "shipped"
    return installed if installed.is_dir() else _PACKAGE.parents[1]


def shipped_files() -> list[str]:
    """Every shipped file, as a path relative to the shipped root (recipes/heart.yaml, slurm/train.sbatch, ...)."""
    root = shipped_root()
    return sorted(path.relative_to(root).as_posix() for folder in FOLDERS
                  for path in (root / folder).rglob("*") if path.is_file())


def recipe_names() -> list[str]:
    """The shipped recipes by name: heart, tiny_gpt, sweeps/heart_lr_width, ..."""
    return [name.removeprefix("recipes/").removesuffix(".yaml") for name in shipped_files()
            if name.startswith("recipes/") and name.endswith(".yaml")]


def shipped_recipe(name: str) -> Path | None:
    """The shipped recipe called `name` (with or without .yaml), or None."""
    stem = name.removesuffix(".yaml")
    return shipped_root() / "recipes" / f"{stem}.yaml" if stem in recipe_names() else None


def recipe_argument(text: str) -> str:
    """A recipe argument as a path: the file when one is there, else the shipped recipe of that name, else as given."""
    if Path(text).exists():
        return text
    recipe = shipped_recipe(text)
    return str(recipe) if recipe else text


def not_found_hint(name: str) -> str:
    """For a recipe file that is not there: the shipped recipe it may mean, and where they are listed."""
    return f"{did_you_mean(Path(name).stem, recipe_names())} (`trainwright ls` lists the shipped recipes)"


def resolve_shipped(name: str) -> Path:
    """A shipped file by its path (recipes/heart.yaml, slurm/train.sbatch) or a recipe by its name (heart)."""
    files = shipped_files()
    if name in files:
        return shipped_root() / name
    if recipe := shipped_recipe(name):
        return recipe
    raise UserError(f"no shipped file or recipe '{name}'{did_you_mean(name, files + recipe_names())} "
                    "(`trainwright ls` lists them)")


def description(path: Path) -> str:
    """A shipped file's first comment line (its one-line summary), or ''."""
    for line in path.read_text(encoding="utf-8").splitlines()[:3]:
        if line.startswith("# ") and not line.startswith("#!"):
            return line[2:].strip()
    return ""


def list_shipped() -> str:
    """The listing `trainwright ls` prints: each shipped recipe by name, then the configs and scripts."""
    root = shipped_root()
    lines = ["Recipes (trainwright train NAME, or trainwright cp NAME DEST to edit a copy):"]
    lines += [f"  {name:<26} {description(root / 'recipes' / f'{name}.yaml')}" for name in recipe_names()]
    for folder, what in (("accelerate_configs", "Accelerate launch configs"), ("slurm", "Slurm scripts")):
        lines.append(f"{what} (trainwright cp {folder}/FILE DEST):")
        lines += [f"  {name:<45} {description(root / name)}" for name in shipped_files()
                  if name.startswith(f"{folder}/")]
    lines.append(f"(from {root})")
    return "\n".join(lines)


def copy_shipped(name: str, destination: Path) -> Path:
    """Copy one shipped file to `destination` (a new file, or an existing folder to put it in); never over a file."""
    source = resolve_shipped(name)
    target = destination / source.name if destination.is_dir() else destination
    if target.exists() or target.is_symlink():
        raise UserError(f"{target} already exists; choose another destination (nothing was overwritten)")
    if not target.parent.is_dir():
        raise UserError(f"{target.parent} is not a folder; create it first or choose another destination")
    with source.open("rb") as reader, target.open("xb") as writer:  # "x": a file that appeared meanwhile is kept
        shutil.copyfileobj(reader, writer)
    shutil.copymode(source, target)
    return target
