"""`lnpt teacher train|eval` on real Fashion-MNIST, single process and torchrun DDP (gloo, 2 CPUs)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from lnpt.shared.model_file import load_model
from lnpt.shared.cli import main
from lnpt.shared.teacher_model import Teacher


def test_teacher_train_and_eval(tmp_path, capsys):
    out = tmp_path / "T.pt"
    code = main(["teacher", "train", "--model", "lenet5", "--epochs", "2", "--out", str(out), "--format", "json",
                 "--batch-size", "32", "--set", "teacher.train_samples=3000", "--set", "teacher.test_samples=1000"])
    assert code == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    epochs = [json.loads(line) for line in captured.err.splitlines() if line.startswith('{"event": "epoch"')]
    assert [e["epoch"] for e in epochs] == [1, 2]  # progress per epoch
    assert result["history"][-1]["train_loss"] < result["history"][0]["train_loss"]
    assert result["test_accuracy"] > 0.5  # 10 classes: chance is 0.1

    record = load_model(out, kind="teacher")
    assert record.version == result["version"] and record.arch == "lenet5"
    assert record.input_spec.shape == (1, 28, 28) and len(record.class_names) == 10
    assert record.extra["recipe"]["schedule"] == "cosine"

    assert main(["teacher", "eval", "--checkpoint", str(out), "--limit", "1000", "--format", "json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["version"] == record.version
    assert evaluated["test_accuracy"] == pytest.approx(result["test_accuracy"])  # same 1000 images, same weights


def test_loading_a_wrong_or_corrupt_file_fails_clearly(tmp_path, capsys):
    from support.servers import make_teacher

    from lnpt.shared.model_file import save_model
    from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC
    from lnpt.shared.zoo import build_model

    good = make_teacher(tmp_path / "T.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:2000])
    tampered = tmp_path / "tampered.pt"
    raw = torch.load(good, weights_only=True)
    raw["state_dict"]["head.bias"] += 1  # weights no longer match their recorded version
    torch.save(raw, tampered)
    student = tmp_path / "student.pt"
    save_model(student, build_model("lenet5", 10, FASHION_MNIST_SPEC), kind="student",
               input_spec=FASHION_MNIST_SPEC, class_names=list(FASHION_MNIST_CLASSES))
    cases = [(tmp_path / "missing.pt", "no such file"), (truncated, "not a readable lnpt model file"),
             (tampered, "do not match their recorded version"), (student, "is a student model file, expected a teacher")]
    for path, message in cases:
        assert main(["teacher", "eval", "--checkpoint", str(path), "--limit", "10"]) == 2
        assert message in capsys.readouterr().err
    Teacher.load(good)  # the original still loads


def test_torchrun_ddp_with_two_cpu_processes_writes_a_teacher(tmp_path, repo_root):
    out = tmp_path / "T-ddp.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "lnpt.shared.cli", "teacher", "train", "--model", "lenet5", "--epochs", "1", "--out", str(out),
         "--device", "cpu", "--format", "json",
         "--set", "teacher.train_samples=512", "--set", "teacher.test_samples=256"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1, done.stdout  # only rank 0 reports
    assert results[0]["world_size"] == 2 and results[0]["train_samples"] == 512
    teacher = Teacher.load(out)
    assert teacher.version == results[0]["version"]
    assert teacher.record.extra["world_size"] == 2
    features, logits = teacher.targets(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert features.shape == (2, 84) and logits.shape == (2, 10)
