"""Prometheus metrics of the guidance server, served over HTTP at /metrics.

Each server owns its registry, so several servers in one process (tests) never share counters.
"""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("lnpt.cloud.metrics")

# Seconds: from well under a millisecond (tiny teachers) to seconds (a large batch on CPU).
TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


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
        self.open_streams = Gauge("lnpt_open_streams", "StreamTargets calls now open", registry=r)
        self.http = None

    def serve(self, host: str, port: int) -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; returns the bound port (0 = any free)."""
        self.http, _ = start_http_server(port, addr=host, registry=self.registry)
        return int(self.http.server_port)

    def close(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
            self.http = None
