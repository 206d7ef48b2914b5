"""`lnpt edge run` / `lnpt.edge.run_edge_job`: prune once, train with resume, export once; idempotent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lnpt.edge import Student, run_edge_job
from lnpt.shared.cli import main
from lnpt.shared.config import load_config
from lnpt.shared.data import write_image_folder
from support.servers import make_teacher


@pytest.fixture
def job_files(tmp_path, fashion_train):
    teacher = make_teacher(tmp_path / "teacher.pt")
    folder = tmp_path / "unlabeled"
    write_image_folder(fashion_train[0][:320], folder)
    config = tmp_path / "edge.toml"
    config.write_text(f'[job]\nwork = "{tmp_path / "work"}"\ndata = "{folder}"\nteacher = "{teacher}"\n'
                      "[prune]\nsparsity = 0.9\n[train]\nepochs = 2\nbatch_size = 32\ncheckpoint_every = 2\n"
                      "threads = 1\n[export]\nverify_samples = 16\n")
    return config, tmp_path / "work"


def test_edge_run_twice_does_the_work_once(job_files, capsys):
    config, work = job_files
    assert main(["edge", "run", "--config", str(config), "--format", "json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["stages"] == {"prune": "done", "train": "done", "export": "done"}
    trained = Student.load(work / "student-trained.pt")
    assert trained.extra["training"]["steps"] == 20 and trained.sparsity == pytest.approx(0.9, abs=1e-3)
    stamps = {p.name: p.stat().st_mtime_ns for p in work.iterdir()}

    again = run_edge_job(load_config(config))  # the same job from Python: nothing left to do
    assert again.stages == {"prune": "kept", "train": "kept", "export": "kept"}
    assert {p.name: p.stat().st_mtime_ns for p in work.iterdir()} == stamps  # nothing rewritten


def test_edge_run_refuses_an_onnx_file_of_another_student(job_files):
    config, work = job_files
    run_edge_job(load_config(config))
    sidecar = work / "student.onnx.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "student_version": "0000"}))
    with pytest.raises(Exception, match="exported from student version 0000"):
        run_edge_job(load_config(config))


def test_edge_run_killed_mid_training_resumes_to_the_same_step_count(job_files):
    """SIGKILL (a power cut) during training, then the same command again: it resumes from the
    checkpoint and ends with exactly the steps of an uninterrupted run."""
    config, work = job_files
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "lnpt.shared.cli", "edge", "run", "--config", str(config)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = work / "train.ckpt"
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), "training never wrote a checkpoint"
    process.send_signal(signal.SIGKILL)
    process.wait(30)
    assert not (work / "student-trained.pt").exists()  # cut short before training finished

    resumed = run_edge_job(load_config(config))
    assert resumed.stages == {"prune": "kept", "train": "resumed", "export": "done"}
    assert resumed.train.resumed_from_step > 0
    assert resumed.train.steps == resumed.train.total_steps == 20  # = an uninterrupted run (see above)
    assert Student.load(work / "student-trained.pt").extra["training"]["steps"] == 20
