"""TLS, mutual TLS and bearer tokens on a real server, with certificates made on the fly."""
from __future__ import annotations

import logging
import subprocess

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.servers import make_teacher, running_server

from lnpt.cloud.certs import TestPki, generate_test_pki
from lnpt.shared.codec import encode
from lnpt.shared.config import ConfigError
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.protocol import guidance_pb2_grpc

TIMEOUT = 30
TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "lenet5.pt")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory) -> TestPki:
    return generate_test_pki(tmp_path_factory.mktemp("other-pki"))


def tls_credentials(ca: TestPki, client: TestPki | None = None) -> grpc.ChannelCredentials:
    chain = (client.client_key.read_bytes(), client.client_cert.read_bytes()) if client else (None, None)
    return grpc.ssl_channel_credentials(ca.ca_cert.read_bytes(), *chain)


def teacher_info(channel: grpc.Channel, metadata=None) -> pb.TeacherInfo:
    return guidance_pb2_grpc.GuidanceStub(channel).GetTeacherInfo(pb.GetTeacherInfoRequest(), timeout=TIMEOUT,
                                                                   metadata=metadata)


def stream_once(channel: grpc.Channel, metadata=None) -> list[int]:
    request = pb.TargetsRequest(request_id=5, images=encode(torch.zeros(1, 1, 28, 28, dtype=torch.uint8)))
    stub = guidance_pb2_grpc.GuidanceStub(channel)
    return [a.request_id for a in stub.StreamTargets(iter([request]), timeout=TIMEOUT, metadata=metadata)]


def test_tls_accepts_the_right_ca_and_refuses_others(teacher_path, pki, other_pki):
    with running_server(teacher_path, tls=pki) as srv:
        with grpc.secure_channel(srv.tls_address, tls_credentials(pki)) as channel:
            assert teacher_info(channel).teacher_id == "lenet5"
            assert stream_once(channel) == [5]
        with grpc.secure_channel(srv.tls_address, tls_credentials(other_pki)) as channel:  # untrusted server cert
            with pytest.raises(grpc.RpcError) as caught:
                teacher_info(channel)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(srv.address) as channel:  # plaintext to a TLS port
            with pytest.raises(grpc.RpcError) as caught:
                teacher_info(channel)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_ca(teacher_path, pki, other_pki):
    with running_server(teacher_path, tls=pki, mutual=True) as srv:
        with grpc.secure_channel(srv.tls_address, tls_credentials(pki, client=pki)) as channel:
            assert stream_once(channel) == [5]
        for client in (None, other_pki):  # no certificate; a certificate from another CA
            with grpc.secure_channel(srv.tls_address, tls_credentials(pki, client=client)) as channel:
                with pytest.raises(grpc.RpcError) as caught:
                    teacher_info(channel)
                assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_gen_certs_script_makes_certificates_the_server_accepts(teacher_path, repo_root, tmp_path):
    done = subprocess.run(["bash", str(repo_root / "deploy" / "gen-certs.sh"), str(tmp_path / "certs")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "certs"
    pki = TestPki(folder, folder / "ca.pem", folder / "server.pem", folder / "server.key",
                  folder / "client.pem", folder / "client.key")
    assert oct(pki.server_key.stat().st_mode & 0o777) == "0o600"
    with running_server(teacher_path, tls=pki, mutual=True) as srv:
        with grpc.secure_channel(f"127.0.0.1:{srv.port}", tls_credentials(pki, client=pki)) as channel:  # IP SAN
            assert stream_once(channel) == [5]


def test_bearer_tokens_are_checked_and_never_logged(teacher_path, pki, tmp_path, caplog):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one token per line\n{TOKEN}\nanother-valid-token\n")
    caplog.set_level(logging.DEBUG, logger="lnpt")
    with running_server(teacher_path, [f'server.tokens_file="{tokens}"'], tls=pki) as srv:
        with grpc.secure_channel(srv.tls_address, tls_credentials(pki)) as channel:
            assert stream_once(channel, [("authorization", f"Bearer {TOKEN}")]) == [5]
            assert teacher_info(channel, [("authorization", "bearer another-valid-token")]).teacher_id == "lenet5"
            refused = [None, [("authorization", "Bearer wrong-token")], [("authorization", TOKEN)],
                       [("authorization", f"Bearer {TOKEN}x")]]
            for metadata in refused:
                for call in (teacher_info, stream_once):
                    with pytest.raises(grpc.RpcError) as caught:
                        call(channel, metadata)
                    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert "authorization: Bearer <token>" in caught.value.details()
            # Probes need no token.
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert "refused a call" in caplog.text
    assert TOKEN not in caplog.text and "wrong-token" not in caplog.text


def test_tls_is_on_unless_insecure_is_asked_for(teacher_path, tmp_path):
    with pytest.raises(ConfigError, match="TLS is on by default.*--insecure"):
        with running_server(teacher_path, ["server.insecure=false"]):
            pass
    empty = tmp_path / "empty-tokens"
    empty.write_text("\n# nothing here\n")
    with pytest.raises(ConfigError, match="holds no token"):
        with running_server(teacher_path, [f'server.tokens_file="{empty}"']):
            pass
