"""`lnpt demo` end to end in a reduced mode: same code path, fewer images and epochs."""
import json
import re

import numpy as np
import onnxruntime as ort
import pytest

from lnpt.lab.demo import Demo, DemoSettings


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
    assert accuracy in capsys.readouterr().out
    assert summary["rows"] == stages["report"]["rows"]

    # A second run reuses every stage and prints the same summary without a server.
    again = Demo(settings).run()
    assert again["rows"] == summary["rows"]
    assert "reusing" in capsys.readouterr().err
