"""`predict --output FILE.csv|FILE.jsonl`: one row per input (id, prediction, actual where known, and
p_<class> for classifiers), written as the predictions stream in and made visible only when complete."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

from trainwright.errors import UserError
from trainwright.finished.predictions import Predictions
from trainwright.run.files import atomic_open, check_new_output

FORMATS = (".csv", ".jsonl")


def check_output(path: Path) -> None:
    """Refuse an unknown format, or an output that is there already (nothing a user saved is overwritten, no
    link is written through) or cannot be written."""
    if path.suffix.lower() not in FORMATS:
        raise UserError(f"--output {path}: give a .csv or .jsonl file name")
    check_new_output(path, "--output")


def write_predictions(batches: Iterable[Predictions], path: Path) -> int:
    """Write every batch's rows to `path` (atomically: on any error no file is left; a file made there
    meanwhile is left as it is); returns the row count."""
    count = 0
    with atomic_open(path, replace=False) as file:
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
