"""Faults on the way: a flaky link (a TCP proxy that delays, resets and black-holes traffic), a client
killed during a checkpoint write, and corrupt model, checkpoint, ONNX and config files.

The server SIGKILLed and restarted mid-training is covered where training lives:
tests/test_training.py::test_server_killed_mid_epoch_training_completes_without_repeating_or_skipping,
tests/test_guidance_client.py::test_server_killed_mid_stream_resends_only_unanswered_batches and
tests/test_scale_out.py (a replica killed behind round_robin); a client SIGKILLed mid-epoch in
tests/test_training.py::test_client_killed_mid_epoch_resumes_from_its_last_checkpoint.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from support.servers import make_teacher, running_server

from lnpt.lab.testing.faults import FaultProxy
from lnpt.edge.teachers.remote import GuidanceClient, RetryPolicy
from lnpt.shared.files import atomic_save
from lnpt.shared.teacher_model import Teacher

FAST_RETRY = RetryPolicy(max_attempts=40, max_wait_seconds=30, base_seconds=0.05, max_seconds=0.5)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "T.pt")


@pytest.fixture(scope="module")
def parts(fashion_train):
    images = fashion_train[0][:1920]
    return [images[i:i + 32] for i in range(0, len(images), 32)]  # 60 batches


def assert_targets_match(teacher_path, parts, received):
    """Every batch answered once, in order, with its own targets (float16 wire tolerance)."""
    local = Teacher.load(teacher_path)
    assert len(received) == len(parts)
    for part, (features, logits) in zip(parts, received):
        want_f, want_z = local.targets(part)
        torch.testing.assert_close(features, want_f, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(logits, want_z, rtol=2e-3, atol=2e-3)


def test_delayed_and_reset_connections_lose_and_repeat_no_batch(teacher_path, parts):
    with running_server(teacher_path) as srv, FaultProxy(srv.port) as proxy:
        proxy.delay = 0.005  # every chunk waits 5 ms each way
        client = GuidanceClient(proxy.address, insecure=True, prefetch=4, retry=FAST_RETRY)
        received = []
        for features, logits in client.stream(parts):
            received.append((features, logits))
            if len(received) in (10, 25, 40):  # reset the link three times mid-stream
                assert proxy.cut() >= 1
        assert_targets_match(teacher_path, parts, received)
        stats = client.stats
        assert stats["reconnects"] >= 3
        assert stats["requests"] == stats["responses"] == len(parts)
        assert 0 < stats["resent"] <= client.prefetch * stats["reconnects"]  # only unanswered batches again
        assert proxy.connections >= 4


def test_a_silently_dead_link_is_detected_by_keepalive_and_the_stream_resumes(teacher_path, parts):
    """A black-holed connection (no FIN, no RST: a dead NAT entry, a pulled cable) must not hang the
    client forever: keepalive pings go unanswered, gRPC drops the connection, the client reconnects."""
    with running_server(teacher_path) as srv, FaultProxy(srv.port) as proxy:
        client = GuidanceClient(proxy.address, insecure=True, prefetch=4, retry=FAST_RETRY, keepalive_seconds=1.0)
        received = []
        stalled_at = None
        for features, logits in client.stream(parts):
            received.append((features, logits))
            if len(received) == 20:
                assert proxy.silence() == 1
                stalled_at = time.monotonic()
        assert_targets_match(teacher_path, parts, received)
        assert client.stats["reconnects"] >= 1
        assert time.monotonic() - stalled_at < 30
        assert proxy.connections >= 2


WRITER = """
import sys, torch
from lnpt.shared.files import atomic_save
path = sys.argv[1]
i = 0
while True:
    i += 1
    atomic_save({"step": i, "weights": torch.full((2_000_000,), float(i))}, path)  # 8 MB each
    print(i, flush=True)
"""


def test_client_killed_during_checkpoint_writes_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for kill_after in (0.05, 0.5):  # the kill lands at different points of a write
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # one complete checkpoint exists
        assert first.strip()
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        state = torch.load(path, weights_only=True)
        step = state["step"]
        assert step >= 1
        assert torch.equal(state["weights"], torch.full((2_000_000,), float(step)))  # not a torn mix
    # The next write clears what the killed writers left half-written beside the checkpoint.
    atomic_save({"step": 0}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_corrupt_checkpoint_onnx_and_config_files_fail_clearly_and_are_left_alone(tmp_path):
    from lnpt.edge.onnx.onnx_export import ExportError
    from lnpt.edge.onnx.verify import session
    from lnpt.edge.training.checkpoints import load_checkpoint, save_checkpoint
    from lnpt.shared.model_file import ModelFileError
    from lnpt.shared.config import ConfigError, load_config

    good = save_checkpoint(tmp_path / "good.ckpt", {"step": 3})
    cases = {"truncated.ckpt": good.read_bytes()[:len(good.read_bytes()) // 2], "garbage.ckpt": b"\x00\xffnot torch",
             "empty.ckpt": b""}
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ModelFileError, match=f"{name}: (unreadable checkpoint|not an lnpt training checkpoint)"):
            load_checkpoint(path)
        assert path.read_bytes() == data  # a failed load never rewrites the file

    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"\x08\x07garbage that is not a model")
    with pytest.raises(ExportError, match="cannot load"):
        session(onnx_path)

    for name, text, where in (("syntax.toml", "[server\nport = 1", "syntax.toml"),
                              ("binary.toml", "\udcff", "binary.toml"),
                              ("type.toml", "[server]\nport = \"fifty\"\n", "server.port")):
        path = tmp_path / name
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        before = path.read_bytes()
        with pytest.raises(ConfigError, match=where):
            load_config(path)
        assert path.read_bytes() == before
