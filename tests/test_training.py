"""Label-free guided training on real Fashion-MNIST against real guidance servers on loopback.

The teacher is a LeNet-5 trained in this session for 2 quick epochs on 6,000 labelled images
(about 75 % test accuracy, in about 10 s); students are LeNet-5s with 50 % random masks.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from support.recording import Recording
from support.servers import free_port, make_student, make_teacher, running_server, server_process

from lnpt.edge.student import load_student
from lnpt.edge.evaluation import metrics
from lnpt.edge.teachers import LocalTeacher
from lnpt.edge.training.image_source import ImageSource
from lnpt.edge.training.trainer import GuidedTrainer
from lnpt.shared.cli import main
from lnpt.shared.config import Config, load_config
from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC, write_image_folder
from lnpt.shared.teacher_model import Teacher

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    from lnpt.cloud.teacher_training import train_teacher

    path = tmp_path_factory.mktemp("teacher") / "T.pt"
    config = load_config(None, ['teacher.model="lenet5"', "teacher.epochs=2", "teacher.train_samples=6000",
                                "teacher.batch_size=64", "teacher.lr=0.05"])
    train_teacher(config, str(path), device="cpu")
    return path


@pytest.fixture(scope="module")
def student_path(tmp_path_factory):
    return make_student(tmp_path_factory.mktemp("student") / "S.pt")


def train_config(*overrides: str):
    return load_config(None, ["train.batch_size=64", "train.checkpoint_every=0", *overrides])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_guided_training_learns_without_labels(teacher_path, student_path, fashion_test, tmp_path, capsys):
    test_images, test_labels = fashion_test
    teacher = Teacher.load(teacher_path)
    before, _ = load_student(student_path)
    gap_kind = Config().objective.gap  # the gap the student is trained to close (the default objective's)
    start = metrics(before, FASHION_MNIST_SPEC, test_images, test_labels, LocalTeacher(teacher), gap_kind=gap_kind)
    out, log = tmp_path / "trained.pt", tmp_path / "log.jsonl"
    with running_server(teacher_path) as srv:
        rc = main(["train", "--student", str(student_path), "--teacher", srv.address, "--insecure",
                   "--max-steps", "300", "--out", str(out), "--log-jsonl", str(log), "--no-progress",
                   "--format", "json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 300 and summary["source_stats"]["batches"] == 300
    assert summary["source_stats"]["requests"] == summary["source_stats"]["responses"] <= 300  # batches merge
    trained, record = load_student(out)
    end = metrics(trained, FASHION_MNIST_SPEC, test_images, test_labels, LocalTeacher(teacher), gap_kind=gap_kind)
    # Chance is 0.10 and the teacher reaches ~0.75; 300 guided steps from this seed reach ~0.72.
    # 0.5 leaves a wide margin (the student trails the teacher, it is far from chance) against noise.
    assert end["accuracy"] >= 0.5, end
    # The default objective's normalized gap measured 0.017 -> 0.012 here (-30 %; the raw mse gap of the
    # earlier default fell by over half, but mse is not what this student is trained to close). A gap that
    # does not fall fails; agreement with the teacher (0.90 measured) says the student follows it.
    assert end["learning_gap"] < 0.8 * start["learning_gap"], (start, end)
    assert end["teacher_agreement"] >= 0.8, end
    assert record.extra["teacher_version"] == teacher.version
    # Masks were fixed: exactly the weights pruned before training are zero after it.
    for name, mask in record.extra["masks"].items():
        weight = dict(trained.named_modules())[name].weight
        assert torch.equal(weight[~mask], torch.zeros_like(weight[~mask]))
    steps = [e for e in read_jsonl(log) if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 301))
    assert steps[-1]["gap"] < steps[0]["gap"]


def test_server_killed_mid_epoch_training_completes_without_repeating_or_skipping(
        teacher_path, student_path, fashion_train, tmp_path):
    from lnpt.edge.teachers.remote import GuidanceClient, RetryPolicy

    teacher = Teacher.load(teacher_path)
    model, record = load_student(student_path)
    images = ImageSource(fashion_train[0][:1280], FASHION_MNIST_SPEC, "subset")  # 20 steps per epoch
    events = []
    with server_process(teacher_path, log_path=tmp_path / "server.log") as proc:
        client = GuidanceClient(proc.address, insecure=True, prefetch=4,
                                retry=RetryPolicy(max_attempts=60, max_wait_seconds=60, base_seconds=0.05, max_seconds=0.5))
        source = Recording(client)

        def log(event):
            events.append(event)
            if event["event"] == "step" and event["step"] == 10:  # mid-epoch: the server crashes
                proc.kill()
                threading.Timer(0.5, proc.start).start()

        trainer = GuidedTrainer(model, FASHION_MNIST_SPEC, images, source, train=train_config("train.epochs=2").train,
                                objective=load_config().objective, teacher_version=client.version,
                                student_version=record.version, log=log, progress=False)
        result = trainer.run()
    trained = [(e["epoch"], e["batch"]) for e in events if e["event"] == "step"]
    assert trained == [(epoch, batch) for epoch in range(2) for batch in range(20)]
    assert result.steps == 40
    assert client.stats["reconnects"] >= 1 and client.stats["resent"] >= 1
    assert client.stats["requests"] == client.stats["responses"] == 40  # each request id answered once
    assert len(source.asked) == len(source.answers) == 40
    for asked, (features, _) in zip(source.asked, source.answers):  # every answer is its own batch's
        torch.testing.assert_close(features, teacher.targets(asked)[0], rtol=2e-3, atol=2e-3)


def test_resume_continues_exactly_where_the_run_stopped(teacher_path, student_path, fashion_train, tmp_path):
    images = ImageSource(fashion_train[0][:960], FASHION_MNIST_SPEC, "subset")  # 15 steps per epoch
    source = LocalTeacher(Teacher.load(teacher_path))
    config = train_config("train.epochs=2", "train.checkpoint_every=7").train

    def trainer(checkpoint, log=None):
        model, record = load_student(student_path)
        return GuidedTrainer(model, FASHION_MNIST_SPEC, images, source, train=config, objective=load_config().objective,
                             teacher_version=source.version, student_version=record.version,
                             checkpoint_path=checkpoint, log=log, progress=False)

    reference = trainer(tmp_path / "a.ckpt")
    reference.run()

    class Crash(Exception):
        pass

    def crash_at_step_25(event):
        if event["event"] == "step" and event["step"] == 25:
            raise Crash

    with pytest.raises(Crash):
        trainer(tmp_path / "b.ckpt", crash_at_step_25).run()
    resumed = trainer(tmp_path / "b.ckpt")
    assert resumed.resume() == 21  # the last checkpoint before the crash (every 7 steps)
    result = resumed.run()
    assert result.steps == 30 and result.resumed_from_step == 21
    for key, value in weights(reference.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_client_killed_mid_epoch_resumes_from_its_last_checkpoint(teacher_path, student_path, tmp_path):
    out, log = tmp_path / "out.pt", tmp_path / "log.jsonl"
    with running_server(teacher_path) as srv:
        cmd = [sys.executable, "-m", "lnpt.shared.cli", "train", "--student", str(student_path),
               "--teacher", srv.address, "--insecure", "--max-steps", "300", "--batch-size", "32",
               "--checkpoint-every", "10", "--threads", "1", "--out", str(out), "--no-progress"]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        process = subprocess.Popen([*cmd, "--log-jsonl", str(log)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if log.exists() and any(e["event"] == "checkpoint" and e["step"] >= 30 for e in read_jsonl(log)):
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        killed = read_jsonl(log)
        last_checkpoint = max(e["step"] for e in killed if e["event"] == "checkpoint")
        assert killed[-1]["event"] != "done" and last_checkpoint < 300
        log2 = tmp_path / "resumed.jsonl"
        done = subprocess.run([*cmd, "--resume", "--log-jsonl", str(log2), "--format", "json"], env=env,
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["resumed_from_step"] == last_checkpoint
    assert summary["steps"] == 300  # the same count as an uninterrupted run
    resumed_steps = [e for e in read_jsonl(log2) if e["event"] == "step"]
    assert [e["step"] for e in resumed_steps] == list(range(last_checkpoint + 1, 301))
    # Steps the killed run did after its checkpoint are redone on the very same batches.
    first_run = {e["step"]: (e["epoch"], e["batch"]) for e in killed if e["event"] == "step"}
    for e in resumed_steps:
        if e["step"] in first_run:
            assert first_run[e["step"]] == (e["epoch"], e["batch"])
    assert load_student(out)[1].extra["training"]["steps"] == 300


def test_target_cache_lets_an_epoch_run_with_the_server_down(teacher_path, student_path, fashion_train,
                                                             tmp_path, capsys):
    folder = write_image_folder(fashion_train[0][:512], tmp_path / "images")
    cache = tmp_path / "cache"
    with running_server(teacher_path) as srv:
        rc = main(["train", "--student", str(student_path), "--data", str(folder), "--teacher", srv.address,
                   "--insecure", "--epochs", "1", "--target-cache", str(cache), "--out", str(tmp_path / "one.pt"),
                   "--no-progress", "--format", "json"])
    assert rc == 0
    first = json.loads(capsys.readouterr().out)
    assert first["steps"] == 8 and first["source_stats"]["batches"] == 8  # 512 samples fetched once
    version = Teacher.load(teacher_path).version
    assert (cache / f"{version}.sqlite").is_file()  # on disk, not in memory
    # The server is gone now (its port is closed): the next run must not need it.
    rc = main(["train", "--student", str(tmp_path / "one.pt"), "--data", str(folder),
               "--teacher", f"127.0.0.1:{free_port()}", "--insecure", "--epochs", "2", "--target-cache", str(cache),
               "--out", str(tmp_path / "two.pt"), "--no-progress", "--format", "json"])
    assert rc == 0
    second = json.loads(capsys.readouterr().out)
    assert second["steps"] == 16 and second["source_stats"] == {}
    assert second["teacher_version"] == version


def test_checkpoint_of_another_teacher_version_is_refused_unless_forced(teacher_path, student_path, tmp_path, capsys):
    other = make_teacher(tmp_path / "other.pt", seed=3)
    common = ["train", "--student", str(student_path), "--max-steps", "4", "--out", str(tmp_path / "s.pt"),
              "--no-progress"]
    assert main([*common, "--teacher", str(teacher_path)]) == 0
    capsys.readouterr()
    assert main([*common, "--teacher", str(other), "--resume"]) == 2
    assert "trained against teacher version" in capsys.readouterr().err
    assert main([*common, "--teacher", str(other), "--resume", "--force"]) == 0


def test_auth_failure_stops_training_with_a_clear_message(teacher_path, student_path, tmp_path, capsys):
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret-s3cret-s3cret\n")
    common = ["train", "--student", str(student_path), "--insecure", "--max-steps", "2",
              "--out", str(tmp_path / "s.pt"), "--no-progress"]
    with running_server(teacher_path, overrides=[f'server.tokens_file="{tokens}"']) as srv:
        assert main([*common, "--teacher", srv.address]) == 2
        assert "refused the client (UNAUTHENTICATED" in capsys.readouterr().err
        assert main([*common, "--teacher", srv.address, "--token-file", str(tokens)]) == 0


def test_version_mismatch_with_the_server_stops_a_resumed_run(teacher_path, student_path, tmp_path, capsys):
    other = make_teacher(tmp_path / "other.pt", seed=4)
    common = ["train", "--student", str(student_path), "--insecure", "--max-steps", "3",
              "--out", str(tmp_path / "s.pt"), "--no-progress"]
    assert main([*common, "--teacher", str(teacher_path)]) == 0
    with running_server(other) as srv:
        assert main([*common, "--teacher", srv.address, "--resume"]) == 2
    assert "but this run needs" in capsys.readouterr().err


def test_labels_in_folder_names_are_never_read(teacher_path, student_path, fashion_train, tmp_path):
    images, labels = fashion_train[0][:256], fashion_train[1][:256]
    named = write_image_folder(images, tmp_path / "named", labels.tolist(), FASHION_MNIST_CLASSES)
    garbage = tmp_path / "garbage"
    # Same files, folders renamed to nonsense (sorted in the same order, so the file order is equal).
    for rank, folder in enumerate(sorted(p for p in named.iterdir())):
        shutil.copytree(folder, garbage / f"{rank:02d}-not-a-label-{'x' * rank}")
    source = LocalTeacher(Teacher.load(teacher_path))
    results = []
    for folder in (named, garbage):
        model, record = load_student(student_path)
        data = ImageSource.open(str(folder), FASHION_MNIST_SPEC)
        GuidedTrainer(model, FASHION_MNIST_SPEC, data, source, train=train_config("train.epochs=2").train,
                      objective=load_config().objective, teacher_version=source.version, progress=False).run()
        results.append(weights(model))
    for key in results[0]:
        assert torch.equal(results[0][key], results[1][key]), key


def test_edge_training_path_runs_without_the_cloud_or_its_extras(teacher_path, student_path, fashion_train,
                                                                  tmp_path):
    """An edge install has no lnpt.cloud, grpc_health, grpc_reflection or prometheus_client: block them
    all and train through the edge CLI. (grpc itself tries to import grpc_health/grpc_reflection
    when present, so blocking is the honest check, not a look at sys.modules.)"""
    folder = write_image_folder(fashion_train[0][:64], tmp_path / "images")
    script = f"""
import argparse, sys
BLOCKED = ("lnpt.cloud", "grpc_health", "grpc_reflection", "prometheus_client")
attempts = []
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.startswith(BLOCKED):
            attempts.append(name)
            raise ModuleNotFoundError(f"{{name}} is not installed on the edge", name=name)
sys.meta_path.insert(0, Block())
from lnpt.edge import cli
parser = argparse.ArgumentParser()
cli.register(parser.add_subparsers())
args = parser.parse_args(["train", "--student", {str(student_path)!r}, "--data", {str(folder)!r},
                          "--teacher", {str(teacher_path)!r}, "--max-steps", "2", "--batch-size", "32",
                          "--out", {str(tmp_path / "s.pt")!r}, "--no-progress"])
assert args.handler(args) == 0
import lnpt.edge.teachers.remote
print("CLOUD", sorted(a for a in attempts if a.startswith(("lnpt.cloud", "prometheus_client"))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "CLOUD []" in done.stdout, done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so cuda is a valid device")
def test_an_unavailable_or_unknown_device_stops_with_a_clear_message(teacher_path, student_path, tmp_path, capsys):
    common = ["train", "--student", str(student_path), "--teacher", str(teacher_path), "--max-steps", "2",
              "--out", str(tmp_path / "s.pt"), "--no-progress"]
    assert main([*common, "--device", "cuda"]) == 2
    assert "train.device = 'cuda', but torch sees no CUDA device here" in capsys.readouterr().err
    assert main([*common, "--device", "gpu"]) == 2
    assert "train.device = 'gpu' is not a device torch knows" in capsys.readouterr().err
    assert main([*common, "--device", "cpu"]) == 0
    assert load_student(tmp_path / "s.pt")[1].extra["training"]["steps"] == 2
