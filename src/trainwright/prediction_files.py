"""`predict --output FILE.csv|FILE.jsonl`: one row per input (id, prediction, actual where known, and
p_<class> for classifiers), written as the predictions stream in and made visible only when complete."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

from trainwright.errors import UserError
from trainwright.files import atomic_open
from trainwright.predictions import Predictions

FORMATS = (".csv", ".jsonl")


def check_output(path: Path) -> None:
    """Refuse an output that exists (nothing a user saved is overwritten), an unknown format or a missing folder."""
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"--output {path}: give a .csv or .jsonl file name")
    if path.exists():
        raise UserError(f"--output {path} exists; trainwright does not overwrite it (choose another name or remove it)")
    if not path.parent.is_dir():
        raise UserError(f"--output {path}: folder {path.parent} does not exist")


def write_predictions(batches: Iterable[Predictions], path: Path) -> int:
    """Write every batch's rows to `path` (atomically: on any error no file is left); returns the row count."""
    count = 0
    with atomic_open(path) as file:
        writer: csv.DictWriter | None = None
        for predictions in batches:
            rows = predictions.rows()
            if path.suffix.lower() == ".jsonl":
                file.writelines(json.dumps(row) + "\n" for row in rows)
            else:
                if writer is None:
                    writer = csv.DictWriter(file, fieldnames=list(rows[0]))
                    writer.writeheader()
                writer.writerows(rows)
            count += len(rows)
    return count
