"""Prometheus metrics of the guidance server, served over HTTP at /metrics.

Each server owns its registry, so several servers in one process (tests) never share counters.
The endpoint is a small HTTP server of its own (not prometheus_client's, which starts one thread
per connection and waits forever for an idle one): a fixed pool of worker threads, a timeout on
every connection, connections beyond the pool answered 503 at once, no software banner, and
optionally a bearer token (the same tokens file as the gRPC calls).
"""
from __future__ import annotations

import http.server
import logging
import threading
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

log = logging.getLogger("lnpt.cloud.metrics")

# Seconds: from well under a millisecond (tiny teachers) to seconds (a large batch on CPU).
TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
HTTP_WORKERS = 4  # scrapes are rare and fast; more connections than this at once are refused
HTTP_TIMEOUT_SECONDS = 5.0  # per connection: a client that sends nothing is dropped after this


def name_native_thread(name: str) -> None:
    """Name the calling thread for the OS too (Linux: /proc/self/task/TID/comm, 15 characters), so
    CPU per thread (`top -H`, the profile of `lnpt bench serve`) tells the server's threads apart."""
    try:
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(name[:15])
    except OSError:  # not Linux, or /proc is read-only: only the names are lost
        pass


# A request's life on the server, in order; together they span its whole time there.
STAGES = ("decode", "queue", "forward", "encode", "reply_wait", "send")


class RequestStages:
    """Seconds spent per stage, summed over answered requests (a Prometheus custom collector)."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self.total_seconds = 0.0  # measured on its own, from receipt to the end of the send
        self.requests = 0

    def add(self, received: float, decoded: float, answer, written: float, sent: float) -> None:
        s = self.seconds
        s["decode"] += decoded - received
        s["queue"] += answer.forward_started - decoded
        s["forward"] += answer.forward_ended - answer.forward_started
        s["encode"] += answer.encoded - answer.forward_ended
        s["reply_wait"] += written - answer.encoded
        s["send"] += sent - written
        self.total_seconds += sent - received
        self.requests += 1

    def collect(self):
        stage = CounterMetricFamily("lnpt_request_stage_seconds",
                                    "Seconds answered requests spent in each stage on the server", labels=["stage"])
        for name, value in self.seconds.items():
            stage.add_metric([name], value)
        yield stage
        yield CounterMetricFamily("lnpt_request_server_seconds",
                                  "Seconds answered requests spent on the server, receipt to sent", value=self.total_seconds)
        yield CounterMetricFamily("lnpt_profiled_requests", "Answered requests counted in the stage seconds",
                                  value=self.requests)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lnpt_requests", "TargetsRequests received", registry=r)
        self.errors = Counter("lnpt_errors", "Calls ended with an error status, by gRPC code", ["code"], registry=r)
        self.samples = Counter("lnpt_samples_served", "Images answered with targets", registry=r)
        self.batch_size = Histogram("lnpt_batch_size", "Samples per teacher forward", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.queue_seconds = Histogram("lnpt_queue_seconds", "Time a request waited before its forward began",
                                       buckets=TIME_BUCKETS, registry=r)
        self.compute_seconds = Histogram("lnpt_compute_seconds", "Teacher forward time per batch",
                                         buckets=TIME_BUCKETS, registry=r)
        self.encode_seconds = Histogram("lnpt_encode_seconds",
                                        "Time per batch to convert the targets to the wire dtype and encode the answers",
                                        buckets=TIME_BUCKETS, registry=r)
        # Where a request's time goes on the server, per stage (decode ... send): plain counters read at
        # scrape time, so the hot path only adds two floats per stage. Mean per request = sum / count.
        self.stages = RequestStages()
        r.register(self.stages)
        self.open_streams = Gauge("lnpt_open_streams", "StreamTargets calls now open", registry=r)
        self.health_watches = Gauge("lnpt_health_watches", "grpc.health.v1 Watch streams now open", registry=r)
        self.inflight_bytes = Gauge("lnpt_inflight_bytes", "Bytes of requests accepted and not yet answered "
                                    "(server.max_inflight_bytes bounds it)", registry=r)
        self.connections_held_off = Counter("lnpt_connections_held_off", "Connections closed because their client "
                                            "address held server.max_connections_per_client already", registry=r)
        self.http: MetricsHttpServer | None = None

    def serve(self, host: str, port: int, tokens: list[bytes] | None = None) -> int:
        """Start the /metrics HTTP endpoint on its own threads; returns the bound port (0 = any free).

        With `tokens`, a scrape must send `Authorization: Bearer <token>`. Raises OSError when the
        port cannot be bound.
        """
        self.http = MetricsHttpServer((host, port), self.registry, tokens)
        threading.Thread(target=self.http.serve_forever, name="lnpt-metrics", daemon=True).start()
        return int(self.http.server_port)

    def close(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None


class MetricsHandler(http.server.BaseHTTPRequestHandler):
    server_version = "lnpt"
    sys_version = ""  # no "Python/3.x" in the Server header
    timeout = HTTP_TIMEOUT_SECONDS  # socket timeout of every read and write on this connection
    protocol_version = "HTTP/1.0"  # one request per connection: an idle keep-alive cannot hold a worker

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.answer(404, b"not found; metrics are at /metrics\n")
            return
        if not self.server.authorized(self.headers.get("Authorization")):
            self.answer(401, b"missing or invalid bearer token\n", {"WWW-Authenticate": "Bearer"})
            return
        self.answer(200, generate_latest(self.server.registry), {"Content-Type": CONTENT_TYPE_LATEST})

    def answer(self, code: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002 (http.server's signature)
        pass  # scrapes every few seconds would drown the server's own log


class MetricsHttpServer(http.server.HTTPServer):
    """An HTTP server with a bounded worker pool: a connection that finds every worker busy gets 503."""

    daemon_threads = True

    def __init__(self, address, registry: CollectorRegistry, tokens: list[bytes] | None):
        self.registry = registry
        self.tokens = tokens
        self.pool = ThreadPoolExecutor(max_workers=HTTP_WORKERS, thread_name_prefix="lnpt-metrics")
        self.free = threading.Semaphore(HTTP_WORKERS)
        super().__init__(address, MetricsHandler)  # binds: OSError when the port is taken

    def authorized(self, header: str | None) -> bool:
        if not self.tokens:
            return True
        from lnpt.cloud.security import token_matches

        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and token_matches(token.strip().encode(), self.tokens)

    def process_request(self, request, client_address) -> None:
        if not self.free.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        self.pool.submit(self.handle_in_worker, request, client_address)

    def handle_in_worker(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # a broken or timed-out connection ends only itself
            pass
        finally:
            self.shutdown_request(request)
            self.free.release()

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)
