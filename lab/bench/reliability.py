"""`lnpt bench reliability`: the guidance server under load, faults, hostile input and bad credentials.

Every scenario runs against real `lnpt serve` processes on loopback with the real edge client:
- load: 32 concurrent client streams x 200 batches (8 images each), every answer checked against
  the teacher's own forward; p50/p99 request-to-answer latency and server RSS;
- saturated queue: the same clients against batcher.max_queue_requests=2: RESOURCE_EXHAUSTED is
  answered and retried, nothing is lost, memory stays flat;
- slow and stalled clients: silent streams and a client that never reads, beside a healthy one;
- hostile input: thousands of hostile StreamTargets payloads (random/truncated bytes, absurd shapes,
  unknown dtypes, NaN/Inf, oversize) plus raw TCP garbage, with a healthy stream in parallel;
- faults: a proxy that resets and black-holes the link, the server SIGKILLed and restarted mid-stream;
- security: plaintext to TLS, wrong CA, expired and wrong-host certificates, missing/wrong token,
  a token over plaintext;
- connection flood: thousands of idle TCP connections from one address (127.0.0.2); a health check
  and a new stream from another (127.0.0.1) must succeed within a second meanwhile;
- oversized-request flood: 12 streams of the largest legal requests (a full float32 batch, and a
  request padded to the receive limit with a repeated field) beside a healthy client; the server's
  peak RSS must stay under a stated budget;
- Watch flood: more grpc.health.v1 Watch streams than server.max_health_watches; the excess is
  refused, Check and new streams still work.
`samples_lost` must be 0 and `server_crashes` 0. `--quick` runs every scenario at a tenth of the size.
"""
from __future__ import annotations

import argparse
import collections
import random
import tempfile
import threading
import time
from pathlib import Path

from lnpt.lab.testing.faults import metrics, wait_for
from lnpt.shared.cli import add_format_option, emit

MiB = 1 << 20
STREAM_METHOD = "/lnpt.v1.Guidance/StreamTargets"


def register(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser("reliability", help="load, faults, hostile input and security refusals; samples lost must be 0",
                           description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="every scenario at about a tenth of the size (~1 minute)")
    p.add_argument("--clients", type=int, default=32, help="concurrent client streams in the load scenarios (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the hostile inputs (default 0)")
    add_format_option(p)
    p.set_defaults(handler=run)


# --- helpers ----------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def server_errors(proc) -> dict[str, int]:
    prefix = 'lnpt_errors_total{code="'
    return {name[len(prefix):-2]: int(v) for name, v in metrics(proc).items() if name.startswith(prefix) and v}


class Report:
    """What every scenario adds to: faults, bad inputs, losses, error codes seen by clients and server."""

    def __init__(self):
        self.samples_sent = 0
        self.samples_lost = 0  # batches never answered, or answered with another batch's targets
        self.server_crashes = 0
        self.bad_inputs_tried = 0
        self.faults_injected = 0
        self.faults_survived = 0
        self.codes: collections.Counter = collections.Counter()  # status codes clients received
        self.server_codes: collections.Counter = collections.Counter()
        self.scenarios: dict[str, dict] = {}

    def check_alive(self, proc) -> None:
        if proc.process.poll() is not None:
            self.server_crashes += 1

    def add_server_errors(self, proc) -> None:
        self.server_codes.update(server_errors(proc))


def start_server(checkpoint: str, folder: Path, name: str, overrides=(), **tls):
    from lnpt.cloud.process import ServerProcess, free_port

    return ServerProcess(checkpoint, metrics_port=free_port(), log_path=folder / f"{name}.log",
                         overrides=["server.grace_seconds=2", *overrides], **tls).start()


def stream_checked(client, batches, local, latencies: list[float] | None = None) -> int:
    """Stream `batches` through `client`; returns how many were lost or mismatched."""
    import torch

    sent_at: list[float] = []

    def timed():
        for images in batches:
            sent_at.append(time.perf_counter())
            yield images

    bad = 0
    received = 0
    for i, (features, _) in enumerate(client.stream(timed())):
        if latencies is not None:
            latencies.append(time.perf_counter() - sent_at[i])
        received += 1
        want, _ = local.targets(batches[i])
        if not torch.allclose(features, want, rtol=2e-3, atol=2e-3):
            bad += 1
    return bad + (len(batches) - received)


def many_clients(address: str, local, per_client: list[list], retry) -> dict:
    from lnpt.edge.teachers.remote import GuidanceClient

    results = [dict(lost=len(b), latencies=[], reconnects=0, error=None) for b in per_client]
    barrier = threading.Barrier(len(per_client))

    def one(i: int) -> None:
        client = GuidanceClient(address, insecure=True, prefetch=2, retry=retry)
        try:
            client.info
            barrier.wait(120)
            results[i]["lost"] = stream_checked(client, per_client[i], local, results[i]["latencies"])
        except Exception as exc:
            results[i]["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            results[i]["reconnects"] = client.stats["reconnects"]
            client.close()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(per_client))]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    seconds = time.perf_counter() - started
    latencies = [x for r in results for x in r["latencies"]]
    samples = sum(len(b) * len(b[0]) for b in per_client)
    return {"clients": len(per_client), "batches_per_client": len(per_client[0]), "seconds": round(seconds, 2),
            "samples_per_s": round(samples / seconds, 1), "p50_ms": round(1000 * percentile(latencies, 0.5), 2),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 2),
            "lost": sum(r["lost"] for r in results), "reconnects": sum(r["reconnects"] for r in results),
            "client_errors": [r["error"] for r in results if r["error"]]}


def make_batches(images, clients: int, per_client: int, size: int = 8, seed: int = 0) -> list[list]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return [[images[torch.randint(0, len(images), (size,), generator=g)] for _ in range(per_client)]
            for _ in range(clients)]


# --- scenarios --------------------------------------------------------------------------------------

def scenario_load(rep: Report, checkpoint, folder, local, images, clients: int, batches: int) -> None:
    from lnpt.lab.testing.faults import peak_rss_bytes, rss_bytes
    from lnpt.edge.teachers.remote import RetryPolicy

    retry = RetryPolicy(max_attempts=500, max_wait_seconds=300, base_seconds=0.02, max_seconds=0.5)
    per_client = make_batches(images, clients, batches)
    for name, overrides in (("load", ()), ("saturated_queue", ("batcher.max_queue_requests=2", "batcher.max_queue_delay_ms=2"))):
        with start_server(checkpoint, folder, name, overrides) as proc:
            baseline = rss_bytes(proc.process.pid)
            result = many_clients(proc.address, local, per_client, retry)
            result.update(server_rss_mib=round(rss_bytes(proc.process.pid) / MiB, 1),
                          server_peak_rss_growth_mib=round((peak_rss_bytes(proc.process.pid) - baseline) / MiB, 1),
                          server_errors=server_errors(proc))
            rep.check_alive(proc)
            rep.add_server_errors(proc)
        rep.samples_sent += sum(len(b) * len(b[0]) for b in per_client)
        rep.samples_lost += result["lost"] * 8
        rep.codes.update({"RESOURCE_EXHAUSTED": result["server_errors"].get("RESOURCE_EXHAUSTED", 0)})
        rep.scenarios[name] = result


def scenario_slow_clients(rep: Report, checkpoint, folder, local, images, healthy_batches: int) -> None:
    import grpc

    from lnpt.lab.testing.faults import good_request_bytes
    from lnpt.edge.teachers.remote import GuidanceClient

    idle = 2.0
    with start_server(checkpoint, folder, "slow", [f"server.stream_idle_seconds={idle}"]) as proc:
        def channel(name):
            return grpc.insecure_channel(proc.address, options=[("grpc.max_receive_message_length", 64 * MiB),
                                                                ("lnpt.bench.client", name)])

        silent_ch, flood_ch = channel("silent"), channel("not-reading")
        stop = threading.Event()

        def silent():
            stop.wait(120)
            yield from ()

        def flood():
            for i in range(1_000_000):
                if stop.is_set():
                    return
                yield good_request_bytes(i, n=64)

        raw = lambda ch: ch.stream_stream(STREAM_METHOD, request_serializer=lambda b: b,  # noqa: E731
                                          response_deserializer=lambda b: b)
        started = time.monotonic()
        stalled = [raw(silent_ch)(silent(), timeout=120) for _ in range(8)]
        not_reading = raw(flood_ch)(flood(), timeout=120)
        wait_for(lambda: metrics(proc)["lnpt_open_streams"] == 9)
        client = GuidanceClient(proc.address, insecure=True, prefetch=2)
        latencies: list[float] = []
        parts = [images[i:i + 32] for i in range(0, 32 * healthy_batches, 32)]
        lost = stream_checked(client, parts, local, latencies)
        cut = wait_for(lambda: metrics(proc)["lnpt_open_streams"] == 0, timeout=30)
        cut_after = time.monotonic() - started
        outcomes = collections.Counter()
        for call in [not_reading, *stalled]:
            try:
                for _ in call:
                    pass
                outcomes["OK"] += 1
            except grpc.RpcError as error:
                outcomes[error.code().name] += 1
        stop.set()
        silent_ch.close()
        flood_ch.close()
        rep.check_alive(proc)
        rep.add_server_errors(proc)
    rep.samples_sent += sum(len(p) for p in parts)
    rep.samples_lost += lost * 32
    rep.codes.update(outcomes)
    rep.scenarios["slow_clients"] = {"stalled_streams": 8, "not_reading_streams": 1, "all_cut": cut,
                                     "cut_within_s": round(cut_after, 2), "idle_limit_s": idle,
                                     "healthy_p99_ms": round(1000 * percentile(latencies, 0.99), 2),
                                     "healthy_lost": lost, "stalled_outcomes": dict(outcomes)}


def scenario_hostile(rep: Report, checkpoint, folder, local, images, cases: int, seed: int) -> None:
    import grpc

    from lnpt.lab.testing.faults import good_request_bytes, hostile_request, peak_rss_bytes, rss_bytes, send_tcp_garbage
    from lnpt.edge.teachers.remote import GuidanceClient, RetryPolicy

    limit = 65536
    with start_server(checkpoint, folder, "hostile", [f"server.max_message_bytes={limit}",
                                                      "batcher.max_request_batch=8"]) as proc, \
            grpc.insecure_channel(proc.address, options=[("grpc.max_send_message_length", 64 * MiB)]) as channel:
        raw = channel.stream_stream(STREAM_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        list(raw(iter([good_request_bytes(1)]), timeout=30))
        baseline = rss_bytes(proc.process.pid)
        stop, healthy, healthy_errors = threading.Event(), [0], []
        batch = images[:8]

        def healthy_stream():
            client = GuidanceClient(proc.address, insecure=True, prefetch=2, retry=RetryPolicy(max_attempts=1))
            try:
                healthy[0] = stream_checked(client, BatchesUntil(stop, batch), local)
            except Exception as exc:
                healthy_errors.append(f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=healthy_stream, daemon=True)
        thread.start()
        rng = random.Random(seed)
        by_family: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for _ in range(cases):
            case = hostile_request(rng, limit)
            try:
                list(raw(iter([case.payload]), timeout=30))
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name
            by_family[case.family][code] += 1
            rep.codes[code] += 1
        garbage = max(10, cases // 100)
        send_tcp_garbage(proc.port, rng, garbage)
        stop.set()
        thread.join(60)
        back_to_zero = wait_for(lambda: metrics(proc)["lnpt_open_streams"] == 0)
        growth = (peak_rss_bytes(proc.process.pid) - baseline) / MiB
        rep.check_alive(proc)
        rep.add_server_errors(proc)
        log = proc.logs()
    undefined = sum(n for fam in by_family.values() for code, n in fam.items()
                    if code not in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"))
    rep.bad_inputs_tried += cases + garbage
    rep.samples_lost += healthy[0] * 8
    rep.scenarios["hostile_input"] = {
        "cases": cases, "raw_tcp_garbage": garbage, "by_family": {f: dict(c) for f, c in sorted(by_family.items())},
        "undefined_status": undefined, "healthy_stream_errors": healthy_errors, "healthy_lost": healthy[0],
        "open_streams_back_to_0": back_to_zero, "server_peak_rss_growth_mib": round(growth, 1),
        "tracebacks_in_server_log": log.count("Traceback"),
    }


class BatchesUntil:
    """The same batch again and again until `stop` is set (a list-like for stream_checked)."""

    def __init__(self, stop: threading.Event, batch):
        self.stop, self.batch, self.count = stop, batch, 0

    def __iter__(self):
        while not self.stop.is_set():
            self.count += 1
            yield self.batch

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        return self.batch


def scenario_faults(rep: Report, checkpoint, folder, local, images, batches: int) -> None:
    from lnpt.lab.testing.faults import FaultProxy
    from lnpt.edge.teachers.remote import GuidanceClient, RetryPolicy

    retry = RetryPolicy(max_attempts=60, max_wait_seconds=60, base_seconds=0.05, max_seconds=0.5)
    parts = [images[i:i + 32] for i in range(0, 32 * batches, 32)]
    results = {}

    def run(name, address, inject, **client_args):
        client = GuidanceClient(address, insecure=True, prefetch=4, retry=retry, **client_args)
        received = []
        started = time.monotonic()
        try:
            for i, (features, _) in enumerate(client.stream(parts)):
                received.append(features)
                inject(i + 1)
            error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        import torch
        lost = len(parts) - len(received) + sum(
            1 for p, f in zip(parts, received) if not torch.allclose(f, local.targets(p)[0], rtol=2e-3, atol=2e-3))
        results[name] = {"batches": len(parts), "lost": lost, "reconnects": client.stats["reconnects"],
                         "resent": client.stats["resent"], "seconds": round(time.monotonic() - started, 2), "error": error}
        rep.samples_sent += sum(len(p) for p in parts)
        rep.samples_lost += lost * 32
        return lost == 0 and error is None

    with start_server(checkpoint, folder, "faults") as proc:
        with FaultProxy(proc.port) as proxy:
            proxy.delay = 0.002
            marks = {len(parts) // 4, len(parts) // 2, 3 * len(parts) // 4}
            ok = run("proxy_resets", proxy.address, lambda n: n in marks and proxy.cut())
            rep.faults_injected += proxy.cuts
            rep.faults_survived += proxy.cuts if ok else 0
        with FaultProxy(proc.port) as proxy:
            ok = run("proxy_dead_link", proxy.address, lambda n: n == len(parts) // 2 and proxy.silence(),
                     keepalive_seconds=1.0)
            rep.faults_injected += 1
            rep.faults_survived += 1 if ok else 0

        def kill_and_restart(n):
            if n == len(parts) // 2:
                proc.kill()
                threading.Timer(0.5, proc.start).start()

        ok = run("server_sigkill_restart", proc.address, kill_and_restart)
        rep.faults_injected += 1
        rep.faults_survived += 1 if ok else 0
        wait_for(lambda: proc.process.poll() is None, 60)
    rep.scenarios["faults"] = results


def scenario_security(rep: Report, checkpoint, folder) -> None:
    import grpc

    from lnpt.lab.testing.faults import expired_certificate, wrong_host_certificate
    from lnpt.cloud.certs import generate_test_pki
    from lnpt.edge.teachers.remote import GuidanceClient, GuidanceError, RetryPolicy
    from lnpt.shared.protocol import guidance_pb2 as pb
    from lnpt.shared.protocol import guidance_pb2_grpc

    pki, other = generate_test_pki(folder / "pki"), generate_test_pki(folder / "other-pki")
    token = "bench-token-" + "%08x" % random.getrandbits(32)
    tokens = folder / "tokens"
    tokens.write_text(token + "\n")
    expected, got = {}, {}

    def info(channel, metadata=None):
        try:
            guidance_pb2_grpc.GuidanceStub(channel).GetTeacherInfo(pb.GetTeacherInfoRequest(), timeout=10, metadata=metadata)
            return "OK"
        except grpc.RpcError as error:
            return error.code().name

    tls = dict(cert=pki.server_cert, key=pki.server_key, ca_cert=pki.ca_cert)
    with start_server(checkpoint, folder, "tls", [f'server.tokens_file="{tokens}"'], **tls) as proc:
        creds = lambda ca: grpc.ssl_channel_credentials(ca.read_bytes())  # noqa: E731
        cases = {
            "plaintext_to_tls_port": (lambda: info(grpc.insecure_channel(f"127.0.0.1:{proc.port}")), "UNAVAILABLE"),
            "wrong_ca": (lambda: info(grpc.secure_channel(proc.address, creds(other.ca_cert))), "UNAVAILABLE"),
            "missing_token": (lambda: info(grpc.secure_channel(proc.address, creds(pki.ca_cert))), "UNAUTHENTICATED"),
            "wrong_token": (lambda: info(grpc.secure_channel(proc.address, creds(pki.ca_cert)),
                                         [("authorization", "Bearer not-" + token)]), "UNAUTHENTICATED"),
            "right_token": (lambda: info(grpc.secure_channel(proc.address, creds(pki.ca_cert)),
                                         [("authorization", "Bearer " + token)]), "OK"),
        }
        for name, (call, want) in cases.items():
            got[name], expected[name] = call(), want
        rep.check_alive(proc)
        rep.add_server_errors(proc)
        token_in_log = token in proc.logs()
    for name, make in (("expired_certificate", expired_certificate), ("wrong_host_certificate", wrong_host_certificate)):
        cert, key = make(pki.folder)
        with TlsServerWithoutProbe(checkpoint, folder, name, cert, key) as proc:
            client = GuidanceClient(proc.address, ca_cert=str(pki.ca_cert), retry=RetryPolicy(max_attempts=2))
            try:
                client.info
                got[name] = "OK"
            except GuidanceError as error:
                got[name] = type(error).__name__
            expected[name] = "GuidanceAuthError"
    try:
        GuidanceClient("192.0.2.10:50051", insecure=True, token=token)
        got["token_over_plaintext"] = "sent"
    except GuidanceError:
        got["token_over_plaintext"] = "refused by client"
    expected["token_over_plaintext"] = "refused by client"
    refused_right = sum(got[k] == expected[k] for k in expected)
    rep.bad_inputs_tried += len(expected) - 1  # all but the right token
    rep.codes.update(v for v in got.values() if v.isupper() and v != "OK")  # gRPC codes; client refusals are named
    rep.scenarios["security"] = {"cases": {k: {"got": got[k], "expected": expected[k]} for k in expected},
                                 "as_expected": f"{refused_right}/{len(expected)}", "token_in_server_log": token_in_log}


class TlsServerWithoutProbe:
    """A TLS `lnpt serve` whose certificate the health probe cannot verify (expired or another host):
    started without waiting for SERVING over TLS; ready once the port accepts connections."""

    def __init__(self, checkpoint, folder, name, cert, key):
        from lnpt.cloud.process import ServerProcess

        self.proc = ServerProcess(checkpoint, cert=cert, key=key, log_path=folder / f"{name}.log")

    def __enter__(self):
        import subprocess

        log = open(self.proc.log_path, "ab")
        self.proc.process = subprocess.Popen(self.proc.command(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        # Health over plaintext is refused and over TLS the certificate is bad, so wait for the log line.
        wait_for(lambda: "serving" in self.proc.logs(), 60)
        return self.proc

    def __exit__(self, *exc):
        self.proc.kill()


# --- the run ----------------------------------------------------------------------------------------

def scenario_connection_flood(rep: Report, checkpoint, folder, connections: int) -> None:
    import grpc

    from lnpt.lab.testing.faults import good_request_bytes, idle_connections, peak_rss_bytes, rss_bytes

    with start_server(checkpoint, folder, "connection_flood") as proc:
        baseline = rss_bytes(proc.process.pid)
        per_client = 64  # server.max_connections_per_client's default
        started = time.monotonic()
        with idle_connections(proc.port, connections, source="127.0.0.2") as flood:
            held_off = flood.wait_closed(at_least=connections - per_client, timeout=30)
            settle_s = time.monotonic() - started
            health_s, stream_s, errors = [], [], []
            for _ in range(5):
                try:
                    health_s.append(timed_health_check(proc.address))
                    t = time.monotonic()
                    with grpc.insecure_channel(proc.address) as channel:
                        raw = channel.stream_stream(STREAM_METHOD, request_serializer=lambda b: b,
                                                    response_deserializer=lambda b: b)
                        list(raw(iter([good_request_bytes(1)]), timeout=5))
                    stream_s.append(time.monotonic() - t)
                except grpc.RpcError as error:
                    errors.append(error.code().name)
            still_open = flood.open_count()
        server_held_off = metrics(proc).get("lnpt_connections_held_off_total", 0)
        peak = peak_rss_bytes(proc.process.pid)
        rep.check_alive(proc)
        rep.add_server_errors(proc)
    rep.bad_inputs_tried += connections
    rep.scenarios["connection_flood"] = {
        "idle_connections": connections, "source": "127.0.0.2", "connections_held_off": held_off,
        "server_connections_held_off": int(server_held_off), "flood_still_open": still_open,
        "held_off_within_s": round(settle_s, 2),
        "health_latency_under_flood_ms": round(1000 * max(health_s), 1) if health_s else None,
        "new_stream_under_flood_ms": round(1000 * max(stream_s), 1) if stream_s else None,
        "served_within_1s": not errors and max(health_s + stream_s) < 1.0, "errors": errors,
        "peak_rss_mb": round(peak / MiB, 1), "rss_growth_mb": round((peak - baseline) / MiB, 1),
    }


def timed_health_check(address: str) -> float:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    started = time.monotonic()
    with grpc.insecure_channel(address) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return time.monotonic() - started


def scenario_oversized_flood(rep: Report, checkpoint, folder, local, images, requests_per_stream: int) -> None:
    import grpc

    from lnpt.lab.testing.faults import peak_rss_bytes, request_bytes, rss_bytes, tensor_bytes
    from lnpt.edge.teachers.remote import GuidanceClient, RetryPolicy

    streams, inflight = 12, 256 * MiB  # server.max_inflight_bytes's default
    with start_server(checkpoint, folder, "oversized_flood") as proc, \
            grpc.insecure_channel(proc.address, options=[("grpc.max_send_message_length", 64 * MiB)]) as probe:
        limit = GuidanceClient(proc.address, insecure=True).info.max_message_bytes
        full = request_bytes(1, tensor_bytes([256, 1, 28, 28], 4, bytes(256 * 784 * 4)))
        # Protobuf merge semantics: a bytes field given twice keeps the last value, so a request padded
        # with a first, huge `data` is valid, and exactly as large as the receive limit allows.
        small = bytes(8 * 784)
        pad = limit - len(request_bytes(1, tensor_bytes([8, 1, 28, 28], 1, small))) - 16
        padded_tensor = tensor_bytes([8, 1, 28, 28], 1, bytes(pad)) + tensor_bytes([], 0, small)
        padded = request_bytes(1, padded_tensor)
        raw = probe.stream_stream(STREAM_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        list(raw(iter([full, padded]), timeout=60))  # both legal: answered
        baseline = rss_bytes(proc.process.pid)
        stop, codes, answered, counting = threading.Event(), collections.Counter(), [0], threading.Lock()
        healthy_latencies: list[float] = []

        def flooder(i: int) -> None:
            with grpc.insecure_channel(proc.address, options=[("grpc.max_send_message_length", 64 * MiB)]) as ch:
                call = ch.stream_stream(STREAM_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
                sent = 0
                while sent < requests_per_stream and not stop.is_set():
                    batch = [full if (sent + k) % 2 else padded for k in range(8)]
                    sent += len(batch)
                    try:
                        n, code = sum(1 for _ in call(iter(batch), timeout=120)), "OK"
                    except grpc.RpcError as error:
                        n, code = 0, error.code().name
                    with counting:
                        answered[0] += n
                        codes[code] += 1

        def healthy() -> None:
            client = GuidanceClient(proc.address, insecure=True, prefetch=2,
                                    retry=RetryPolicy(max_attempts=50, base_seconds=0.05, max_seconds=0.5))
            try:
                stream_checked(client, BatchesUntil(stop, images[:8]), local, healthy_latencies)
            finally:
                client.close()

        threads = [threading.Thread(target=flooder, args=(i,), daemon=True) for i in range(streams)]
        watcher = threading.Thread(target=healthy, daemon=True)
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(900)
        stop.set()
        watcher.join(60)
        peak = peak_rss_bytes(proc.process.pid)
        rep.check_alive(proc)
        rep.add_server_errors(proc)
    # The stated budget: idle RSS + the in-flight budget + per stream the message gRPC holds, its copy
    # in Python and the parsed request (3 x the receive limit), + 64 MiB for allocator slack.
    budget = baseline + inflight + streams * 3 * limit + 64 * MiB
    rep.bad_inputs_tried += streams * requests_per_stream
    rep.codes.update({k: v for k, v in codes.items() if k != "OK"})
    rep.scenarios["oversized_flood"] = {
        "streams": streams, "requests_per_stream": requests_per_stream, "receive_limit_bytes": limit,
        "answered": answered[0], "stream_outcomes": dict(codes),
        "idle_rss_mb": round(baseline / MiB, 1), "peak_rss_mb": round(peak / MiB, 1),
        "rss_budget_mb": round(budget / MiB, 1), "within_budget": peak <= budget,
        "healthy_p50_ms": round(1000 * percentile(healthy_latencies, 0.5), 1),
        "healthy_p99_ms": round(1000 * percentile(healthy_latencies, 0.99), 1),
    }


def scenario_watch_flood(rep: Report, checkpoint, folder, watches: int) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from lnpt.lab.testing.faults import good_request_bytes

    with start_server(checkpoint, folder, "watch_flood") as proc:
        channels = [grpc.insecure_channel(proc.address) for _ in range(4)]
        opened, refused = [], 0
        for i in range(watches):
            call = health_pb2_grpc.HealthStub(channels[i % 4]).Watch(health_pb2.HealthCheckRequest(service=f"s{i}"),
                                                                    timeout=120)
            try:
                next(call)
                opened.append(call)
            except grpc.RpcError as error:
                refused += error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        server_open = metrics(proc).get("lnpt_health_watches", -1)
        health_s = timed_health_check(proc.address)
        with grpc.insecure_channel(proc.address) as channel:
            raw = channel.stream_stream(STREAM_METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            stream_ok = len(list(raw(iter([good_request_bytes(1)]), timeout=10))) == 1
        for call in opened:
            call.cancel()
        for channel in channels:
            channel.close()
        rep.check_alive(proc)
        rep.add_server_errors(proc)
    rep.bad_inputs_tried += watches
    rep.scenarios["watch_flood"] = {
        "watches_tried": watches, "watches_open": int(server_open), "watches_refused": refused,
        "health_latency_under_flood_ms": round(1000 * health_s, 1), "new_stream_ok": stream_ok,
    }


def run(args: argparse.Namespace) -> int:
    result = reliability_benchmark(quick=args.quick, clients=args.clients, seed=args.seed,
                                   progress=args.format != "json")
    emit(args, result, summary_text(result))
    return 0 if result["samples_lost"] == 0 and result["server_crashes"] == 0 else 1


def reliability_benchmark(*, quick: bool, clients: int, seed: int, progress: bool = True) -> dict:
    """Every scenario against real server processes on loopback; the counts of what held and what not."""
    import torch

    from lnpt.shared.data import load_fashion_mnist
    from lnpt.shared.teacher_model import Teacher

    torch.set_num_threads(1)
    started = time.perf_counter()
    rep = Report()
    images = load_fashion_mnist(train=False)[0][:4096]
    with tempfile.TemporaryDirectory(prefix="lnpt-reliability-") as tmp:
        folder = Path(tmp)
        from lnpt.shared.model_file import save_model
        from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC
        from lnpt.shared.models import build_model

        torch.manual_seed(0)
        checkpoint = str(folder / "teacher-lenet5.pt")
        save_model(checkpoint, build_model("lenet5", 10, FASHION_MNIST_SPEC), kind="teacher",
                   input_spec=FASHION_MNIST_SPEC, class_names=list(FASHION_MNIST_CLASSES))
        local = Teacher.load(checkpoint)
        steps = [
            ("load", lambda: scenario_load(rep, checkpoint, folder, local, images, clients, 20 if quick else 200)),
            ("slow clients", lambda: scenario_slow_clients(rep, checkpoint, folder, local, images, 20 if quick else 60)),
            ("hostile input", lambda: scenario_hostile(rep, checkpoint, folder, local, images, 300 if quick else 3000, seed)),
            ("faults", lambda: scenario_faults(rep, checkpoint, folder, local, images, 40 if quick else 100)),
            ("security", lambda: scenario_security(rep, checkpoint, folder)),
            ("connection flood", lambda: scenario_connection_flood(rep, checkpoint, folder, 500 if quick else 3000)),
            ("oversized flood", lambda: scenario_oversized_flood(rep, checkpoint, folder, local, images,
                                                                 16 if quick else 96)),
            ("watch flood", lambda: scenario_watch_flood(rep, checkpoint, folder, 100 if quick else 300)),
        ]
        from tqdm import tqdm

        for name, step in tqdm(steps, desc="reliability", unit="scenario", disable=not progress):
            step()
    load, saturated = rep.scenarios["load"], rep.scenarios["saturated_queue"]
    result = {
        "quick": quick, "seconds": round(time.perf_counter() - started, 1),
        "samples_sent": rep.samples_sent, "samples_lost": rep.samples_lost, "server_crashes": rep.server_crashes,
        "load_held": not load["client_errors"] and not saturated["client_errors"] and load["lost"] == 0 == saturated["lost"],
        "faults_injected": rep.faults_injected, "faults_survived": rep.faults_survived,
        "bad_inputs_tried": rep.bad_inputs_tried,
        "errors_by_code": dict(sorted(rep.codes.items())), "server_errors_by_code": dict(sorted(rep.server_codes.items())),
        "connections_held_off": rep.scenarios["connection_flood"]["connections_held_off"],
        "peak_rss_mb": rep.scenarios["oversized_flood"]["peak_rss_mb"],
        "health_latency_under_flood_ms": rep.scenarios["connection_flood"]["health_latency_under_flood_ms"],
        **rep.scenarios,
    }
    return result


def summary_text(r: dict) -> str:
    load, sat, slow, hostile = r["load"], r["saturated_queue"], r["slow_clients"], r["hostile_input"]
    rows = [
        ("load held", f"{'yes' if r['load_held'] else 'NO'}: {load['clients']} streams x {load['batches_per_client']} "
                      f"batches, {load['samples_per_s']:.0f} samples/s, p50 {load['p50_ms']:.1f} ms, p99 "
                      f"{load['p99_ms']:.1f} ms, server RSS {load['server_rss_mib']:.0f} MiB "
                      f"(+{load['server_peak_rss_growth_mib']:.0f} peak)"),
        ("saturated queue", f"{sat['server_errors'].get('RESOURCE_EXHAUSTED', 0)} RESOURCE_EXHAUSTED, "
                            f"{sat['reconnects']} retries, lost {sat['lost']}, p99 {sat['p99_ms']:.1f} ms, "
                            f"RSS +{sat['server_peak_rss_growth_mib']:.0f} MiB peak"),
        ("slow/stalled clients", f"{slow['stalled_streams'] + slow['not_reading_streams']} cut {'within ' + str(slow['cut_within_s']) + ' s' if slow['all_cut'] else 'NOT ALL'} "
                                 f"(limit {slow['idle_limit_s']:g} s), healthy p99 {slow['healthy_p99_ms']:.1f} ms"),
        ("faults survived", f"{r['faults_survived']}/{r['faults_injected']} (" + ", ".join(
            f"{k}: {v['reconnects']} reconnects" for k, v in r["faults"].items()) + ")"),
        ("bad inputs tried", f"{r['bad_inputs_tried']} ({hostile['cases']} hostile requests, "
                             f"{hostile['raw_tcp_garbage']} raw TCP, security {r['security']['as_expected']} as expected); "
                             f"undefined status {hostile['undefined_status']}, RSS +{hostile['server_peak_rss_growth_mib']:.0f} MiB"),
        ("connection flood", f"{r['connection_flood']['connections_held_off']} of {r['connection_flood']['idle_connections']} "
                             f"idle connections held off in {r['connection_flood']['held_off_within_s']} s; health "
                             f"{r['connection_flood']['health_latency_under_flood_ms']} ms, new stream "
                             f"{r['connection_flood']['new_stream_under_flood_ms']} ms meanwhile"),
        ("oversized flood", f"peak RSS {r['oversized_flood']['peak_rss_mb']} MiB (budget {r['oversized_flood']['rss_budget_mb']}"
                            f" MiB, idle {r['oversized_flood']['idle_rss_mb']}); healthy p99 "
                            f"{r['oversized_flood']['healthy_p99_ms']} ms"),
        ("watch flood", f"{r['watch_flood']['watches_open']} open, {r['watch_flood']['watches_refused']} refused of "
                        f"{r['watch_flood']['watches_tried']}; health {r['watch_flood']['health_latency_under_flood_ms']} ms"),
        ("samples lost", f"{r['samples_lost']} of {r['samples_sent']}"),
        ("server crashes", str(r["server_crashes"])),
        ("errors by status code", ", ".join(f"{k} {v}" for k, v in r["errors_by_code"].items()) or "none"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + f"\n({r['seconds']:.0f} s)"
