"""Scale-out on loopback: three `lnpt serve` replicas behind gRPC's round_robin policy.

One edge client is given all three addresses (one channel, gRPC balances the streams). A replica is
SIGKILLed mid-training; training must finish on the other two with exactly the batches, in exactly
the order, of an uninterrupted run, and every batch must be paired with its own targets.
"""
from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from support.recording import Recording
from support.servers import make_student, make_teacher, running_server

from lnpt.cloud.process import ServerProcess, free_port
from lnpt.edge.teachers.remote import GuidanceClient, RetryPolicy
from lnpt.edge.student import load_student
from lnpt.edge.teachers import LocalTeacher
from lnpt.edge.training.image_source import ImageSource
from lnpt.edge.training.trainer import GuidedTrainer
from lnpt.shared.config import load_config
from lnpt.shared.data import FASHION_MNIST_SPEC
from lnpt.shared.teacher_model import Teacher

EPOCHS, BATCH, IMAGES = 4, 32, 320  # 10 steps per epoch; the trainer opens one stream per epoch
KILL_AT_STEP = 15  # mid-epoch 1


@dataclass
class MeteredServer(ServerProcess):
    """ServerProcess with /metrics on, to see what each replica served."""

    metrics_port: int = field(default_factory=free_port)

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples if sample.name == name)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "T.pt")


@pytest.fixture(scope="module")
def student_path(tmp_path_factory):
    return make_student(tmp_path_factory.mktemp("student") / "S.pt")


def train(student_path, images, source, log=None):
    model, record = load_student(student_path)
    config = load_config(None, [f"train.epochs={EPOCHS}", f"train.batch_size={BATCH}", "train.checkpoint_every=0"])
    trainer = GuidedTrainer(model, FASHION_MNIST_SPEC, images, source, train=config.train,
                            objective=config.objective, teacher_version=source.version,
                            student_version=record.version, log=log, progress=False)
    return trainer.run()


def test_replica_killed_mid_training_others_finish_it_without_losing_or_repeating_a_batch(
        teacher_path, student_path, fashion_train, tmp_path):
    teacher = Teacher.load(teacher_path)
    images = ImageSource(fashion_train[0][:IMAGES], FASHION_MNIST_SPEC, "subset")

    reference_events = []
    reference = Recording(LocalTeacher(teacher))
    train(student_path, images, reference, reference_events.append)

    replicas = [MeteredServer(teacher_path, log_path=tmp_path / f"replica{i}.log") for i in range(3)]
    try:
        with ThreadPoolExecutor(3) as pool:  # start side by side: each loads torch and the teacher
            list(pool.map(lambda replica: replica.start(), replicas))
        client = GuidanceClient([r.address for r in replicas], insecure=True, prefetch=4,
                                retry=RetryPolicy(max_attempts=60, max_wait_seconds=60, base_seconds=0.05,
                                                  max_seconds=0.5))
        source = Recording(client)
        events, killed = [], {}

        def streaming_replica() -> MeteredServer:
            deadline = time.monotonic() + 10
            while True:  # the previous epoch's stream may take a moment to be counted as closed
                open_ones = [r for r in replicas if r.metric("lnpt_open_streams") >= 1]
                if len(open_ones) == 1 or time.monotonic() > deadline:
                    assert len(open_ones) == 1, [r.metric("lnpt_open_streams") for r in replicas]
                    return open_ones[0]
                time.sleep(0.05)

        def log(event):
            events.append(event)
            if event["event"] == "step" and event["step"] == KILL_AT_STEP:
                victim = streaming_replica()  # the replica carrying this epoch's stream crashes
                killed["replica"] = victim
                killed["requests"] = victim.metric("lnpt_requests_total")
                victim.kill()

        result = train(student_path, images, source, log)
        survivors = [r for r in replicas if r is not killed["replica"]]
        served = {r.port: r.metric("lnpt_requests_total") for r in survivors}
        served[killed["replica"].port] = killed["requests"]
    finally:
        for replica in replicas:
            replica.kill()

    assert killed["replica"].process.returncode is not None  # it really died
    total = EPOCHS * (IMAGES // BATCH)
    assert result.steps == total
    # The same batches in the same order as the uninterrupted run: none lost, none trained twice.
    trained = [(e["epoch"], e["batch"]) for e in events if e["event"] == "step"]
    assert trained == [(e["epoch"], e["batch"]) for e in reference_events if e["event"] == "step"]
    assert len(source.asked) == len(reference.asked) == total
    for mine, theirs in zip(source.asked, reference.asked):
        assert torch.equal(mine, theirs)
    # Each answer is the teacher's targets for its own batch (float16 on the wire).
    assert len(source.answers) == total
    for asked, (features, logits) in zip(source.asked, source.answers):
        want_features, want_logits = teacher.targets(asked)
        torch.testing.assert_close(features, want_features, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(logits, want_logits, rtol=2e-3, atol=2e-3)
    # The kill hit an open stream: its unanswered batches were re-sent to another replica.
    assert client.stats["reconnects"] >= 1 and client.stats["resent"] >= 1
    assert client.stats["requests"] == client.stats["responses"] == total
    # round_robin spread the streams: every replica served requests.
    assert all(count > 0 for count in served.values()), served


def test_one_dns_name_for_all_replicas_is_accepted_as_the_kubernetes_docs_show(teacher_path, fashion_train):
    """deploy/k8s documents client.addresses = ["dns:///lnpt-guidance.NS.svc.cluster.local:50051"]."""
    with running_server(teacher_path) as srv:
        client = GuidanceClient(f"dns:///localhost:{srv.port}", insecure=True,
                                retry=RetryPolicy(max_attempts=20, max_wait_seconds=20, base_seconds=0.05))
        try:
            features, logits = client.targets(fashion_train[0][:8])
        finally:
            client.close()
    assert features.shape == (8, 84) and logits.shape == (8, 10)
