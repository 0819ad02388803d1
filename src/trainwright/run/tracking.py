"""Metrics out of the trainer: metrics.jsonl always, W&B and TensorBoard when the recipe asks."""

from __future__ import annotations

import json
import netrc
import os
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from trainwright.errors import UserError
from trainwright.recipe import Recipe
from trainwright.run.directory import RunDir
from trainwright.run.files import append_whole, json_line, open_append, warn, write_text_atomic

Metrics = dict[str, float]


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] when there is none). A line that is not a JSON object (a
    crash or a full disk cut the last one short) is skipped with a warning naming it."""
    if not path.exists():
        return []
    records, damaged = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
        else:
            damaged.append(number)
    if damaged:
        warn(f"{path}: skipping damaged line(s) {', '.join(map(str, damaged))} (cut short by a crash or a full disk?)")
    return records


def drop_records_after(path: Path, step: int) -> None:
    """Keep only the records with `step` <= step (and no damaged line): a resumed run forgets what a
    killed run wrote after its checkpoint, so no step appears twice. Step 0 (a fresh start) empties the file.
    A symbolic link there (even a dangling one) becomes a file of its own; what it points to is not written."""
    if not path.exists() and not path.is_symlink():
        return
    kept = [record for record in read_records(path) if record["step"] <= step]
    write_text_atomic(path, "".join(json_line(record) for record in kept))


class JsonLinesFile:
    """A JSON-lines file of records with `step` and `epoch`, continued where a resumed run left off.

    A record that cannot be written whole (a full disk) is cut off again, so the file never ends in half a line."""

    def __init__(self, path: Path, resume_step: int) -> None:
        drop_records_after(path, resume_step)
        self.path = path
        self._fd = open_append(path)

    def log(self, fields: dict[str, Any], step: int, epoch: int) -> None:
        try:
            append_whole(self._fd, json_line({"step": step, "epoch": epoch, **fields}).encode())
        except OSError as exc:
            raise UserError(
                f"cannot write {self.path}: {exc.strerror}; training stopped at step {step} (its newest checkpoint "
                "is kept: free space and run the same command to resume)"
            ) from None

    def close(self) -> None:
        os.close(self._fd)


def sample_log(run: RunDir, rank: int, world_size: int, resume_step: int) -> JsonLinesFile:
    """`samples/rank<R>.jsonl`: the sample indices each process trained on at each step (for audits)."""
    run.samples.mkdir(exist_ok=True)
    if rank == 0:  # files of processes a larger earlier launch had
        for other, path in run.sample_files().items():
            if other >= world_size:
                drop_records_after(path, resume_step)
    return JsonLinesFile(run.sample_file(rank), resume_step)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file ([] when there is none; damaged lines are skipped and reported)."""
    return read_records(path)


def wandb_api_key_present() -> bool:
    """True when W&B has credentials (env var or netrc), so an online run would not prompt for a login."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class WandbLogger:
    """A W&B run that continues across restarts (its id lives in the run dir) and never stops training.

    An online start that fails (no network, a bad key) gives up after logging.wandb.init_timeout
    seconds; W&B's service is then shut down (it would keep the run id taken) and the run is recorded
    offline under the same id, to upload later with `wandb sync`."""

    def __init__(self, recipe: Recipe, run: RunDir, run_id: str, config: dict[str, Any]) -> None:
        """`config`: the W&B run's config (the resolved recipe and what the run adds, like its model summary)."""
        import wandb

        self._wandb = wandb
        cfg = recipe.logging.wandb
        mode = cfg.mode
        if mode == "auto":
            mode = "online" if wandb_api_key_present() else "offline"
        self.run = None
        for attempt in dict.fromkeys([mode, "offline"]):
            try:
                self.run = wandb.init(
                    project=cfg.project, entity=cfg.entity, group=cfg.group, tags=cfg.tags,
                    name=cfg.name or recipe.name, notes=cfg.notes, job_type=cfg.job_type, config=config,
                    dir=str(run.wandb.parent), id=run_id, resume="allow", mode=attempt,
                    settings=wandb.Settings(console="off", silent=True, init_timeout=cfg.init_timeout),
                )
                break
            except Exception as exc:  # W&B must never stop training
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if attempt != "offline":
                    warn(f"W&B {attempt} start failed ({reason}); trying offline (same run id)")
                    self._shut_down_service()
                else:
                    warn(f"W&B offline start failed ({reason}); W&B is off for this run")
        if self.run is not None and attempt == "offline":
            warn(f"W&B is logging offline to {run.wandb}; upload later with: wandb sync {run.wandb}/offline-run-*")

    def _shut_down_service(self) -> None:
        try:
            self._wandb.teardown()
        except Exception as exc:
            warn(f"W&B shutdown failed ({exc})")

    def log(self, metrics: Metrics, step: int, epoch: int) -> None:
        if self.run is None:
            return
        try:
            self.run.log({**metrics, "epoch": epoch}, step=step)  # the epoch counted from 1, as metrics.jsonl
        except Exception as exc:
            warn(f"W&B logging failed ({exc}); W&B is off for the rest of this run")
            self.run = None

    def close(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception as exc:
                warn(f"W&B finish failed ({exc})")


class TensorBoardLogger:
    """Scalars into `<run dir>/tensorboard`."""

    def __init__(self, folder: Path, resume_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError(
                "logging.tensorboard is true but TensorBoard is not installed: pip install 'trainwright[tensorboard]' "
                "(or set logging.tensorboard=false)"
            ) from None
        self.writer = SummaryWriter(str(folder), purge_step=resume_step + 1 if resume_step else None)

    def log(self, metrics: Metrics, step: int, epoch: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class Sink(Protocol):
    """Where a run's metrics go: a file, W&B, TensorBoard, the progress shown to the user."""

    def log(self, metrics: Metrics, step: int, epoch: int) -> None: ...

    def close(self) -> None: ...


class Tracker:
    """Every metrics sink of a run; on processes other than the main one it does nothing.

    `run_config`: what the run adds to W&B's config beside the resolved recipe (its model summary);
    `shown`: a sink for the user's eyes (progress.Progress), last, after the files."""

    def __init__(
        self, recipe: Recipe, run: RunDir, resume_step: int, wandb_run_id: str, is_main: bool,
        run_config: dict[str, Any] | None = None, shown: Sink | None = None,
    ) -> None:
        self.sinks: list[Sink] = []
        if not is_main:
            return
        self.sinks.append(JsonLinesFile(run.metrics_file, resume_step))
        if recipe.logging.wandb.mode != "disabled":
            self.sinks.append(WandbLogger(recipe, run, wandb_run_id, {**recipe.to_dict(), **(run_config or {})}))
        if recipe.logging.tensorboard:
            self.sinks.append(TensorBoardLogger(run.tensorboard, resume_step))
        if shown is not None:
            self.sinks.append(shown)

    def log(self, metrics: Metrics, step: int, epoch: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step, epoch)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
