"""Every file of a run dir has the usual mode (safetensors writes 0600), and its JSON files are valid
JSON even when a metric is NaN."""

from __future__ import annotations

import os
import stat

from conftest import strict_json
from reliability_helpers import HEART, TINY, train_ok


def test_every_run_file_has_the_usual_mode(capsys, tmp_path):
    finished = tmp_path / "run"
    train_ok(capsys, HEART, *TINY, "--run-dir", finished)
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in finished.rglob("*") if p.is_file()]
    assert finished / "model.safetensors" in files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_a_non_finite_metric_is_null_in_the_json_files(capsys, tmp_path, monkeypatch):
    (tmp_path / "odd_metrics.py").write_text(
        "import torch\n"
        "def undefined(outputs, targets, task, output_kind):\n"
        "    return torch.tensor(float('nan'))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    run_dir = tmp_path / "run"
    train_ok(capsys, HEART, *TINY, "metrics=[accuracy, odd_metrics:undefined]", "--run-dir", run_dir)
    summary = strict_json((run_dir / "summary.json").read_text())
    assert summary["val/undefined"] is None and 0 <= summary["val/accuracy"] <= 1
    records = [strict_json(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("val/undefined" in r and r["val/undefined"] is None for r in records)
