"""The client's request plan: batches split to the server's message limit and reassembled in order,
and an in-flight window sized from round trip and step time within the server's per-stream limit.
Real `lnpt serve` processes on loopback, killed and restarted mid-stream."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from support.servers import make_teacher, running_server, server_process

from lnpt.edge.teachers.remote import GuidanceClient, GuidanceError, RetryPolicy, Window
from lnpt.shared.teacher_model import Teacher
from lnpt.shared.models import InputSpec

FAST_RETRY = RetryPolicy(max_attempts=40, max_wait_seconds=30, base_seconds=0.05, max_seconds=0.5)
FOUR_MIB = 4 * 1024 * 1024
RGB_128 = InputSpec(3, 128, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))  # 49,152 bytes per uint8 image


@pytest.fixture(scope="module")
def rgb_teacher(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("rgb") / "T.pt", input_spec=RGB_128)


def test_adaptive_window_covers_the_round_trip_within_the_servers_limit():
    window = Window(prefetch=0, max_prefetch=16, server_limit=5)
    window.round_trip(0.100)
    window.step(0.010)
    assert window.batches == 12  # ceil(100 ms / 10 ms) + 1 batch per request + 1 of slack
    assert window.may_send(4) and not window.may_send(5)  # but never more requests in flight than the server answers
    window.step(10.0)  # the caller became slow: the window shrinks back
    for _ in range(30):
        window.step(1.0)
    assert window.batches == 3  # one batch covers the round trip, plus its own request and the slack
    assert Window(prefetch=3, max_prefetch=16, server_limit=0).batches == 3  # fixed prefetch stays fixed


def test_adaptive_window_merges_small_batches_up_to_the_servers_preferred_batch():
    window = Window(prefetch=0, max_prefetch=16, server_limit=0)
    window.batch_rows(32, request_rows=256, preferred_rows=128)  # 4 batches of 32 fill the server's batch
    window.round_trip(0.020, rows=32)
    window.step(0.010)
    assert window.merge == 2  # merged requests grow by doubling, once the smaller size was answered
    window.round_trip(0.020, rows=64)
    # 2 batches cover the round trip, plus one merged request and one batch of slack
    assert (window.merge, window.batches) == (4, 7)
    window.round_trip(0.020, rows=128)
    assert window.merge == 4  # never beyond the server's preferred batch
    for _ in range(30):  # a slow server: the cap of 16 batches binds, merging gives way first
        window.round_trip(0.140, rows=128)
    assert (window.merge, window.batches) == (1, 16)
    fixed = Window(prefetch=4, max_prefetch=16, server_limit=0)
    fixed.batch_rows(32, request_rows=256, preferred_rows=128)
    assert fixed.merge == 1  # a fixed prefetch sends each batch on its own


def test_merging_waits_for_a_covered_round_trip_except_in_the_servers_last_slot():
    window = Window(prefetch=0, max_prefetch=32, server_limit=3)
    window.batch_rows(32, request_rows=256, preferred_rows=256)
    window.round_trip(0.035, rows=32)
    window.step(0.005)  # a round trip spans 7-8 steps: more than the 3 requests the server allows
    assert window.merge == 2 and window.covered > 3
    assert [window.request_batches(sent, in_flight) for sent, in_flight in [(0, 0), (1, 1)]] == [1, 1]
    assert window.request_batches(2, 2) == 2  # the last slot merges, or the window could never grow past 3
    assert window.request_batches(window.covered, 0) == 2  # a covered round trip merges in any slot
    unlimited = Window(prefetch=0, max_prefetch=32, server_limit=0)
    unlimited.batch_rows(32, request_rows=256, preferred_rows=256)
    unlimited.round_trip(0.035, rows=32)
    unlimited.step(0.005)
    assert unlimited.request_batches(2, 2) == 1  # no limit, no last slot: one batch until covered


def test_a_batch_over_4_mib_is_split_reassembled_and_resumed_across_a_restart(rgb_teacher, tmp_path):
    local = Teacher.load(rgb_teacher)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (90, 3, 128, 128), dtype=torch.uint8, generator=generator) for _ in range(3)]
    assert batches[0].numel() > FOUR_MIB  # 4.4 MB: over gRPC's default and this server's limit
    overrides = [f"server.max_message_bytes={FOUR_MIB}", "batcher.max_request_batch=256"]
    with server_process(rgb_teacher, overrides=overrides, log_path=tmp_path / "server.log") as proc:
        client = GuidanceClient(proc.address, insecure=True, prefetch=2, retry=FAST_RETRY)
        assert client.info.max_message_bytes == FOUR_MIB
        received = []
        for features, logits in client.stream(batches):
            received.append((features, logits))
            if len(received) == 1:  # the next batch's requests are in flight: the server dies under them
                proc.kill()
                threading.Timer(0.5, proc.start).start()
    assert len(received) == len(batches)
    for batch, (features, logits) in zip(batches, received):  # in order, nothing lost or repeated
        want_f, want_z = local.targets(batch)
        assert features.shape == want_f.shape and logits.shape == want_z.shape
        torch.testing.assert_close(features, want_f, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(logits, want_z, rtol=2e-3, atol=2e-3)
    stats = client.stats
    assert stats["requests"] == stats["responses"] == 2 * len(batches)  # 85 + 5 images per batch
    assert stats["reconnects"] >= 1 and 0 < stats["resent"] <= 4 * stats["reconnects"]


def test_an_image_larger_than_any_message_is_refused_with_the_limit(rgb_teacher):
    with running_server(rgb_teacher, overrides=["server.max_message_bytes=40000"]) as srv:
        client = GuidanceClient(srv.address, insecure=True)
        with pytest.raises(GuidanceError, match=r"49152 bytes as DTYPE_UINT8.*its limit is 40000 bytes"):
            client.targets(torch.zeros(1, 3, 128, 128, dtype=torch.uint8))


def test_adaptive_window_stays_within_the_servers_limit_and_recovers_after_a_restart(tmp_path, fashion_train):
    teacher = make_teacher(tmp_path / "T.pt")
    local = Teacher.load(teacher)
    images = fashion_train[0][:960]
    parts = [images[i:i + 32] for i in range(0, len(images), 32)]
    # The server waits up to 30 ms for company, so one round trip spans several 5 ms steps: the
    # window wants to grow past the server's 3 requests per stream.
    overrides = ["server.stream_window=3", "batcher.max_queue_delay_ms=30"]
    with server_process(teacher, overrides=overrides, log_path=tmp_path / "server.log") as proc:
        client = GuidanceClient(proc.address, insecure=True, prefetch=0, max_prefetch=32, retry=FAST_RETRY)
        assert client.info.max_in_flight == 3
        received = []
        for features, _ in client.stream(parts):
            received.append(features)
            time.sleep(0.005)  # the training step
            if len(received) == 10:
                proc.kill()
                threading.Timer(0.5, proc.start).start()
    assert len(received) == len(parts)
    for part, features in zip(parts, received):
        torch.testing.assert_close(features, local.targets(part)[0], rtol=2e-3, atol=2e-3)
    stats = client.stats
    assert stats["window"] > 3  # it wanted more ...
    assert stats["max_in_flight"] == 3  # ... and never sent more than the server answers at once
    assert stats["reconnects"] >= 1 and stats["requests"] == stats["responses"]  # each request answered once
    # 32-image batches merged up to the server's preferred 256 images: fewer requests than batches
    assert stats["batches_per_request"] > 1 and stats["requests"] < len(parts)
