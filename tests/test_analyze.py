"""`lnpt analyze learning-gap` end to end on real Fashion-MNIST (tiny), and the statistics it uses."""
from __future__ import annotations

import json
import math

import pytest

from lnpt.shared.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--epochs", "2", "--train-samples", "256", "--test-samples", "256", "--threads", "1", "--format", "json"]


def analyze(capsys, *args):
    code = main(["analyze", "learning-gap", *args])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


@pytest.mark.parametrize("training", ["supervised", "guided"])
def test_learning_gap_run_trains_its_own_teacher_and_logs_every_epoch(tmp_path, capsys, training):
    out = tmp_path / "lg"
    code, result, err = analyze(capsys, "--out", str(out), "--training", training, "--teacher-samples", "512",
                                "--teacher-epochs", "1", *TINY)
    assert code == 0
    assert result["teacher"]["trained_now"] and (out / "teacher.pt").is_file()
    assert "no teacher at" in err  # says that it trained one
    history = result["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[0]["distance_to_init"] == 0.0 and history[0]["train_loss"] is None
    assert all(h["distance_to_init"] > 0 for h in history[1:])
    assert all(h["distance_to_teacher"] > 0 for h in history)  # different seeds: never the teacher's weights
    for h in history:
        assert 0 <= h["accuracy"] <= 1 and h["learning_gap"] >= 0 and 0 <= h["cka_gap"] <= 1 + 1e-9
        assert 0 <= h["learning_gap_normalized"] <= 4 / 84  # unit vectors: |a - b|^2 <= 4, over 84 features
    assert set(result["spearman_with_accuracy"]) == {"distance_to_init", "distance_to_teacher", "learning_gap",
                                                    "learning_gap_normalized", "cka_gap"}
    for value in result["spearman_with_accuracy"].values():
        assert math.isnan(value) or -1 <= value <= 1
    assert result["settings"]["training"] == training
    assert json.loads((out / "learning_gap.json").read_text())["history"] == history
    assert (out / "learning_gap.png").read_bytes()[:8] == PNG_MAGIC
    # A second run reuses the teacher it trained.
    code, again, _ = analyze(capsys, "--out", str(out), "--teacher", str(out / "teacher.pt"), *TINY)
    assert code == 0 and not again["teacher"]["trained_now"]
    assert again["teacher"]["version"] == result["teacher"]["version"]


def test_missing_teacher_and_bad_numbers_are_named(tmp_path, capsys):
    code, _, err = analyze(capsys, "--out", str(tmp_path), "--teacher", str(tmp_path / "nope.pt"), *TINY)
    assert code == 2 and "nope.pt" in err
    code, _, err = analyze(capsys, "--out", str(tmp_path), "--epochs", "0")
    assert code == 2 and "--epochs" in err


def test_spearman_uses_ranks_and_averages_ties():
    from lnpt.lab.paper.experiment import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 1000]) == pytest.approx(1.0)  # monotone, not linear
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ranks [1.5, 1.5, 3] vs [1, 2, 3]: Pearson = 0.8660
    assert spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_linear_cka_ignores_rotation_and_scale_but_not_noise():
    import torch

    from lnpt.lab.paper.experiment import linear_cka

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 16, generator=generator)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, generator=generator))
    assert linear_cka(x, 3 * x @ rotation) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(500, 16, generator=generator)) < 0.2
