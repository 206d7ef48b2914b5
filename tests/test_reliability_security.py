"""Security refusals not covered by tests/test_cloud_security.py (right/wrong CA, plaintext to a TLS
port, mutual TLS, tokens) and tests/test_guidance_client.py (token errors are not retried): expired
and wrong-host server certificates, a token on a plaintext channel, the per-stream message and
batch limits as the edge client meets them, and the token kept out of every log."""
from __future__ import annotations

import grpc
import pytest
import torch
from support.servers import make_teacher, running_server, server_process

from lnpt.lab.testing.faults import expired_certificate, wrong_host_certificate
from lnpt.cloud.certs import TestPki
from lnpt.edge.teachers.remote import GuidanceAuthError, GuidanceClient, GuidanceError, RetryPolicy
from lnpt.shared.codec import encode
from lnpt.shared.config import load_config
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.protocol import guidance_pb2_grpc

TOKEN = "rel-s3cret-7f1d-a04c"
NO_RETRY = RetryPolicy(max_attempts=2, max_wait_seconds=1, base_seconds=0.01, max_seconds=0.01)


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "T.pt")


def pixels(n: int) -> torch.Tensor:
    return torch.zeros(n, 1, 28, 28, dtype=torch.uint8)


@pytest.mark.parametrize("make_cert, why", [(expired_certificate, "expired"), (wrong_host_certificate, "another host")])
def test_expired_or_wrong_host_certificate_is_refused_without_retrying(teacher_path, pki, make_cert, why):
    cert, key = make_cert(pki.folder)
    bad = TestPki(pki.folder, pki.ca_cert, cert, key, pki.client_cert, pki.client_key)
    with running_server(teacher_path, tls=bad) as srv:
        client = GuidanceClient(srv.tls_address, ca_cert=str(pki.ca_cert),
                                retry=RetryPolicy(max_attempts=50, max_wait_seconds=600, base_seconds=5))
        with pytest.raises(GuidanceAuthError, match="TLS handshake"):  # fails fast: no 50 x 5 s backoff
            client.targets(pixels(2))
        # The same CA with a good certificate on the same kind of server works (the CA is not the problem).
    with running_server(teacher_path, tls=pki) as srv:
        assert GuidanceClient(srv.tls_address, ca_cert=str(pki.ca_cert)).targets(pixels(2))[0].shape == (2, 84)


def test_a_token_is_never_sent_in_plaintext_beyond_this_machine(teacher_path, tmp_path):
    with pytest.raises(GuidanceError, match="refusing to send the bearer token in plaintext"):
        GuidanceClient("10.0.0.7:50051", insecure=True, token=TOKEN)
    with pytest.raises(GuidanceError, match="client.allow_insecure_token"):
        GuidanceClient(["127.0.0.1:1", "192.0.2.1:50051"], insecure=True, token=TOKEN)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = load_config(None, ["client.insecure=true", f'client.token_file="{token_file}"'])
    with pytest.raises(GuidanceError, match="plaintext"):
        GuidanceClient.from_config(config.client, ["teacher.example.org:50051"])
    # Allowed: loopback (a local sidecar or test), explicit opt-in, or TLS.
    config = load_config(None, ["client.insecure=true", f'client.token_file="{token_file}"',
                                "client.allow_insecure_token=true"])
    GuidanceClient.from_config(config.client, ["teacher.example.org:50051"]).close()
    GuidanceClient("teacher.example.org:50051", token=TOKEN).close()
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    with running_server(teacher_path, [f'server.tokens_file="{tokens}"']) as srv:
        assert GuidanceClient(srv.address, insecure=True, token=TOKEN).targets(pixels(1))[0].shape == (1, 84)


def test_limits_message_size_and_batch_are_enforced_with_clear_status(teacher_path):
    overrides = ["batcher.max_request_batch=16", "server.max_message_bytes=32768"]
    with running_server(teacher_path, overrides) as srv, grpc.insecure_channel(
            srv.address, options=[("grpc.max_send_message_length", 1 << 24)]) as channel:
        stub = guidance_pb2_grpc.GuidanceStub(channel)
        # 17 images is over the batch limit but under the message limit (17 x 784 B = 13 kB).
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.StreamTargets(iter([pb.TargetsRequest(request_id=1, images=encode(pixels(17)))]), timeout=30))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 16 per request" in caught.value.details()
        # 48 images: 37 kB, over server.max_message_bytes; gRPC refuses it before parsing.
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.StreamTargets(iter([pb.TargetsRequest(request_id=2, images=encode(pixels(48)))]), timeout=30))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "larger than max" in caught.value.details()
        # The edge client knows the limits from GetTeacherInfo and splits a larger batch to fit them.
        client = GuidanceClient(srv.address, insecure=True, retry=NO_RETRY)
        features, _ = client.targets(pixels(17))
        assert features.shape == (17, 84)
        assert client.stats["reconnects"] == 0


def test_token_never_reaches_the_server_log_even_under_attack(teacher_path, pki, tmp_path):
    """A server process, refused and accepted calls, garbage in the authorization header: the log
    names what happened and never contains a token, right or wrong."""
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    log = tmp_path / "server.log"
    with server_process(teacher_path, [f'server.tokens_file="{tokens}"', "server.log_format=\"json\""], tls=pki,
                        log_path=log) as proc:
        credentials = grpc.ssl_channel_credentials(pki.ca_cert.read_bytes())
        with grpc.secure_channel(proc.address, credentials) as channel:
            stub = guidance_pb2_grpc.GuidanceStub(channel)
            for metadata in ([("authorization", f"Bearer {TOKEN}-wrong")], [("authorization", f"Basic {TOKEN}")],
                             [("authorization", "Bearer " + "A" * 4000)], None):
                with pytest.raises(grpc.RpcError) as caught:
                    stub.GetTeacherInfo(pb.GetTeacherInfoRequest(), metadata=metadata, timeout=30)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        client = GuidanceClient(proc.address, ca_cert=str(pki.ca_cert), token=TOKEN)
        assert client.targets(pixels(2))[0].shape == (2, 84)
        proc.terminate()
    text = log.read_text()
    assert text.count("refused a call") == 4
    assert TOKEN not in text and "A" * 100 not in text
