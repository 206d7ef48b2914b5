"""What a new user broke on the edge CLI (issue 18): lost work, interrupts, usage, umask, silent limits."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from lnpt.edge import Student
from lnpt.shared.cli import main
from lnpt.shared.data import write_image_folder
from support.servers import make_student, make_teacher


@pytest.fixture
def files(tmp_path, fashion_train):
    folder = tmp_path / "unlabeled"
    write_image_folder(fashion_train[0][:200], folder)
    return make_teacher(tmp_path / "teacher.pt"), make_student(tmp_path / "student.pt"), folder


def train_args(teacher, student, folder, *extra):
    return ["train", "--student", str(student), "--teacher", str(teacher), "--data", str(folder),
            "--epochs", "1", "--batch-size", "32", "--no-progress", "--threads", "1", *extra]


def test_train_never_silently_replaces_a_trained_student(files, capsys):
    teacher, student, folder = files
    assert main(train_args(teacher, student, folder)) == 0
    trained = student.with_name("student-trained.pt")
    version = Student.load(trained).version
    assert main(train_args(teacher, student, folder, "--max-steps", "1")) == 2
    err = capsys.readouterr().err
    assert "student-trained.pt exists" in err and "--resume" in err and "--overwrite" in err
    assert Student.load(trained).version == version  # untouched
    assert main(train_args(teacher, student, folder, "--max-steps", "1", "--overwrite")) == 0
    assert Student.load(trained).extra["training"]["steps"] == 1


def test_prune_and_export_refuse_to_overwrite(files, tmp_path, capsys):
    teacher, student, folder = files
    out = tmp_path / "pruned.pt"
    prune = ["prune", "--teacher", str(teacher), "--data", str(folder), "--out", str(out)]
    assert main(prune) == 0
    assert main(prune) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*prune, "--overwrite"]) == 0
    onnx = tmp_path / "s.onnx"
    export = ["export", "--student", str(student), "--out", str(onnx), "--samples", str(folder),
              "--verify-samples", "8"]
    assert main(export) == 0
    assert main(export) == 2 and "--overwrite" in capsys.readouterr().err


def test_sigterm_during_training_checkpoints_and_says_how_to_resume(files):
    teacher, student, folder = files
    log = student.with_name("train.jsonl")
    command = [sys.executable, "-m", "lnpt.shared.cli",
               *train_args(teacher, student, folder, "--epochs", "50", "--checkpoint-every", "0",
                           "--log-jsonl", str(log))]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log.exists() or log.read_text().count('"step"') < 3):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    events = [json.loads(line) for line in log.read_text().splitlines()]
    saved = [e for e in events if e["event"] == "checkpoint"]
    assert saved and saved[-1]["reason"] == "interrupt"
    last_step = max(e["step"] for e in events if e["event"] == "step")
    assert saved[-1]["step"] == last_step  # nothing trained after the checkpoint is lost
    assert "--resume" in err and "student-trained.pt.ckpt" in err


def test_an_unknown_option_shows_the_subcommand_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--student", "s.pt", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: lnpt train") and "unrecognized arguments: --bogus" in err


def test_files_follow_the_umask(files, tmp_path):
    teacher, student, folder = files
    previous = os.umask(0o027)
    try:
        from lnpt.edge import prune

        result = prune(None, str(teacher), folder, out=tmp_path / "u.pt")
    finally:
        os.umask(previous)
    for path in (result.path, result.report_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


def test_silent_limits_are_said(files, tmp_path):
    """Fewer samples than asked, and the last partial batch of every epoch, are reported."""
    from lnpt.edge import prune, train

    teacher, student, folder = files
    pruned = prune(None, str(teacher), folder, out=tmp_path / "few.pt", samples=500)
    assert any("200 images, fewer than the 500 asked for" in note for note in pruned.notes)
    trained = train(pruned.student, str(teacher), folder, epochs=1, batch_size=64, threads=1)
    assert any("leaves out 8 of 200 images" in note for note in trained.notes)


def test_input_settings_that_would_be_ignored_are_refused(files, capsys):
    teacher, student, folder = files
    assert main([*train_args(teacher, student, folder), "--set", "data.size=64"]) == 2
    assert "data.size = 64, but the student takes 1 x 28 x 28" in capsys.readouterr().err
    assert main(["prune", "--teacher", str(teacher), "--out", str(student.with_name("p.pt")),
                 "--set", "data.channels=3"]) == 2
    assert "set the student's own input with model.input_size / model.channels" in capsys.readouterr().err
