"""`lnpt analyze grid --profile tiny` end to end on real Fashion-MNIST: every run recorded with its
numbers, a Markdown table, a valid PNG, resuming skips finished runs, a changed recipe is refused."""
from __future__ import annotations

import json

import pytest

from lnpt.shared.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """A real (briefly trained) LeNet-5 teacher, made with the cloud's recipe."""
    from lnpt.cloud.teacher_training import train_teacher
    from lnpt.shared.config import load_config

    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    config = load_config(None, ["teacher.model=lenet5", "teacher.epochs=1", "teacher.train_samples=1024",
                                "teacher.test_samples=256"])
    train_teacher(config, str(path), device="cpu")
    return path


def grid(capsys, out, teacher, *extra):
    code = main(["analyze", "grid", "--profile", "tiny", "--out", str(out), "--teacher", str(teacher),
                 "--threads", "1", "--format", "json", *extra])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def test_tiny_grid_writes_every_run_and_resumes(tmp_path, tiny_teacher, capsys):
    out = tmp_path / "grid"
    code, result, _ = grid(capsys, out, tiny_teacher)
    assert code == 0
    runs = result["runs"]
    # 2 dense references + 2 scores x 2 trainings x 1 sparsity x 1 seed
    assert sorted((r["score"], r["training"]) for r in runs) == sorted(
        [("dense", "guided"), ("dense", "supervised"), ("lnpt", "guided"), ("lnpt", "supervised"),
         ("magnitude", "guided"), ("magnitude", "supervised")])
    for run in runs:
        assert {"accuracy", "learning_gap", "cka_gap", "teacher_agreement", "actual_sparsity",
                "final_train_loss", "seconds", "seed", "diverged"} <= set(run)
        assert 0.0 <= run["accuracy"] <= 1.0 and not run["diverged"]
        expected = 0.0 if run["score"] == "dense" else 0.9
        assert run["actual_sparsity"] == pytest.approx(expected, abs=0.01)
    assert {"teacher", "recipe", "machine", "summary", "markdown"} <= set(result)
    assert result["summary"]["lnpt|guided|0.9"]["n"] == 1

    stored = json.loads((out / "grid.json").read_text())
    assert len(stored["runs"]) == 6 and stored["recipe"]["augment"] is False
    table = (out / "grid.md").read_text()
    for row in ("| lnpt | guided |", "| lnpt | supervised |", "| magnitude | guided |", "| teacher (lenet5) |"):
        line = next(line for line in table.splitlines() if line.startswith(row))
        assert "±" in line or row.startswith("| teacher")
    assert (out / "grid.png").read_bytes()[:8] == PNG_MAGIC

    # Resume: drop one finished run; only that one is trained again, the others are kept untouched.
    dropped = "magnitude|supervised|0.9|0"
    kept = {k: v for k, v in stored["runs"].items() if k != dropped}
    stored["runs"] = kept
    (out / "grid.json").write_text(json.dumps(stored))
    code, again, err = grid(capsys, out, tiny_teacher)
    assert code == 0
    resumed = json.loads((out / "grid.json").read_text())["runs"]
    assert set(resumed) == set(kept) | {dropped}
    assert all(resumed[k] == v for k, v in kept.items())
    assert err.count("accuracy") == 1  # one progress line: only the dropped run ran

    # A different recipe is refused with a message naming what differs.
    code, _, err = grid(capsys, out, tiny_teacher, "--epochs", "2")
    assert code == 2 and "epochs" in err and "--fresh" in err


def test_bad_grid_options_are_named(tmp_path, tiny_teacher, capsys):
    code, _, err = grid(capsys, tmp_path / "g", tiny_teacher, "--scores", "lnpt,oracle")
    assert code == 2 and "--scores" in err and "synflow" in err
    code, _, err = grid(capsys, tmp_path / "g", tmp_path / "missing.pt")
    assert code == 2 and "missing.pt" in err


def test_label_free_arm_gets_no_labels():
    import torch

    from lnpt.lab.paper.experiment import objective_for, targets_for
    from lnpt.shared.objectives import ObjectiveError, Targets

    guidance = Targets(torch.randn(4, 8), torch.randn(4, 10))
    labels = torch.arange(4)
    guided = targets_for("guided", guidance, labels)
    assert guided.labels is None and guided.features is guidance.features
    supervised = targets_for("supervised", guidance, labels)
    assert supervised.features is None and supervised.logits is None and supervised.labels is labels
    # Cross-entropy cannot run on what the label-free arm is given.
    with pytest.raises(ObjectiveError):
        objective_for("supervised", 8, 8).loss(torch.randn(4, 8), torch.randn(4, 10), guided)
