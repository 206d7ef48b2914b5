"""`lnpt analyze grid --profile tiny` end to end on real Fashion-MNIST: every run recorded with its
numbers (the structured rows with the speed their channel ratio buys), Markdown tables, valid PNGs,
resuming skips finished runs, a changed recipe is refused."""
from __future__ import annotations

import json
import re

import pytest

from lnpt.shared.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    # + structured rows: 3 channel importances x 2 trainings x 1 channel ratio x 1 seed
    channel_rows = [(f"channels:{i}", t) for i in ("lnpt", "magnitude", "random") for t in ("guided", "supervised")]
    # + label-scarce arm (10 % labeled) on the dense student and on the lnpt masks
    assert sorted((r["score"], r["training"]) for r in runs) == sorted(
        [("dense", "guided"), ("dense", "supervised"), ("lnpt", "guided"), ("lnpt", "supervised"),
         ("magnitude", "guided"), ("magnitude", "supervised"), *channel_rows,
         ("dense", "supervised@0.1"), ("lnpt", "supervised@0.1")])
    for run in runs:  # the scarce arm sees ~10 % of the 256 images, as many steps as the full arms (4)
        assert run["labeled_images"] == {"guided": 0, "supervised": 256, "supervised@0.1": 26}[run["training"]]
        assert run["steps"] == (4 if run["training"] == "supervised@0.1" else None)
        assert run["distance_to_init"] > 0 and run["learning_gap_normalized"] >= 0
        # lenet5 both sides; a channel-pruned student has other shapes: no distance to the teacher
        assert (run["distance_to_teacher"] is None) == run["score"].startswith("channels:")
    structured = [r for r in runs if r["score"].startswith("channels:")]
    unstructured = [r for r in runs if not r["score"].startswith("channels:")]
    for run in structured:
        assert run["channel_ratio"] == 0.5 and run["importance"] == run["score"].split(":")[1]
        assert run["actual_sparsity"] == 0.0 and 0 < run["macs_over_dense"] < 0.6 and run["params_over_dense"] < 0.6
        assert run["latency_ms"] > 0 and run["latency_over_dense"] == pytest.approx(
            run["latency_ms"] / run["dense_latency_ms"])
        assert 0.0 <= run["accuracy"] <= 1.0 and not run["diverged"]
    # Uniform ratios: every importance removes the same number of channels per layer, each its own ones.
    assert len({r["params"] for r in structured}) == 1
    assert result["summary"]["channels:lnpt|guided|0.5"]["n"] == 1
    for run in unstructured:
        assert {"accuracy", "learning_gap", "cka_gap", "teacher_agreement", "actual_sparsity",
                "final_train_loss", "seconds", "seed", "diverged"} <= set(run)
        assert 0.0 <= run["accuracy"] <= 1.0 and not run["diverged"]
        expected = 0.0 if run["score"] == "dense" else 0.9
        assert run["actual_sparsity"] == pytest.approx(expected, abs=0.01)
    assert {"teacher", "recipe", "machine", "summary", "markdown"} <= set(result)
    assert result["summary"]["lnpt|guided|0.9"]["n"] == 1

    stored = json.loads((out / "grid.json").read_text())
    assert len(stored["runs"]) == 14 and stored["recipe"]["augment"] is False
    assert stored["recipe"]["arms"] == {"guided": {"lr": 0.01}}
    table = (out / "grid.md").read_text()
    for row in ("| lnpt | guided |", "| lnpt | supervised |", "| magnitude | guided |", "| teacher (lenet5) |"):
        line = next(line for line in table.splitlines() if line.startswith(row))
        assert "±" in line or row.startswith("| teacher")
    for section in ("### Label-scarce comparison", "| lnpt | 0.9 |", "one standard error", "Claim 1 across runs",
                    "‖θ − θ0‖", "95 % t-interval"):
        assert section in table
    assert (out / "grid.png").read_bytes()[:8] == PNG_MAGIC
    assert (out / "grid-latency.png").read_bytes()[:8] == PNG_MAGIC
    channels = table[table.index("### Channel pruning"):]
    for row in ("| lnpt | guided |", "| magnitude | supervised |", "| random | guided |", "| MACs / dense |",
                "| latency / dense |", "| importance | training | 2x faster | 4x faster | 2x fewer MACs | 4x fewer MACs |"):
        assert row in channels
    # Half the channels of every LeNet-5 layer leave about a third of its MACs: the 2x-MACs cell is reached.
    lnpt_row = next(line for line in channels.splitlines()[channels.splitlines().index(
        "| importance | training | 2x faster | 4x faster | 2x fewer MACs | 4x fewer MACs |"):] if line.startswith("| lnpt | guided |"))
    assert re.search(r"\| [+-]\d+\.\d\d at 50% \| not reached \|$", lnpt_row), lnpt_row

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

    # --report-only trains nothing and rewrites the tables from the store as it is.
    table = (out / "grid.md").read_text()
    (out / "grid.md").unlink()
    code, report, err = grid(capsys, out, tiny_teacher, "--report-only")
    assert code == 0 and "accuracy" not in err and (out / "grid.md").read_text() == table
    assert json.loads((out / "grid.json").read_text())["runs"] == resumed and len(report["runs"]) == len(resumed)
    code, _, err = grid(capsys, tmp_path / "none", tiny_teacher, "--report-only")
    assert code == 2 and "run the grid first" in err

    # A different recipe is refused with a message naming what differs.
    code, _, err = grid(capsys, out, tiny_teacher, "--epochs", "2")
    assert code == 2 and "epochs" in err and "--fresh" in err


def test_shards_split_the_grid_and_share_one_store(tmp_path, tiny_teacher, capsys):
    out = tmp_path / "sharded"
    few = ("--scores", "lnpt,magnitude", "--channel-ratios", "0")
    code, first, _ = grid(capsys, out, tiny_teacher, "--shard", "0/2", *few)
    assert code == 0
    mine = {(r["score"], r["training"]) for r in first["runs"]}
    code, both, _ = grid(capsys, out, tiny_teacher, "--shard", "1/2", *few)
    assert code == 0
    everything = {(r["score"], r["training"]) for r in both["runs"]}
    assert mine < everything and len(everything) == 8  # dense and lnpt with 3 arms, magnitude with 2
    # Both arms of one mask run in the same shard: each shard's (score) groups are whole.
    assert {t for s, t in mine if s == "lnpt"} in (set(), {"guided", "supervised", "supervised@0.1"})
    code, _, err = grid(capsys, out, tiny_teacher, "--shard", "2/2", *few)
    assert code == 2 and "--shard" in err


def test_label_scarce_subsets_are_class_balanced_and_seeded():
    import torch

    from lnpt.lab.paper.experiment import label_fraction, labeled_subset
    from lnpt.shared.data import load_fashion_mnist

    _, labels = load_fashion_mnist(True)
    for fraction, per_class in ((0.01, 60), (0.1, 600)):
        subset = labeled_subset(labels, fraction, seed=0)
        assert torch.bincount(labels[subset], minlength=10).tolist() == [per_class] * 10
        assert torch.equal(subset, labeled_subset(labels, fraction, seed=0))
        assert not torch.equal(subset, labeled_subset(labels, fraction, seed=1))
    assert (label_fraction("guided"), label_fraction("supervised"), label_fraction("supervised@0.01")) == (0, 1, 0.01)
    for bad in ("guided@0.1", "supervised@2", "supervised@x", "oracle"):
        with pytest.raises(Exception, match="training"):
            label_fraction(bad)


def test_bad_grid_options_are_named(tmp_path, tiny_teacher, capsys):
    code, _, err = grid(capsys, tmp_path / "g", tiny_teacher, "--scores", "lnpt,oracle")
    assert code == 2 and "--scores" in err and "synflow" in err
    code, _, err = grid(capsys, tmp_path / "g", tiny_teacher, "--channel-importances", "lnpt,oracle")
    assert code == 2 and "--channel-importances" in err and "magnitude" in err
    code, _, err = grid(capsys, tmp_path / "g", tiny_teacher, "--channel-ratios", "0.5,1.5")
    assert code == 2 and "--channel-ratios" in err
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


def test_grid_runs_on_your_own_labeled_folders(tmp_path, fashion_test, capsys):
    """Class sub-folders (sorted names, not Fashion-MNIST's order) for training and test, a teacher
    trained on them: the grid's teacher accuracy is the one `lnpt teacher eval --data` reports."""
    from lnpt.cloud.teacher_training import evaluate_checkpoint
    from lnpt.shared.data import FASHION_MNIST_CLASSES, write_image_folder

    images, labels = fashion_test
    write_image_folder(images[:300], tmp_path / "train", labels[:300].tolist(), FASHION_MNIST_CLASSES)
    write_image_folder(images[300:400], tmp_path / "test", labels[300:400].tolist(), FASHION_MNIST_CLASSES)
    teacher = tmp_path / "T.pt"
    assert main(["teacher", "train", "--model", "lenet5", "--epochs", "2", "--batch-size", "32", "--data",
                 str(tmp_path / "train"), "--val-fraction", "0.2", "--workers", "0", "--out", str(teacher),
                 "--format", "json"]) == 0
    capsys.readouterr()
    out = tmp_path / "grid"
    code, result, err = grid(capsys, out, teacher, "--data", str(tmp_path / "train"), "--test-data",
                             str(tmp_path / "test"), "--scores", "lnpt", "--channel-ratios", "0")
    assert code == 0, err
    assert len(result["runs"]) == 6 and all(0 <= r["accuracy"] <= 1 for r in result["runs"])
    assert result["recipe"]["data"] == str(tmp_path / "train")
    expected = evaluate_checkpoint(str(teacher), data=str(tmp_path / "test"))["test_accuracy"]
    assert result["teacher"]["test_accuracy"] == pytest.approx(expected)
    assert f"held-out images of {tmp_path / 'test'}" in result["markdown"]
    code, _, err = grid(capsys, tmp_path / "g2", teacher, "--data", str(tmp_path / "train"))
    assert code == 2 and "--test-data" in err
