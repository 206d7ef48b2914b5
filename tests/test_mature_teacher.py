"""The kept mature teacher (docs/results/mature-teacher/): every later run and every machine uses this
one file, so it must load and still score what its record says."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

KEPT = Path(__file__).resolve().parents[1] / "docs" / "results" / "mature-teacher"


def test_kept_teacher_loads_and_matches_its_recorded_accuracy():
    from lnpt.cloud.teacher_training import evaluate_checkpoint

    record = json.loads((KEPT / "teacher.json").read_text())
    path = KEPT / record["file"]
    assert path.stat().st_size < 2_000_000  # about 1 MB: fine to keep in the repository
    again = evaluate_checkpoint(str(path), limit=1000)
    assert again["arch"] == record["arch"] and again["version"] == record["version"]
    assert again["samples"] == 1000
    assert again["test_accuracy"] == pytest.approx(record["test_accuracy_first_1000"], abs=0.01)
    assert record["test_accuracy"] >= 0.93  # the bar the evidence issue set for a mature teacher
