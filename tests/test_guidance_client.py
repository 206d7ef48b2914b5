"""The edge guidance client against real guidance servers on loopback (thread or subprocess)."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from support.servers import make_teacher, running_server, server_process

from lnpt.edge.teachers.remote import (GuidanceAuthError, GuidanceClient, GuidanceError, GuidanceUnavailable,
                                RetryPolicy, TeacherMismatch, channel_target)
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.teacher_model import Teacher

FAST_RETRY = RetryPolicy(max_attempts=40, max_wait_seconds=30, base_seconds=0.05, max_seconds=0.5)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "T.pt")


@pytest.fixture(scope="module")
def images(fashion_train):
    return fashion_train[0][:2048]


def batches(images, size=64):
    return [images[i:i + size] for i in range(0, len(images), size)]


def test_stream_returns_the_teachers_targets_for_each_batch_in_order(teacher_path, images):
    local = Teacher.load(teacher_path)
    with running_server(teacher_path) as srv, GuidanceClient(srv.address, insecure=True, prefetch=4) as client:
        assert client.info.teacher_version == local.version
        parts = batches(images)
        got = list(client.stream(parts))
        assert len(got) == len(parts)
        for part, (features, logits) in zip(parts, got):
            want_f, want_z = local.targets(part)
            assert features.dtype == torch.float32 and features.shape == want_f.shape
            # float16 on the wire by default: equal to the teacher within half precision
            torch.testing.assert_close(features, want_f, rtol=2e-3, atol=2e-3)
            torch.testing.assert_close(logits, want_z, rtol=2e-3, atol=2e-3)
        assert client.stats["requests"] == client.stats["responses"] == len(parts)
        assert client.stats["reconnects"] == 0
        one_f, _ = client.targets(parts[0][:3])  # the simple synchronous call used by `lnpt prune`
        assert one_f.shape == (3, local.feature_dim)


def test_float32_wire_is_exact(teacher_path, images):
    local = Teacher.load(teacher_path)
    with running_server(teacher_path) as srv, \
            GuidanceClient(srv.address, insecure=True, target_wire="float32") as client:
        features, logits = client.targets(images[:32])
        want_f, want_z = local.targets(images[:32])
        torch.testing.assert_close(features, want_f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits, want_z, rtol=1e-5, atol=1e-5)


def test_student_mismatch_and_version_mismatch_are_refused(teacher_path, images):
    with running_server(teacher_path) as srv, GuidanceClient(srv.address, insecure=True) as client:
        client.check_student(10, 84)  # a matching lenet5 student passes
        # Another resolution is not a mismatch: the client resizes uint8 images to the teacher's input.
        big = torch.nn.functional.interpolate(images[:4].float(), size=(40, 36)).round().to(torch.uint8)
        features, logits = client.targets(big)
        assert features.shape == (4, 84) and logits.shape == (4, 10)
        with pytest.raises(TeacherMismatch, match="10 classes, the student 100"):
            client.check_student(100, 84)
        with pytest.raises(TeacherMismatch, match="84 penultimate features, the student 64"):
            client.check_student(10, 64)
        client.check_student(10, 64, projector=True)
        with pytest.raises(TeacherMismatch, match="runs version .* but this run needs 0123456789abcdef"):
            GuidanceClient(srv.address, insecure=True, expected_version="0123456789abcdef").targets(images[:4])


def test_token_errors_fail_fast_without_retrying(teacher_path, images, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("right-token-0123456789\n")
    slow = RetryPolicy(max_attempts=50, max_wait_seconds=600, base_seconds=5, max_seconds=5)
    with running_server(teacher_path, overrides=[f'server.tokens_file="{tokens}"']) as srv:
        for token in ("", "wrong-token-0123456789"):
            client = GuidanceClient(srv.address, insecure=True, token=token, retry=slow)
            with pytest.raises(GuidanceAuthError, match="UNAUTHENTICATED"):
                client.targets(images[:4])
            assert client.stats["reconnects"] == 0
        ok = GuidanceClient(srv.address, insecure=True, token="right-token-0123456789")
        assert ok.targets(images[:4])[0].shape == (4, 84)


def test_tls_and_mutual_tls(teacher_path, images, tmp_path):
    from lnpt.cloud.certs import generate_test_pki

    pki = generate_test_pki(tmp_path / "pki")
    slow = RetryPolicy(max_attempts=50, max_wait_seconds=600, base_seconds=5, max_seconds=5)
    with running_server(teacher_path, tls=pki, mutual=True) as srv:
        good = GuidanceClient(srv.tls_address, ca_cert=str(pki.ca_cert), client_cert=str(pki.client_cert),
                              client_key=str(pki.client_key))
        assert good.targets(images[:4])[0].shape == (4, 84)
        # The server's certificate is not signed by a CA the client trusts: no retry, a clear error.
        untrusted = GuidanceClient(srv.tls_address, client_cert=str(pki.client_cert),
                                   client_key=str(pki.client_key), retry=slow)
        with pytest.raises(GuidanceAuthError, match="TLS handshake .* failed.*CERTIFICATE_VERIFY_FAILED"):
            untrusted.targets(images[:4])
    with pytest.raises(GuidanceError, match="needs both client.client_cert and client.client_key"):
        GuidanceClient("localhost:1", client_cert=str(pki.client_cert))


def test_unreachable_server_gives_up_within_the_bounded_budget(images):
    from support.servers import free_port

    client = GuidanceClient(f"127.0.0.1:{free_port()}", insecure=True,
                            retry=RetryPolicy(max_attempts=4, max_wait_seconds=5, base_seconds=0.01, max_seconds=0.05))
    with pytest.raises(GuidanceUnavailable, match="unreachable after 4 attempts"):
        client.targets(images[:4])


def test_server_killed_mid_stream_resends_only_unanswered_batches(teacher_path, images, tmp_path):
    local = Teacher.load(teacher_path)
    parts = batches(images, 32)
    with server_process(teacher_path, log_path=tmp_path / "server.log") as proc:
        client = GuidanceClient(proc.address, insecure=True, prefetch=4, retry=FAST_RETRY)
        received = []
        for features, logits in client.stream(parts):
            received.append((features, logits))
            if len(received) == 20:
                proc.kill()
                threading.Timer(0.5, proc.start).start()
        assert len(received) == len(parts)  # nothing skipped
        for part, (features, _) in zip(parts, received):  # nothing paired with another batch
            torch.testing.assert_close(features, local.targets(part)[0], rtol=2e-3, atol=2e-3)
        stats = client.stats
        assert stats["reconnects"] >= 1
        # Only batches in flight at the crash (at most `prefetch` per attempt) were sent again.
        assert 0 < stats["resent"] <= 4 * stats["reconnects"]
        assert stats["requests"] == stats["responses"] == len(parts)


def test_queue_full_is_retried_until_a_slot_frees(teacher_path, images):
    with running_server(teacher_path, overrides=["server.max_streams=1"]) as srv:
        holder = GuidanceClient(srv.address, insecure=True)
        release = threading.Event()

        def hold_the_only_stream():
            def slow_batches():
                yield images[:4]
                release.wait(30)
            for _ in holder.stream(slow_batches()):
                pass

        thread = threading.Thread(target=hold_the_only_stream)
        thread.start()
        deadline = time.monotonic() + 10
        open_streams = lambda: srv.server.metrics.registry.get_sample_value("lnpt_open_streams")  # noqa: E731
        while open_streams() != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        threading.Timer(1.0, release.set).start()
        client = GuidanceClient(srv.address, insecure=True, retry=FAST_RETRY)
        features, _ = client.targets(images[:8])  # RESOURCE_EXHAUSTED first, then served
        thread.join(30)
        assert features.shape == (8, 84)
        assert client.stats["reconnects"] >= 1


def test_several_addresses_are_balanced_round_robin_by_grpc(teacher_path, images):
    assert channel_target(["127.0.0.1:1", "127.0.0.1:2"]) == "ipv4:127.0.0.1:1,127.0.0.1:2"
    with pytest.raises(GuidanceError, match="must be IP:PORT literals"):
        channel_target(["teacher-a:1", "teacher-b:2"])
    with running_server(teacher_path) as a, running_server(teacher_path) as b:
        client = GuidanceClient([a.address, b.address], insecure=True, retry=FAST_RETRY)
        served = lambda: [s.server.metrics.registry.get_sample_value("lnpt_requests_total") or 0  # noqa: E731
                          for s in (a, b)]
        for _ in range(40):  # each call is a new stream; round_robin spreads them once both are connected
            client.targets(images[:4])
            if min(served()) >= 3:
                break
        assert min(served()) >= 3, served()
        a.stop()  # one replica goes away: the channel keeps serving from the other
        for _ in range(4):
            assert client.targets(images[:4])[0].shape == (4, 84)


def test_wire_formats_follow_what_the_server_offers(teacher_path, images):
    with running_server(teacher_path) as srv:
        client = GuidanceClient(srv.address, insecure=True)
        assert pb.DTYPE_UINT8 in client.info.input_dtypes and pb.DTYPE_FLOAT16 in client.info.target_dtypes
        request = client._request(images[:2], pb.DTYPE_UINT8, pb.DTYPE_FLOAT16)
        assert request.images.dtype == pb.DTYPE_UINT8 and len(request.images.data) == 2 * 28 * 28
        assert request.expected_teacher_version == client.info.teacher_version
        with pytest.raises(GuidanceError, match="at most 256 per request"):
            client._request(images[:300], pb.DTYPE_UINT8, pb.DTYPE_FLOAT16)
