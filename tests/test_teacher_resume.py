"""`lnpt teacher train` checkpoints like the edge trainer: SIGTERM mid-epoch saves the step it
stopped at and says how to resume (exit 130), --resume ends exactly where an uninterrupted run
does, finished work is never silently replaced, and JSON progress arrives within an epoch."""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import signal
import subprocess
import sys

import torch

from lnpt.shared.cli import main
from lnpt.shared.model_file import load_model

# 640 images in batches of 8: 80 steps per epoch, 160 in all; lenet5 keeps each step a few ms.
TINY = ["--model", "lenet5", "--epochs", "2", "--batch-size", "8", "--checkpoint-every", "7", "--format", "json",
        "--set", "teacher.train_samples=640", "--set", "teacher.test_samples=64", "--device", "cpu"]
TOTAL = 160


def events(stderr: str, kind: str) -> list[dict]:
    return [e for e in (json.loads(line) for line in stderr.splitlines() if line.startswith('{"event"'))
            if e["event"] == kind]


def test_sigterm_checkpoints_the_step_and_resume_matches_an_uninterrupted_run(tmp_path, capsys):
    out, checkpoint = tmp_path / "T.pt", tmp_path / "T.pt.ckpt"
    args = ["teacher", "train", *TINY, "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-m", "lnpt.shared.cli", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    # a one-page pipe: the run blocks a few dozen lines ahead of this reader, so the signal lands mid-run
    fcntl.fcntl(process.stderr.fileno(), fcntl.F_SETPIPE_SZ, 4096)
    stderr = []
    for line in process.stderr:  # SIGTERM once step 12 is reported (mid-epoch, past a checkpoint at 7)
        stderr.append(line)
        if line.startswith('{"event": "step"') and json.loads(line)["step"] == 12:
            process.send_signal(signal.SIGTERM)
            break
    rest = process.communicate(timeout=120)[1]
    stderr = "".join(stderr) + rest
    assert process.returncode == 130, stderr[-3000:]
    stopped = events(stderr, "step")[-1]["step"]
    assert 12 <= stopped < TOTAL
    state = torch.load(checkpoint, weights_only=True)
    assert state["step"] == stopped  # saved at the very step it stopped at, not at the last periodic one
    assert f"interrupted at step {stopped}/{TOTAL}; checkpoint {checkpoint} holds it" in stderr
    assert shlex.join(["lnpt", *args, "--resume"]) in stderr  # the command to paste
    assert "Traceback" not in stderr and not out.exists()

    assert main([*args, "--resume"]) == 0
    captured = capsys.readouterr()
    resumed = json.loads(captured.out)
    assert resumed["steps"] == TOTAL and resumed["resumed_from_step"] == stopped
    assert [e["step"] for e in events(captured.err, "step")] == list(range(stopped + 1, TOTAL + 1))
    assert [e["epoch"] for e in resumed["history"]] == [1, 2]

    reference = tmp_path / "uninterrupted.pt"
    assert main(["teacher", "train", *TINY, "--out", str(reference)]) == 0
    uninterrupted = json.loads(capsys.readouterr().out)
    assert uninterrupted["steps"] == TOTAL
    # exact resume: the same weights (the version is their content hash) and the same epoch figures
    assert resumed["version"] == uninterrupted["version"] == load_model(out, kind="teacher").version
    for mine, theirs in zip(resumed["history"], uninterrupted["history"]):
        assert (mine["train_loss"], mine["test_accuracy"]) == (theirs["train_loss"], theirs["test_accuracy"])


def test_finished_work_is_refused_and_progress_is_reported_within_an_epoch(tmp_path, capsys):
    out, checkpoint = tmp_path / "T.pt", tmp_path / "T.pt.ckpt"
    small = ["teacher", "train", "--model", "lenet5", "--epochs", "1", "--batch-size", "16", "--format", "json",
             "--set", "teacher.train_samples=96", "--set", "teacher.test_samples=32", "--out", str(out)]
    out.write_bytes(b"an earlier teacher")
    assert main(small) == 2
    assert f"{out} exists (a trained teacher); continue it with --resume, or pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"an earlier teacher"
    assert main([*small, "--resume"]) == 2
    assert f"nothing to resume: {checkpoint} does not exist" in capsys.readouterr().err

    assert main([*small, "--overwrite"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["steps"] == 6
    lines = [json.loads(line) for line in captured.err.splitlines() if line.startswith('{"event"')]
    steps = [e for e in lines if e["event"] == "step"]
    assert [(e["step"], e["batch"], e["batches"]) for e in steps] == [(s, s, 6) for s in range(1, 7)]
    assert [e["event"] for e in lines].index("epoch") > lines.index(steps[-1])  # steps come before the epoch
    assert load_model(out, kind="teacher").arch == "lenet5"

    out.unlink()  # the checkpoint of that run is still there: also refused without --resume/--overwrite
    assert main(small) == 2
    assert f"{checkpoint} exists (the checkpoint of an earlier run)" in capsys.readouterr().err
    # a checkpoint of other settings is refused by name, before any step
    assert main([*small, "--resume", "--batch-size", "32"]) == 2
    assert f"{checkpoint} has batch_size=16 but this run has 32" in capsys.readouterr().err
    assert not out.exists()


def test_checkpoints_restore_every_rng_and_keep_the_two_trainers_apart(tmp_path, capsys):
    import random

    import numpy as np

    from lnpt.edge.training.checkpoints import save_checkpoint as save_edge_checkpoint
    from lnpt.shared.checkpoints import load_checkpoint, restore_rng, save_checkpoint

    path = save_checkpoint(tmp_path / "run.ckpt", {"step": 3}, "lnpt-test-checkpoint")
    drawn = (torch.rand(3), random.random(), np.random.rand(2))
    state = load_checkpoint(path, "lnpt-test-checkpoint", "test checkpoint")
    restore_rng(state["rng"])
    again = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(drawn[0], again[0]) and drawn[1] == again[1] and np.array_equal(drawn[2], again[2])

    out = tmp_path / "T.pt"
    save_edge_checkpoint(tmp_path / "T.pt.ckpt", {"step": 5})  # a student's checkpoint where the teacher's goes
    code = main(["teacher", "train", "--model", "lenet5", "--epochs", "1", "--out", str(out), "--resume",
                 "--set", "teacher.train_samples=64", "--set", "teacher.test_samples=32"])
    assert code == 2
    assert "T.pt.ckpt: not an lnpt teacher training checkpoint" in capsys.readouterr().err
