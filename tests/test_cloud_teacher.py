"""`lnpt teacher train|eval` on real Fashion-MNIST, single process and torchrun DDP (gloo, 2 CPUs),
the DDP run interrupted by SIGTERM and resumed."""
from __future__ import annotations

import fcntl
import json
import os
import re
import signal
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
    from lnpt.shared.models import build_model

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


def test_torchrun_ddp_interrupted_by_sigterm_resumes_every_rank_from_rank_0s_checkpoint(tmp_path):
    """Two gloo processes: SIGTERM to torchrun mid-epoch stops both ranks at one step, rank 0 writes
    the checkpoint; the same command with --resume loads it on both ranks and finishes the run."""
    out, checkpoint = tmp_path / "T-ddp.pt", tmp_path / "T-ddp.pt.ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "lnpt.shared.cli", "teacher", "train", "--model", "lenet5", "--epochs", "2", "--out", str(out),
               "--device", "cpu", "--format", "json", "--batch-size", "8", "--checkpoint-every", "5",
               "--set", "teacher.train_samples=512", "--set", "teacher.test_samples=64"]  # 32 steps per epoch
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               cwd=tmp_path)
    # a one-page pipe: the run blocks a few dozen lines ahead of this reader, so the signal lands mid-run
    fcntl.fcntl(process.stderr.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith('{"event": "step"') and json.loads(line)["step"] == 8:
            process.send_signal(signal.SIGTERM)
            break
    stderr = "".join(seen) + process.communicate(timeout=120)[1]
    stops = re.findall(r"interrupted at step (\d+)/64; checkpoint", stderr)
    assert len(stops) == 2 and stops[0] == stops[1], stderr[-3000:]  # both ranks stopped at the same step
    stopped = int(stops[0])
    assert torch.load(checkpoint, weights_only=True)["step"] == stopped and not out.exists()

    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1, done.stdout  # only rank 0 reports
    assert results[0]["world_size"] == 2 and results[0]["train_samples"] == 512
    assert results[0]["resumed_from_step"] == stopped and results[0]["steps"] == 64
    steps = [json.loads(line)["step"] for line in done.stderr.splitlines() if line.startswith('{"event": "step"')]
    assert steps == list(range(stopped + 1, 65))  # rank 0 reports; rank 1 ran in step with it (DDP all-reduce)
    teacher = Teacher.load(out)
    assert teacher.version == results[0]["version"]
    assert teacher.record.extra["world_size"] == 2
    features, logits = teacher.targets(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert features.shape == (2, 84) and logits.shape == (2, 10)
