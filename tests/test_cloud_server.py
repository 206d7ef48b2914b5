"""The guidance server end to end: a real grpc.aio server on 127.0.0.1 (ephemeral port), real clients."""
from __future__ import annotations

import asyncio
import threading
import time
import urllib.request

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support.servers import make_teacher, running_server

from lnpt.cloud.batcher import DynamicBatcher
from lnpt.lab.testing.faults import varint

from lnpt.shared.codec import decode, encode
from lnpt.shared.data import normalize
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.protocol import guidance_pb2_grpc
from lnpt.shared.teacher_model import Teacher
from lnpt.shared.models import InputSpec

STREAM_METHOD = "/lnpt.v1.Guidance/StreamTargets"
TIMEOUT = 60


@pytest.fixture(scope="session")
def teacher_path(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "lenet5.pt", "lenet5", seed=1)


@pytest.fixture(scope="session")
def teacher(teacher_path):
    return Teacher.load(teacher_path)


def pixels(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def raw_stream(channel: grpc.Channel):
    """StreamTargets taking messages or raw bytes (to send fields this .proto does not know)."""
    return channel.stream_stream(
        STREAM_METHOD,
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=pb.TargetsResponse.FromString,
    )


def test_teacher_info_describes_the_teacher(teacher_path, teacher):
    with running_server(teacher_path, ["batcher.max_request_batch=32", "server.max_message_bytes=1048576"]) as srv:
        with grpc.insecure_channel(srv.address) as channel:
            info = guidance_pb2_grpc.GuidanceStub(channel).GetTeacherInfo(pb.GetTeacherInfoRequest(), timeout=TIMEOUT)
    assert info.protocol_version == "lnpt.v1"
    assert (info.teacher_id, info.teacher_version) == ("lenet5", teacher.version)
    assert list(info.input_shape) == [1, 28, 28]
    assert list(info.normalization.mean) == pytest.approx(teacher.input_spec.mean)
    assert list(info.normalization.std) == pytest.approx(teacher.input_spec.std)
    assert (info.feature_dim, info.num_classes) == (84, 10)
    assert info.class_names[0] == "T-shirt/top"
    assert (info.max_batch_size, info.max_message_bytes) == (32, 1048576)
    assert set(info.input_dtypes) == {pb.DTYPE_UINT8, pb.DTYPE_FLOAT16, pb.DTYPE_FLOAT32}
    assert set(info.target_dtypes) == {pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT16}


def test_targets_equal_the_teachers_own_forward(teacher_path, teacher):
    images = pixels(6, seed=0)
    x = normalize(images, teacher.input_spec)  # float32 model input
    ref_features, ref_logits = teacher.targets(images)
    requests = [
        pb.TargetsRequest(request_id=10, images=encode(images)),  # uint8 pixels, float32 targets
        pb.TargetsRequest(request_id=11, images=encode(x)),  # float32 input
        pb.TargetsRequest(request_id=12, images=encode(images), target_dtype=pb.DTYPE_FLOAT16),
        pb.TargetsRequest(request_id=13, images=encode(x.half()), target_dtype=pb.DTYPE_FLOAT32),
    ]
    with running_server(teacher_path) as srv, grpc.insecure_channel(srv.address) as channel:
        answers = list(guidance_pb2_grpc.GuidanceStub(channel).StreamTargets(iter(requests), timeout=TIMEOUT))
    assert [a.request_id for a in answers] == [10, 11, 12, 13]
    for a in answers:
        assert (a.teacher_id, a.teacher_version) == ("lenet5", teacher.version)
    exact = [(decode(a.features), decode(a.logits)) for a in answers[:2]]
    for features, logits in exact:
        assert features.dtype == torch.float32 and features.shape == (6, 84) and logits.shape == (6, 10)
        torch.testing.assert_close(features, ref_features, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    half_f, half_l = decode(answers[2].features), decode(answers[2].logits)
    assert half_f.dtype == torch.float16
    torch.testing.assert_close(half_f.float(), ref_features, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(half_l.float(), ref_logits, rtol=2e-3, atol=2e-3)
    # float16 input loses precision before the forward: compare to the forward of the rounded input.
    f16_features, f16_logits = teacher.targets(x.half().float())
    torch.testing.assert_close(decode(answers[3].features), f16_features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(decode(answers[3].logits), f16_logits, rtol=1e-5, atol=1e-5)


def test_concurrent_streams_get_their_own_answers_merged_into_batches(teacher_path, teacher):
    streams, per_stream, n = 6, 5, 4
    results: dict[int, list] = {}
    errors = []
    # A long queue delay so requests from different streams meet in one forward.
    overrides = ["batcher.max_queue_delay_ms=100", "batcher.max_batch_size=64"]
    with running_server(teacher_path, overrides) as srv:
        barrier = threading.Barrier(streams)

        def client(index: int) -> None:
            try:
                with grpc.insecure_channel(srv.address) as channel:
                    stub = guidance_pb2_grpc.GuidanceStub(channel)
                    stub.GetTeacherInfo(pb.GetTeacherInfoRequest(), timeout=TIMEOUT)  # connected
                    barrier.wait()
                    requests = [pb.TargetsRequest(request_id=index * 100 + k, images=encode(pixels(n, index * 100 + k)))
                                for k in range(per_stream)]
                    results[index] = list(stub.StreamTargets(iter(requests), timeout=TIMEOUT))
            except Exception as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(streams)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        metrics = fetch_metrics(srv.metrics_port)
        batch_count = metric(metrics, "lnpt_batch_size_count")
        batch_sum = metric(metrics, "lnpt_batch_size_sum")
    assert not errors, errors
    for index, answers in results.items():
        assert [a.request_id for a in answers] == [index * 100 + k for k in range(per_stream)]
        for k, a in enumerate(answers):
            ref_features, ref_logits = teacher.targets(pixels(n, index * 100 + k))
            torch.testing.assert_close(decode(a.features), ref_features, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(decode(a.logits), ref_logits, rtol=1e-5, atol=1e-5)
    assert batch_sum == streams * per_stream * n
    assert batch_count < streams * per_stream, "the batcher never merged requests from different streams"


def good(request_id: int) -> pb.TargetsRequest:
    return pb.TargetsRequest(request_id=request_id, images=encode(pixels(2, request_id)))


def malformed_cases(teacher: Teacher):
    tensor = encode(pixels(2, 0))
    nan = torch.zeros(2, 1, 28, 28)
    nan[1, 0, 3, 3] = float("nan")
    images_with_unknown = tensor.SerializeToString() + b"\x50\x01"  # field 10, varint 1
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    return [
        ("wrong channels", pb.TargetsRequest(request_id=7, images=encode(torch.zeros(2, 3, 28, 28, dtype=torch.uint8))),
         invalid, "takes N x 1 x 28 x 28"),
        ("no batch dimension", pb.TargetsRequest(request_id=7, images=encode(torch.zeros(1, 28, 28, dtype=torch.uint8))),
         invalid, "have shape [1, 28, 28]"),
        ("bfloat16 images", pb.TargetsRequest(request_id=7, images=encode(torch.zeros(2, 1, 28, 28, dtype=torch.bfloat16))),
         invalid, "DTYPE_BFLOAT16 is not accepted"),
        ("unspecified dtype", pb.TargetsRequest(request_id=7, images=pb.Tensor(shape=[2, 1, 28, 28], data=tensor.data)),
         invalid, "DTYPE_UNSPECIFIED is not accepted"),
        ("byte length", pb.TargetsRequest(request_id=7, images=pb.Tensor(shape=[2, 1, 28, 28], dtype=pb.DTYPE_UINT8,
                                                                          data=b"\0" * 100)),
         invalid, "100 bytes of data"),
        ("non-finite", pb.TargetsRequest(request_id=7, images=encode(nan)), invalid, "1 of 1568 values are NaN or infinite"),
        ("empty batch", pb.TargetsRequest(request_id=7, images=encode(torch.zeros(0, 1, 28, 28, dtype=torch.uint8))),
         invalid, "empty"),
        ("batch too large", pb.TargetsRequest(request_id=7, images=encode(pixels(9, 0))), exhausted, "at most 8 per request"),
        ("target uint8", pb.TargetsRequest(request_id=7, images=tensor, target_dtype=pb.DTYPE_UINT8),
         invalid, "target_dtype DTYPE_UINT8 is not offered"),
        ("target unknown enum", pb.TargetsRequest(request_id=7, images=tensor, target_dtype=77),
         invalid, "unknown dtype 77"),
        ("teacher version", pb.TargetsRequest(request_id=7, images=tensor, expected_teacher_version="deadbeef"),
         invalid, f"expected teacher version 'deadbeef', but this server runs lenet5 version '{teacher.version}'"),
        ("no images", pb.TargetsRequest(request_id=7), invalid, "no images"),
        ("unknown request field", pb.TargetsRequest(request_id=7, images=tensor).SerializeToString() + b"\x50\x01",
         invalid, "request 7 carries unknown field number(s) [10]"),
        ("unknown tensor field", pb.TargetsRequest(request_id=7).SerializeToString() + b"\x12"
         + varint(len(images_with_unknown)) + images_with_unknown,
         invalid, "images carries unknown field number(s) [10]"),
        ("not a TargetsRequest", b"\xff\xff\xff", invalid, "Wire format was corrupt"),
    ]


def test_a_streams_backlog_delays_another_stream_by_about_one_batch(teacher):
    """Round robin over streams: 20 full batches queued by one stream, then one small request of
    another; first come first served would answer the small one last."""
    async def answer_order() -> list[str]:
        batcher = DynamicBatcher(teacher, max_batch_size=64, max_queue_delay_ms=0, max_queue_requests=100)
        batcher.start()
        order: list[str] = []
        futures = []
        for i in range(20):
            futures.append(batcher.submit_nowait(i, pixels(64, i).numpy(), torch.float16, stream="flood"))
            futures[-1].add_done_callback(lambda _, i=i: order.append(f"flood {i}"))
        futures.append(batcher.submit_nowait(99, pixels(4, 99).numpy(), torch.float16, stream="small"))
        futures[-1].add_done_callback(lambda _: order.append("small"))
        answers = await asyncio.gather(*futures)
        await batcher.stop()
        assert [a.response.request_id for a in answers] == [*range(20), 99]
        torch.testing.assert_close(decode(answers[-1].response.logits).float(),
                                   teacher.targets(pixels(4, 99))[1], rtol=2e-3, atol=2e-3)
        return order

    order = asyncio.run(answer_order())
    assert order.index("small") <= 3  # behind the batch computing and the next one, not behind all 20
    assert [name for name in order if name != "small"] == [f"flood {i}" for i in range(20)]  # each stream in order


def test_malformed_requests_end_only_their_own_stream(teacher_path, teacher):
    overrides = ["batcher.max_request_batch=8", "server.max_message_bytes=65536", "batcher.max_queue_delay_ms=1"]
    with running_server(teacher_path, overrides) as srv:
        stop = threading.Event()
        healthy: list[pb.TargetsResponse] = []
        failures = []

        def healthy_stream() -> None:
            def requests():
                i = 0
                while not stop.is_set():
                    yield good(1000 + i)
                    i += 1
                    time.sleep(0.01)

            try:
                with grpc.insecure_channel(srv.address) as channel:
                    healthy.extend(guidance_pb2_grpc.GuidanceStub(channel).StreamTargets(requests(), timeout=TIMEOUT))
            except Exception as exc:
                failures.append(exc)

        thread = threading.Thread(target=healthy_stream)
        thread.start()
        with grpc.insecure_channel(srv.address) as channel:
            call = raw_stream(channel)
            for name, bad, code, fragment in malformed_cases(teacher):
                answered = []
                with pytest.raises(grpc.RpcError) as caught:
                    for answer in call(iter([good(1), bad, good(2)]), timeout=TIMEOUT):
                        answered.append(answer.request_id)
                assert caught.value.code() == code, (name, caught.value.details())
                assert fragment in caught.value.details(), (name, caught.value.details())
                assert answered == [1], f"{name}: the request before the bad one must still be answered"
            # A message above server.max_message_bytes is refused by gRPC itself, before any parsing.
            huge = pb.TargetsRequest(request_id=7, images=pb.Tensor(shape=[2, 1, 28, 28], dtype=pb.DTYPE_UINT8,
                                                                    data=b"\0" * 70000))
            with pytest.raises(grpc.RpcError) as caught:
                list(call(iter([huge]), timeout=TIMEOUT))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # The server still answers a fresh stream.
            assert [a.request_id for a in call(iter([good(3)]), timeout=TIMEOUT)] == [3]
        stop.set()
        thread.join(TIMEOUT)
        metrics = fetch_metrics(srv.metrics_port)
    assert not failures, failures
    assert len(healthy) >= 5
    assert [a.request_id for a in healthy] == list(range(1000, 1000 + len(healthy)))
    last = healthy[-1]
    ref_features, _ = teacher.targets(pixels(2, last.request_id))
    torch.testing.assert_close(decode(last.features), ref_features, rtol=1e-5, atol=1e-5)
    invalid_count = sum(1 for case in malformed_cases(teacher) if case[2] == grpc.StatusCode.INVALID_ARGUMENT)
    assert metric(metrics, 'lnpt_errors_total{code="INVALID_ARGUMENT"}') == invalid_count
    assert metric(metrics, 'lnpt_errors_total{code="RESOURCE_EXHAUSTED"}') == 1  # the batch; gRPC refused the huge one


def test_full_queue_answers_resource_exhausted(tmp_path):
    # A slow teacher (ResNet-20, 32x32 RGB, one thread) and room for one waiting request.
    path = make_teacher(tmp_path / "resnet20.pt", "resnet20", InputSpec(3, 32, (0.5,) * 3, (0.25,) * 3))
    overrides = ["batcher.max_queue_requests=1", "batcher.max_batch_size=32", "batcher.max_queue_delay_ms=0"]
    batch = encode(torch.zeros(32, 3, 32, 32, dtype=torch.uint8))
    with running_server(path, overrides) as srv, grpc.insecure_channel(srv.address) as channel:
        stub = guidance_pb2_grpc.GuidanceStub(channel)
        answered = []
        with pytest.raises(grpc.RpcError) as caught:
            for answer in stub.StreamTargets(iter([pb.TargetsRequest(request_id=i, images=batch) for i in range(6)]),
                                             timeout=TIMEOUT):
                answered.append(answer.request_id)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "request queue is full (1 requests waiting)" in caught.value.details()
        assert answered and answered == list(range(len(answered)))  # accepted requests were answered
        again = list(stub.StreamTargets(iter([pb.TargetsRequest(request_id=9, images=batch)]), timeout=TIMEOUT))
        assert [a.request_id for a in again] == [9]


def test_stream_limit_and_idle_streams(teacher_path):
    overrides = ["server.max_streams=1", "server.stream_idle_seconds=0.5"]
    with running_server(teacher_path, overrides) as srv, grpc.insecure_channel(srv.address) as channel:
        stub = guidance_pb2_grpc.GuidanceStub(channel)

        def one_then_silence():
            yield good(1)
            time.sleep(TIMEOUT)

        first = stub.StreamTargets(one_then_silence(), timeout=TIMEOUT)
        assert next(first).request_id == 1
        with pytest.raises(grpc.RpcError) as caught:  # a second stream while the first is open
            list(stub.StreamTargets(iter([good(2)]), timeout=TIMEOUT))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.max_streams" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:  # the silent stream is cut after 0.5 s
            list(first)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "idle for 0.5 s" in caught.value.details()
        assert [a.request_id for a in stub.StreamTargets(iter([good(3)]), timeout=TIMEOUT)] == [3]


def test_one_client_cannot_hold_more_than_its_share_of_streams(teacher_path):
    overrides = ["server.max_streams=8", "server.max_streams_per_client=2"]
    with running_server(teacher_path, overrides) as srv, grpc.insecure_channel(srv.address) as channel:
        stub = guidance_pb2_grpc.GuidanceStub(channel)
        release = threading.Event()

        def one_then_wait(i):
            yield good(i)
            release.wait(TIMEOUT)

        held = [stub.StreamTargets(one_then_wait(i), timeout=TIMEOUT) for i in (1, 2)]
        assert [next(stream).request_id for stream in held] == [1, 2]
        with pytest.raises(grpc.RpcError) as caught:  # a third stream from the same address
            list(stub.StreamTargets(iter([good(3)]), timeout=TIMEOUT))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "already has 2 open streams" in caught.value.details()
        assert "server.max_streams_per_client" in caught.value.details()
        release.set()
        for stream in held:
            assert list(stream) == []
        assert [a.request_id for a in stub.StreamTargets(iter([good(4)]), timeout=TIMEOUT)] == [4]


def fetch_metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_metrics_endpoint_counts_requests_samples_and_streams(teacher_path):
    with running_server(teacher_path) as srv, grpc.insecure_channel(srv.address) as channel:
        stub = guidance_pb2_grpc.GuidanceStub(channel)
        list(stub.StreamTargets(iter([good(i) for i in range(3)]), timeout=TIMEOUT))
        gate = threading.Event()

        def held_open():
            yield good(50)
            gate.wait(TIMEOUT)

        open_call = stub.StreamTargets(held_open(), timeout=TIMEOUT)
        assert next(open_call).request_id == 50  # the stream is open now
        during = fetch_metrics(srv.metrics_port)
        gate.set()
        list(open_call)
        after = fetch_metrics(srv.metrics_port)
    assert metric(during, "lnpt_open_streams") == 1
    assert metric(after, "lnpt_open_streams") == 0
    assert metric(after, "lnpt_requests_total") == 4
    assert metric(after, "lnpt_samples_served_total") == 8
    assert metric(after, "lnpt_batch_size_sum") == 8
    assert metric(after, "lnpt_queue_seconds_count") == 4
    assert metric(after, "lnpt_compute_seconds_count") >= 1
    assert "lnpt_compute_seconds_bucket" in after


def test_reflection_lists_the_services(teacher_path):
    with running_server(teacher_path) as srv, grpc.insecure_channel(srv.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                                 timeout=TIMEOUT))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"lnpt.v1.Guidance", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_health_goes_not_serving_on_drain_and_open_streams_finish(teacher_path):
    with running_server(teacher_path) as srv:
        channel = grpc.insecure_channel(srv.address)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service="lnpt.v1.Guidance"), timeout=TIMEOUT)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        sent_first = threading.Event()

        def requests():
            yield good(1)
            sent_first.set()
            time.sleep(TIMEOUT)  # never sends more: the drain must end the stream
            yield good(2)

        call = guidance_pb2_grpc.GuidanceStub(channel).StreamTargets(requests(), timeout=TIMEOUT)
        assert next(call).request_id == 1
        stopper = threading.Thread(target=srv.stop, kwargs={"grace": 10})
        started = time.monotonic()
        stopper.start()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in caught.value.details()
        stopper.join(TIMEOUT)
        assert time.monotonic() - started < 10, "the drain waited for the whole grace period"
        channel.close()


def test_lnpt_serve_process_logs_json_and_drains_on_sigterm(teacher_path, tmp_path):
    import json

    from support.servers import server_process

    with server_process(teacher_path, ['server.log_format="json"'], log_path=tmp_path / "serve.log") as proc:
        with grpc.insecure_channel(proc.address) as channel:
            answers = guidance_pb2_grpc.GuidanceStub(channel).StreamTargets(iter([good(1)]), timeout=TIMEOUT)
            assert [a.request_id for a in answers] == [1]
        assert proc.terminate(timeout=20) == 0
        logs = [json.loads(line) for line in proc.logs().splitlines() if line.startswith("{")]
    messages = [entry["message"] for entry in logs]
    assert any(m.startswith("serving lenet5") for m in messages)
    assert any(m.startswith("draining") for m in messages) and messages[-1] == "stopped"
    serving = next(entry for entry in logs if entry["message"].startswith("serving"))
    assert serving["address"] == proc.address and serving["level"] == "info"


def test_lnpt_serve_refuses_a_corrupt_checkpoint(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    done = subprocess.run([sys.executable, "-m", "lnpt.shared.cli", "serve", "--checkpoint", str(bad), "--insecure",
                           "--port", "0", "--metrics-port", "-1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"{bad}: not a readable lnpt model file" in done.stderr
