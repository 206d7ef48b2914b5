"""`lnpt demo` end to end in a reduced mode: same code path, fewer images and epochs."""
import json
import re

import numpy as np
import onnxruntime as ort
import pytest

from lnpt.lab.demo import Demo, DemoError, DemoSettings, format_summary


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_its_stages(tmp_path, capsys):
    settings = DemoSettings(out=tmp_path / "demo", teacher_epochs=1, teacher_images=3000, train_images=1500,
                            epochs=1, test_images=500, threads=1)
    summary = Demo(settings).run()
    out = settings.out
    stages = {p.stem: json.loads(p.read_text())["result"] for p in (out / "stages").glob("*.json")}
    assert set(stages) == {"teacher", "tls", "images", "job", "evaluate", "shutdown", "export", "report"}
    # The device's part is the edge job itself, run once through the server.
    assert stages["job"]["stages"] == {"prune": "done", "train": "done", "export": "done"}

    # The edge trained on an unlabeled flat folder of real image files.
    pngs = list((out / "unlabeled").glob("*.png"))
    assert len(pngs) == 1500 and not [p for p in (out / "unlabeled").iterdir() if p.is_dir()]
    assert stages["shutdown"]["exit_code"] == 0  # the server drained and exited cleanly
    assert stages["job"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert stages["evaluate"]["learning_gap"] < stages["job"]["before"]["learning_gap"]
    assert len(stages["job"]["curve"]["step"]) == stages["job"]["steps"]

    # Both ONNX files load in ONNX Runtime and give finite logits for a real-sized batch.
    for storage in ("dense", "sparse"):
        session = ort.InferenceSession(stages["export"][storage]["path"], providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"images": np.zeros((3, 1, 28, 28), np.float32)})[0]
        assert logits.shape == (3, 10) and np.isfinite(logits).all()
    assert stages["export"]["sparse"]["bytes"] < stages["export"]["dense"]["bytes"]

    # The report and the printed summary carry the run's own numbers, not typed-in ones.
    report = (out / "report.md").read_text()
    accuracy = f"{stages['evaluate']['accuracy']:.4f}"
    assert f"| student test accuracy (label-free, pruned) | {accuracy} |" in report
    assert f"{stages['teacher']['test_accuracy']:.4f}" in report
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report):
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert accuracy in format_summary(summary["rows"])  # what the command prints
    assert summary["rows"] == stages["report"]["rows"]

    # A second run reuses every stage and prints the same summary without a server.
    again = Demo(settings).run()
    assert again["rows"] == summary["rows"]
    assert "reusing" in capsys.readouterr().err


@pytest.mark.slow
def test_elpv_demo_runs_end_to_end_on_a_small_subset(tmp_path, capsys):
    """The ELPV path on 80 real images at 32 px: split, labeled resnet18 teacher, the real server, the edge
    job on the unlabeled folder, the held-out test set, the supervised comparison, export and report."""
    # lenet5 as the student: mobilenet_v3_small's ONNX export alone takes ~25 s a file here
    settings = DemoSettings.for_dataset("elpv", out=tmp_path / "elpv", elpv_images=80, size=32, teacher_epochs=1,
                                        student_model="lenet5", epochs=1, threads=1)
    summary = Demo(settings).run()
    out = settings.out
    stages = {p.stem: json.loads(p.read_text())["result"] for p in (out / "stages").glob("*.json")}
    assert set(stages) == {"images", "teacher", "tls", "job", "evaluate", "shutdown", "supervised", "export", "report"}
    assert stages["job"]["stages"] == {"prune": "done", "train": "done", "export": "done"}
    assert stages["shutdown"]["exit_code"] == 0

    # The edge trained on a flat folder of real ELPV files: no class folders, no labels beside them.
    edge = out / "elpv" / "edge"
    assert stages["images"]["folder"] == str(edge) and not [p for p in edge.iterdir() if not p.name.endswith(".png")]
    assert stages["job"]["data_stats"]["images"] == stages["images"]["count"] == len(list(edge.iterdir()))
    assert stages["job"]["data_stats"]["bad_files"] == 0

    # The teacher validated on part of the cloud set and was measured on every held-out test image.
    test_counts = {c.name: len(list(c.iterdir())) for c in (out / "elpv" / "test").iterdir()}
    teacher = stages["teacher"]
    assert teacher["val_samples"] > 0 and teacher["val_samples"] + teacher["train_samples"] == sum(
        stages["images"]["counts"]["cloud"].values())
    assert teacher["test_samples"] == stages["evaluate"]["samples"] == sum(test_counts.values())
    supervised = stages["supervised"]
    assert supervised["majority_class_share"] == pytest.approx(max(test_counts.values()) / sum(test_counts.values()))
    assert supervised["train_samples"] == stages["images"]["count"] and 0 <= supervised["accuracy"] <= 1

    # Both ONNX files run in ONNX Runtime at the chosen size and know ELPV's four classes.
    for storage in ("dense", "sparse"):
        path = stages["export"][storage]["path"]
        logits = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
            ["logits"], {"images": np.zeros((3, 1, 32, 32), np.float32)})[0]
        assert logits.shape == (3, 4) and np.isfinite(logits).all()
        sidecar = json.loads(open(path + ".json").read())
        assert sidecar["class_names"] == ["defect_0.00", "defect_0.33", "defect_0.67", "defect_1.00"]
        assert stages["export"][storage]["accuracy"] is None  # no Fashion-MNIST evaluation of an ELPV model

    report = (out / "report.md").read_text()
    assert f"| same pruned student, supervised on the edge labels | {supervised['accuracy']:.4f} |" in report
    assert f"{teacher['val_accuracy']:.4f}" in report and "ELPV" in report
    assert f"{stages['evaluate']['accuracy']:.4f}" in format_summary(summary["rows"])
    assert Demo(settings).run()["rows"] == summary["rows"]  # every stage reused
    assert "reusing" in capsys.readouterr().err


def test_settings_that_do_not_apply_to_the_dataset_are_refused(tmp_path):
    with pytest.raises(DemoError, match="--train-images does not apply to --dataset elpv"):
        DemoSettings.for_dataset("elpv", train_images=100)
    with pytest.raises(DemoError, match="--size does not apply to --dataset fashion-mnist"):
        DemoSettings.for_dataset("fashion-mnist", size=64)
    # Fashion-MNIST's stage key is what it was before the dataset choice, so earlier runs are reused.
    assert set(DemoSettings().key()) == {"teacher_model", "teacher_epochs", "teacher_images", "student_model",
                                         "sparsity", "train_images", "epochs", "test_images"}
