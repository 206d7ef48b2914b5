"""The guidance server under load, slow and stalled clients, and hostile input (hypothesis), each
against a real `lnpt serve` process: it must not crash, leak streams or memory, or delay healthy
clients, and every bad input must end its own stream with a defined status code.

Queue-full retry of a single client, malformed-request cases by name, stream limits and idle cuts
are in tests/test_cloud_server.py and tests/test_guidance_client.py; `lnpt bench reliability` runs
the same scenarios at full size (32 streams x 200 batches, thousands of hostile inputs).
"""
from __future__ import annotations

import random
import threading
import time

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.servers import make_teacher

from lnpt.lab.testing.faults import (good_request_bytes, hostile_request, metrics, peak_rss_bytes, request_bytes,
                                    rss_bytes, send_tcp_garbage, tensor_bytes, wait_for)
from lnpt.cloud.process import ServerProcess, free_port
from lnpt.edge.teachers.remote import GuidanceClient, RetryPolicy
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.teacher_model import Teacher

STREAM_METHOD = "/lnpt.v1.Guidance/StreamTargets"
RETRY = RetryPolicy(max_attempts=200, max_wait_seconds=60, base_seconds=0.02, max_seconds=0.3)
DEFINED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}
MAX_MESSAGE = 65536
MiB = 1 << 20


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "T.pt")


@pytest.fixture(scope="module")
def local(teacher_path):
    return Teacher.load(teacher_path)


def start_server(teacher_path, tmp_path, overrides=()) -> ServerProcess:
    return ServerProcess(teacher_path, metrics_port=free_port(), log_path=tmp_path / "server.log",
                         overrides=["server.grace_seconds=2", *overrides]).start()


def run_clients(address: str, batches_per_client: list[list[torch.Tensor]]) -> list[dict]:
    """One GuidanceClient per thread, all at once; returns per client: targets, stats, error."""
    results = [dict(targets=[], stats=None, error=None) for _ in batches_per_client]
    start = threading.Barrier(len(batches_per_client))

    def one(i: int) -> None:
        client = GuidanceClient(address, insecure=True, prefetch=2, retry=RETRY)
        try:
            client.info  # connect before the barrier so the streams really start together
            start.wait(60)
            results[i]["targets"] = list(client.stream(batches_per_client[i]))
        except Exception as exc:
            results[i]["error"] = exc
        finally:
            results[i]["stats"] = client.stats
            client.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(batches_per_client))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return results


def client_batches(images: torch.Tensor, clients: int, per_client: int, size: int) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [[images[torch.randint(0, len(images), (size,), generator=g)] for _ in range(per_client)]
            for _ in range(clients)]


def assert_every_answer_is_its_own(local: Teacher, batches, results) -> None:
    for client_batches_, result in zip(batches, results):
        assert result["error"] is None, result["error"]
        assert len(result["targets"]) == len(client_batches_)
        for images, (features, logits) in zip(client_batches_, result["targets"]):
            want_f, want_z = local.targets(images)
            torch.testing.assert_close(features, want_f, rtol=2e-3, atol=2e-3)
            torch.testing.assert_close(logits, want_z, rtol=2e-3, atol=2e-3)


def test_32_concurrent_streams_all_answered_and_a_saturated_queue_is_retried(teacher_path, local, fashion_train,
                                                                            tmp_path):
    batches = client_batches(fashion_train[0][:4096], clients=32, per_client=10, size=8)
    with start_server(teacher_path, tmp_path) as proc:
        results = run_clients(proc.address, batches)
        assert_every_answer_is_its_own(local, batches, results)
        assert sum(r["stats"]["reconnects"] for r in results) == 0  # plenty of room: no error at all
        m = metrics(proc)
        assert m["lnpt_samples_served_total"] == 32 * 10 * 8
        assert not any(name.startswith("lnpt_errors_total") and value for name, value in m.items())

    # Room for 2 waiting requests among 32 clients x 2 in flight: most are refused RESOURCE_EXHAUSTED
    # at first and get through on retry; nothing lost, memory flat.
    with start_server(teacher_path, tmp_path, ["batcher.max_queue_requests=2", "batcher.max_queue_delay_ms=2"]) as proc:
        baseline = rss_bytes(proc.process.pid)
        results = run_clients(proc.address, batches)
        assert_every_answer_is_its_own(local, batches, results)
        m = metrics(proc)
        refused = m.get('lnpt_errors_total{code="RESOURCE_EXHAUSTED"}', 0)
        assert refused > 0
        assert sum(r["stats"]["reconnects"] for r in results) == refused  # every refusal was retried once
        assert m["lnpt_samples_served_total"] == 32 * 10 * 8  # and each batch computed once
        assert peak_rss_bytes(proc.process.pid) - baseline < 150 * MiB
        assert wait_for(lambda: metrics(proc)["lnpt_open_streams"] == 0)


def test_clients_that_stop_reading_or_never_send_are_cut_without_delaying_others(teacher_path, fashion_train,
                                                                               tmp_path):
    idle = 1.5
    # Each misbehaving client on its own connection (a distinct channel argument stops gRPC from sharing
    # one): reading any stream on a connection lets gRPC trickle data to the others.
    def own_connection(name: str) -> grpc.Channel:
        return grpc.insecure_channel(proc.address, options=[("grpc.max_receive_message_length", 64 * MiB),
                                                            ("lnpt.test.client", name)])

    def raw_stream(channel: grpc.Channel):
        return channel.stream_stream(STREAM_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)

    with start_server(teacher_path, tmp_path, [f"server.stream_idle_seconds={idle}"]) as proc, \
            own_connection("silent") as silent_channel, own_connection("not-reading") as flood_channel:
        never_send = threading.Event()

        def silent():
            never_send.wait(60)
            yield from ()

        def flood():  # sends as fast as it can and never reads: fills every flow-control window
            for i in range(100_000):
                if never_send.is_set():
                    return
                yield good_request_bytes(i, n=64)

        stalled = [raw_stream(silent_channel)(silent(), timeout=60) for _ in range(4)]
        not_reading = raw_stream(flood_channel)(flood(), timeout=60)
        assert wait_for(lambda: metrics(proc)["lnpt_open_streams"] == 5)

        # A healthy client meanwhile: every batch answered promptly, none lost.
        client = GuidanceClient(proc.address, insecure=True, prefetch=2, retry=RETRY)
        images = fashion_train[0][:640]
        latencies, last = [], time.monotonic()
        for _ in client.stream([images[i:i + 32] for i in range(0, len(images), 32)]):
            latencies.append(time.monotonic() - last)
            last = time.monotonic()
        assert len(latencies) == 20 and client.stats["reconnects"] == 0
        assert max(latencies) < idle  # far below the time a stalled stream is allowed to hold

        assert wait_for(lambda: metrics(proc)["lnpt_open_streams"] == 0)  # all five cut by the server
        with pytest.raises(grpc.RpcError) as caught:
            for _ in not_reading:  # reading now drains what was buffered, then the status arrives
                pass
        never_send.set()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"read no response for {idle:g} s" in caught.value.details()
        for call in stalled:
            with pytest.raises(grpc.RpcError) as caught:
                list(call)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"idle for {idle:g} s" in caught.value.details()
        assert 'Task exception was never retrieved' not in proc.logs()


# --- hostile input --------------------------------------------------------------------------------

DIMENSION = st.one_of(st.integers(-2**63, 2**63 - 1), st.sampled_from([0, 1, 28, -1, 2**31, 2**62]))
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)


@st.composite
def hostile_payloads(draw) -> tuple[str, bytes]:
    """Hostile StreamTargets payloads: the shared generator's families driven by hypothesis, plus
    tensors built from hypothesis' own shapes, dtypes, byte strings and non-finite floats."""
    kind = draw(st.sampled_from(["family", "tensor", "floats", "bytes"]))
    if kind == "family":
        case = hostile_request(draw(st.randoms(use_true_random=False)), MAX_MESSAGE)
        return case.family, case.payload
    if kind == "tensor":
        shape = draw(st.lists(DIMENSION, max_size=9))
        dtype = draw(st.one_of(st.integers(0, 4), st.integers(-2**31, 2**31 - 1)))
        return kind, request_bytes(draw(st.integers(0, 2**64 - 1)), tensor_bytes(shape, dtype, draw(st.binary(max_size=4096))))
    if kind == "floats":
        n = draw(st.integers(1, 2))
        values = draw(st.lists(FLOATS, min_size=n * 784, max_size=n * 784).filter(
            lambda v: any(x != x or abs(x) == float("inf") for x in v)))
        wire, dtype = draw(st.sampled_from([(2, torch.float16), (4, torch.float32)]))
        data = torch.tensor(values, dtype=torch.float32).to(dtype).view(torch.uint8).numpy().tobytes()
        return kind, request_bytes(1, tensor_bytes([n, 1, 28, 28], wire, data))
    return kind, draw(st.binary(max_size=2048))


def test_hostile_requests_get_a_defined_status_and_never_hurt_the_server(teacher_path, local, fashion_train, tmp_path):
    overrides = [f"server.max_message_bytes={MAX_MESSAGE}", "batcher.max_request_batch=8"]
    with start_server(teacher_path, tmp_path, overrides) as proc, grpc.insecure_channel(
            proc.address, options=[("grpc.max_send_message_length", 64 * MiB)]) as channel:
        raw = channel.stream_stream(STREAM_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        list(raw(iter([good_request_bytes(1)]), timeout=30))  # warm up before the memory baseline
        baseline = rss_bytes(proc.process.pid)

        # A healthy client streams the whole time; it must see no error and only its own targets.
        stop, healthy, failures = threading.Event(), [], []
        images = fashion_train[0][:8]

        def healthy_stream():
            client = GuidanceClient(proc.address, insecure=True, prefetch=2,
                                    retry=RetryPolicy(max_attempts=1))  # any error at all fails it
            try:
                for features, _ in client.stream(iter(lambda: None if stop.is_set() else images, None)):
                    healthy.append(features)
            except Exception as exc:
                failures.append(exc)

        thread = threading.Thread(target=healthy_stream)
        thread.start()
        seen: dict[str, int] = {}

        @settings(max_examples=300, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
        @given(case=hostile_payloads())
        def each_hostile_request_ends_its_stream_with_a_defined_code(case):
            kind, payload = case
            try:
                answers = list(raw(iter([payload]), timeout=30))
            except grpc.RpcError as error:
                assert error.code() in DEFINED, (kind, error.code(), error.details(), payload[:64])
                seen[error.code().name] = seen.get(error.code().name, 0) + 1
            else:  # only a payload that happens to be a valid request may be answered
                request = pb.TargetsRequest.FromString(payload)
                assert len(answers) == 1 and list(request.images.shape)[1:] == [1, 28, 28], kind

        each_hostile_request_ends_its_stream_with_a_defined_code()

        # Garbage straight onto the TCP port (not HTTP/2 at all): the connection is dropped, nothing else.
        send_tcp_garbage(proc.port, random.Random(7), 20, timeout=10)

        stop.set()
        thread.join(60)
        assert not failures, failures
        assert len(healthy) >= 10
        torch.testing.assert_close(healthy[-1], local.targets(images)[0], rtol=2e-3, atol=2e-3)
        assert proc.process.poll() is None, "the server crashed"
        assert seen.get("INVALID_ARGUMENT", 0) >= 100
        assert wait_for(lambda: metrics(proc)["lnpt_open_streams"] == 0)
        assert peak_rss_bytes(proc.process.pid) - baseline < 150 * MiB
        log = proc.logs()
        assert "Traceback" not in log and "never retrieved" not in log
