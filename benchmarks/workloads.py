"""The workloads and their sizes: every row of a table trains the same recipe on the same data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"
# No W&B, no checkpoint during the timed epoch (trainwright still saves once when the run ends, untimed).
QUIET = ("logging.wandb=false", "trainer.epochs=1", "checkpoint.every_steps=null", "checkpoint.every_epochs=null")


@dataclass(frozen=True)
class Scale:
    """How big a run is: --quick is a smoke run of every row, not a measurement."""

    heart_points: int  # 80% of them train
    images: int  # FashionMNIST training images (a multiple of 256: every loop sees whole batches)
    test_images: int
    text_bytes: int  # characters of the tiny_gpt corpus (the stdlib's source; 90% of them train)
    large_hidden: int  # width of the three hidden layers of the large-state MLP
    large_steps: int  # steps of the large-state epoch (one batch of 64 per step)
    save_every: int  # steps between the large-state checkpoints
    repeats: int  # interleaved repeats of every row
    heart_repeats: int  # the same for the heart table: its rows are short, and process-to-process spread is ~5%
    startup_runs: int

    @property
    def saves_in_epoch(self) -> int:
        """Checkpoints inside the timed large-state epoch (the one at its last step comes after the timing)."""
        return (self.large_steps - 1) // self.save_every


FULL = Scale(
    heart_points=100_000,
    images=19_200,
    test_images=1_000,
    text_bytes=300_000,
    large_hidden=4096,
    large_steps=16,
    save_every=4,
    repeats=5,
    heart_repeats=11,
    startup_runs=5,
)
QUICK = Scale(heart_points=10_000, images=2_560, test_images=256, text_bytes=40_000, large_hidden=1024, large_steps=10,
              save_every=5, repeats=1, heart_repeats=1, startup_runs=1)


@dataclass(frozen=True)
class Workload:
    """One recipe with the overrides that size it; `kind` picks the tutorial's per-item data set."""

    key: str
    title: str
    recipe: Path
    overrides: tuple[str, ...]
    kind: str  # "heart", "fashion_mnist" or "text"

    def repeats(self, scale: Scale) -> int:
        """Interleaved repeats of this workload's table."""
        return scale.heart_repeats if self.kind == "heart" else scale.repeats

    @property
    def tutorial(self) -> str:
        if self.kind == "heart":
            return "tutorial: pandas DataFrame, `df.iloc[i]` per item, DataLoader(shuffle=True)"
        return "tutorial: torchvision `FashionMNIST(transform=ToTensor())` per item, DataLoader(shuffle=True)"


def fashion_root(data_root: Path) -> Path:
    return data_root / "fashion"


def large_root(data_root: Path) -> Path:
    return data_root / "fashion-large"


def training_workloads(data_root: Path, scale: Scale) -> list[Workload]:
    """Heart MLP, FashionMNIST MLP and LeNet, one epoch each."""
    images = f"data.root={fashion_root(data_root)}"
    train_points = scale.heart_points - scale.heart_points // 5
    return [
        Workload("heart", f"heart MLP 2-72-36-1, {train_points:,} points, batch 64, SGD momentum 0.9",
                 RECIPES / "heart.yaml", (*QUIET, f"data.num_points={scale.heart_points}"), "heart"),
        Workload("mlp", f"FashionMNIST MLP 784-512-512-10, {scale.images:,} images, batch 64, SGD",
                 RECIPES / "fashion_mnist_mlp.yaml", (*QUIET, images), "fashion_mnist"),
        Workload("lenet", f"FashionMNIST LeNet, {scale.images:,} images, batch 256, SGD momentum 0.9",
                 RECIPES / "fashion_mnist_lenet.yaml", (*QUIET, images), "fashion_mnist"),
    ]


def gpt_workload(scale: Scale) -> Workload:
    """recipes/tiny_gpt.yaml for one epoch of its windows, without an LR schedule (both loops step the
    optimizer alone; gradient clipping at the recipe's 1.0 in both)."""
    recipe = RECIPES / "tiny_gpt.yaml"
    overrides = (*QUIET, f"data.max_bytes={scale.text_bytes}", "scheduler={name: none}")
    title = f"tiny_gpt (2 layers, width 96, context 64), {scale.text_bytes:,} characters, batch 32, AdamW"
    return Workload("gpt", title, recipe, overrides, "text")


def large_state_workload(data_root: Path, scale: Scale, saves: bool, background: bool = True) -> Workload:
    """MLP 784-H-H-H-10 with AdamW for one epoch of `large_steps` steps, with a checkpoint every
    `save_every` steps (saves=True) or none during the epoch (saves=False); `background`: checkpoint.async."""
    hidden = scale.large_hidden
    every = f"checkpoint.every_steps={scale.save_every}" if saves else "checkpoint.every_steps=null"
    overrides = (
        *QUIET, every, f"data.root={large_root(data_root)}", f"model.hidden=[{hidden}, {hidden}, {hidden}]",
        "optimizer.name=adamw", "checkpoint.keep_last=1", f"checkpoint.async={str(background).lower()}",
    )
    title = f"MLP 784-{hidden}-{hidden}-{hidden}-10, AdamW, {scale.large_steps} steps of batch 64"
    key = "large-saves" if saves else "large"
    return Workload(key if background else f"{key}-sync", title, RECIPES / "fashion_mnist_mlp.yaml", overrides,
                    "fashion_mnist")


def workload_by_key(key: str, data_root: Path, scale: Scale) -> Workload:
    found = {w.key: w for w in training_workloads(data_root, scale)}
    large = (large_state_workload(data_root, scale, False), large_state_workload(data_root, scale, True),
             large_state_workload(data_root, scale, True, background=False))
    found.update({w.key: w for w in (*large, gpt_workload(scale))})
    return found[key]
