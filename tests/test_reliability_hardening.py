"""What an outside client once broke (issue 18), against a real server on loopback: idle connection
floods, oversized but valid requests, unbounded health watches and stream slots, the metrics
endpoint, echoed values and forged log lines, and the smaller refusals."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support.servers import make_teacher, running_server

from lnpt.lab.testing.faults import good_request_bytes, idle_connections, request_bytes, tensor_bytes
from lnpt.shared.codec import encode
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.protocol import guidance_pb2_grpc

STREAM = "/lnpt.v1.Guidance/StreamTargets"
INFO = "/lnpt.v1.Guidance/GetTeacherInfo"
TIMEOUT = 30
TOKEN = "hardening-test-token-0123456789"


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "lenet5.pt")


def raw(channel, method=STREAM, streaming=True):
    identity = dict(request_serializer=lambda b: b, response_deserializer=lambda b: b)
    return channel.stream_stream(method, **identity) if streaming else channel.unary_unary(method, **identity)


def health_check(address: str) -> float:
    """Seconds a fresh channel's health Check takes; raises when it fails."""
    started = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return time.monotonic() - started


def one_stream(address: str, metadata=None) -> list:
    with grpc.insecure_channel(address) as channel:
        return list(raw(channel)(iter([good_request_bytes(1)]), timeout=5, metadata=metadata))


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


# --- 1. connection floods ---------------------------------------------------------------------------

def test_idle_connection_flood_from_one_address_is_held_off_and_others_still_served(teacher_path):
    with running_server(teacher_path, ["server.max_connections_per_client=16"]) as srv:
        with idle_connections(srv.port, 400, source="127.0.0.2") as flood:
            closed = flood.wait_closed(at_least=400 - 16, timeout=10)
            assert closed >= 400 - 16, f"only {closed} of 400 idle connections from one address were closed"
            # Another client (127.0.0.1) is served at once while the flood's 16 stay open.
            assert health_check(srv.address) < 1.0
            assert len(one_stream(srv.address)) == 1
            assert flood.open_count() <= 16
        assert metric(srv.metrics_port, "lnpt_connections_held_off_total") >= 400 - 16


def test_connections_that_never_finish_the_handshake_are_closed(teacher_path):
    overrides = ["server.handshake_timeout_seconds=0.5", "server.max_connections_per_client=0"]
    with running_server(teacher_path, overrides) as srv:
        with idle_connections(srv.port, 20) as silent:
            assert silent.wait_closed(at_least=20, timeout=5) == 20


def test_health_port_answers_while_the_main_port_is_full(teacher_path):
    overrides = ["server.health_port=0", "server.max_connections=8", "server.max_connections_per_client=0"]
    with running_server(teacher_path, overrides) as srv:
        with idle_connections(srv.port, 8, source="127.0.0.2"):
            time.sleep(0.3)
            with pytest.raises(grpc.RpcError):  # the main port holds 8 connections: a ninth is closed
                health_check(srv.address)
            assert health_check(f"127.0.0.1:{srv.server.health_port}") < 1.0


# --- 2. message limit and in-flight memory -----------------------------------------------------------

def test_receive_limit_follows_the_teacher_and_is_advertised(teacher_path):
    with running_server(teacher_path) as srv, grpc.insecure_channel(srv.address) as channel:
        info = guidance_pb2_grpc.GuidanceStub(channel).GetTeacherInfo(pb.GetTeacherInfoRequest(), timeout=TIMEOUT)
        limit = 256 * 1 * 28 * 28 * 4 + 16 * 1024  # batcher.max_request_batch float32 images + header room
        assert info.max_message_bytes == limit
        # A full batch of float32 images, the largest legal request, fits ...
        full = pb.TargetsRequest(request_id=1, images=encode(torch.zeros(256, 1, 28, 28)))
        assert len(list(guidance_pb2_grpc.GuidanceStub(channel).StreamTargets(iter([full]), timeout=TIMEOUT))) == 1
        # ... a valid request padded past the limit with a repeated field (merge semantics) does not.
        padded = good_request_bytes(2) + request_bytes(2, tensor_bytes([2, 1, 28, 28], 1, bytes(limit)))
        with pytest.raises(grpc.RpcError) as caught:
            list(raw(channel)(iter([padded]), timeout=TIMEOUT))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_requests_beyond_the_inflight_budget_are_refused_and_retryable(teacher_path):
    # One 8-image request costs 37,376 bytes (images, float32 input, answers): the budget holds one.
    overrides = ["server.max_inflight_bytes=40000", "batcher.max_queue_delay_ms=300", "batcher.max_batch_size=64"]
    with running_server(teacher_path, overrides) as srv, grpc.insecure_channel(srv.address) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            list(raw(channel)(iter([good_request_bytes(i, n=8) for i in range(3)]), timeout=TIMEOUT))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.max_inflight_bytes = 40000" in caught.value.details()
        assert metric(srv.metrics_port, "lnpt_inflight_bytes") == 0  # released when the stream ended
        assert len(list(raw(channel)(iter([good_request_bytes(9, n=8)]), timeout=TIMEOUT))) == 1


# --- 3. health watches and stream slots per token ----------------------------------------------------

def test_health_watches_are_bounded_and_counted(teacher_path):
    with running_server(teacher_path, ["server.max_health_watches=2"]) as srv, \
            grpc.insecure_channel(srv.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(health_pb2.HealthCheckRequest(service=f"s{i}"), timeout=TIMEOUT) for i in range(2)]
        assert [next(w).status for w in watches] == [health_pb2.HealthCheckResponse.SERVICE_UNKNOWN] * 2
        with pytest.raises(grpc.RpcError) as caught:
            next(health.Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.max_health_watches" in caught.value.details()
        assert metric(srv.metrics_port, "lnpt_health_watches") == 2
        for w in watches:
            w.cancel()
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status == health_pb2.HealthCheckResponse.SERVING


def test_one_token_cannot_hold_more_than_its_stream_slots(teacher_path, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\nsecond-token-abcdefghijklmnop\n")
    overrides = [f'server.tokens_file="{tokens}"', "server.max_streams_per_token=1", "server.max_streams_per_client=0"]
    release = threading.Event()

    def one_then_wait():
        yield good_request_bytes(1)
        release.wait(TIMEOUT)

    with running_server(teacher_path, overrides) as srv, grpc.insecure_channel(srv.address) as channel:
        mine = [("authorization", f"Bearer {TOKEN}")]
        held = raw(channel)(one_then_wait(), timeout=TIMEOUT, metadata=mine)
        assert next(held)
        with pytest.raises(grpc.RpcError) as caught:
            one_stream(srv.address, mine)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.max_streams_per_token" in caught.value.details()
        assert TOKEN not in caught.value.details()
        assert len(one_stream(srv.address, [("authorization", "Bearer second-token-abcdefghijklmnop")])) == 1
        release.set()
        assert list(held) == []


# --- 4. metrics endpoint -----------------------------------------------------------------------------

def test_metrics_endpoint_has_no_banner_and_can_require_the_token(teacher_path, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    overrides = [f'server.tokens_file="{tokens}"', "server.metrics_require_token=true"]
    with running_server(teacher_path, overrides) as srv:
        url = f"http://127.0.0.1:{srv.metrics_port}/metrics"
        idle = [socket.create_connection(("127.0.0.1", srv.metrics_port)) for _ in range(8)]  # more than the pool
        try:
            time.sleep(0.2)
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(url, timeout=10)
        finally:
            for sock in idle:
                sock.close()
        assert caught.value.code in (401, 503)
        deadline = time.monotonic() + 10
        while True:  # the idle connections are gone; the pool is free again
            try:
                urllib.request.urlopen(url, timeout=10)
            except urllib.error.HTTPError as error:
                if error.code == 401:
                    assert "Python" not in (error.headers.get("Server") or "")
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert b"lnpt_open_streams" in reply.read()
            assert "Python" not in reply.headers.get("Server", "")


# --- 5. echoed values and log lines ------------------------------------------------------------------

def test_huge_echoed_values_are_shortened_and_stay_invalid_argument(teacher_path):
    with running_server(teacher_path) as srv, grpc.insecure_channel(srv.address) as channel:
        pin = request_bytes(1, tensor_bytes([2, 1, 28, 28], 1, bytes(1568)), version="v" * 200_000)
        shape = request_bytes(1, tensor_bytes([1] * 100_000, 1, b"\0"))
        for payload in (pin, shape):
            with pytest.raises(grpc.RpcError) as caught:
                list(raw(channel)(iter([payload]), timeout=TIMEOUT))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()[:200]
            assert len(caught.value.details()) < 1100


def test_every_log_record_is_one_escaped_line_including_grpc_core_output():
    script = (
        "import logging, os, sys\n"
        "from lnpt.cloud.logs import route_native_stderr, setup_logging\n"
        "setup_logging(sys.argv[1])\n"
        "route_native_stderr()\n"
        "logging.getLogger('lnpt.test').warning('pin %s', 'a\\nFORGED 2026 INFO lnpt: fake')\n"
        "os.write(2, b'E1201 10:00:00.000000  1 ssl.cc:1] No match found for server name: x\\nFORGED line\\n')\n"
        "import time; time.sleep(0.5)\n"
    )
    for log_format in ("text", "json"):
        done = subprocess.run([sys.executable, "-c", script, log_format], capture_output=True, text=True, timeout=60)
        lines = done.stderr.splitlines()
        assert not any(line.startswith("FORGED") for line in lines), done.stderr
        assert len(lines) == 2, done.stderr
        assert "grpc.core" in lines[1] and "FORGED line" in lines[1]
        if log_format == "json":
            assert [json.loads(line)["logger"] for line in lines] == ["lnpt.test", "grpc.core"]


# --- 6. the smaller ones -----------------------------------------------------------------------------

def test_extreme_float_input_is_refused_instead_of_answering_inf(teacher_path):
    with running_server(teacher_path) as srv, grpc.insecure_channel(srv.address) as channel:
        stub = guidance_pb2_grpc.GuidanceStub(channel)
        extreme = pb.TargetsRequest(request_id=4, images=encode(torch.full((2, 1, 28, 28), 3e38)),
                                    target_dtype=pb.DTYPE_FLOAT16)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.StreamTargets(iter([extreme]), timeout=TIMEOUT))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request 4: the teacher's targets for these images are not finite" in caught.value.details()


def test_malformed_teacher_info_request_is_invalid_argument(teacher_path):
    with running_server(teacher_path) as srv, grpc.insecure_channel(srv.address) as channel:
        for payload in (b"\xff\xff\xff", pb.GetTeacherInfoRequest().SerializeToString() + b"\x08\x01"):
            with pytest.raises(grpc.RpcError) as caught:
                raw(channel, INFO, streaming=False)(payload, timeout=TIMEOUT)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "Error" not in caught.value.details().split("(")[0]
        assert raw(channel, INFO, streaming=False)(b"", timeout=TIMEOUT)  # the empty request still works


def test_short_tokens_are_refused_and_plaintext_tokens_warned_about(teacher_path, tmp_path, caplog):
    from lnpt.cloud.security import load_tokens
    from lnpt.shared.config import ConfigError

    short = tmp_path / "short"
    short.write_text(f"{TOKEN}\nabc\n")
    with pytest.raises(ConfigError, match="token 2 .* fewer than 16 characters"):
        load_tokens(str(short))
    good = tmp_path / "tokens"
    good.write_text(TOKEN + "\n")
    with caplog.at_level("WARNING", logger="lnpt"), running_server(teacher_path, [f'server.tokens_file="{good}"']):
        pass
    assert any("bearer tokens over plaintext" in r.getMessage() for r in caplog.records)


def serve_exit(teacher_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lnpt.shared.cli", "serve", "--checkpoint", str(teacher_path),
                           "--insecure", "--port", "0", *args], capture_output=True, text=True, timeout=120)


def test_busy_metrics_port_and_missing_cuda_end_with_a_clean_message(teacher_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        done = serve_exit(teacher_path, "--metrics-port", str(busy.getsockname()[1]))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "cannot serve /metrics on 127.0.0.1" in done.stderr and "Traceback" not in done.stderr
    if torch.cuda.is_available():
        return
    for device in ("cuda", "cuda:0"):
        done = serve_exit(teacher_path, "--metrics-port", "-1", "--set", f"batcher.device={device}")
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert f"batcher.device = '{device}', but torch sees no CUDA device here" in done.stderr


def test_envoy_front_proxy_config_routes_guidance_with_the_servers_budgets(repo_root):
    import yaml

    config = yaml.safe_load((repo_root / "deploy" / "envoy" / "envoy.yaml").read_text())
    listener = config["static_resources"]["listeners"][0]
    chain = listener["filter_chains"][0]
    manager = next(f for f in chain["filters"] if f["name"] == "envoy.filters.network.http_connection_manager")
    options = manager["typed_config"]["common_http_protocol_options"]
    assert (options["idle_timeout"], options["max_connection_duration"]) == ("120s", "3600s")
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert {r["match"]["prefix"] for r in routes} == {"/lnpt.v1.Guidance/", "/grpc.health.v1.Health/Check"}
    cluster = config["static_resources"]["clusters"][0]
    assert {r["route"]["cluster"] for r in routes} == {cluster["name"]}
    assert cluster["health_checks"][0]["grpc_health_check"]["service_name"] == "lnpt.v1.Guidance"
