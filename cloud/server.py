"""The guidance server: gRPC (aio) with the Guidance service, health, reflection, metrics, security.

Lifecycle: read the teacher's model file (its input spec sets the receive limit) -> bind the port
with health NOT_SERVING -> build the teacher off the event loop -> start the batcher -> SERVING.
`stop()` drains: health NOT_SERVING, new calls refused UNAVAILABLE, open streams get the answers
for what they already sent, then the server closes within the grace period.

Connection budgets (issue: a flood of idle connections once exhausted the open-file limit): each
port holds at most `server.max_connections` connections (derived from the open-file limit, which
start raises to its hard limit), each client address at most `server.max_connections_per_client`
(`ConnectionGuard`); a connection that has not finished TCP + TLS + HTTP/2 within
`server.handshake_timeout_seconds`, or holds no call for `server.connection_idle_seconds`, is
closed. `server.health_port` serves grpc.health.v1 alone with its own budget, so probes answer
while the main port is full.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import signal
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lnpt.cloud.batcher import DynamicBatcher
from lnpt.cloud.connections import (HEALTH_PORT_CONNECTIONS, ConnectionGuard, connection_budget,
                                    raise_open_file_limit)
from lnpt.cloud.metrics import ServerMetrics
from lnpt.cloud.security import TokenAuthInterceptor, load_tokens, server_credentials
from lnpt.cloud.service import GuidanceServicer, add_to_server, max_request_bytes, peer_host
from lnpt.shared.config import Config, ConfigError
from lnpt.shared.devices import resolve_device
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.teacher_model import Teacher, read_teacher

log = logging.getLogger("lnpt.cloud.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Guidance"].full_name  # "lnpt.v1.Guidance"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


MAX_SEND_BYTES = 64 * 1024 * 1024  # answers are the server's own: a large batch of float32 targets fits


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Message limits set explicitly: receive what the largest legal request needs, send answers."""
    return [
        ("grpc.max_send_message_length", max(max_message_bytes, MAX_SEND_BYTES)),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


class BoundedHealth(health.aio.HealthServicer):
    """grpc.health.v1 with Watch streams bounded: at most `limit` open (server.max_health_watches)
    and `per_client` per client address; the reference servicer takes any number, unauthenticated."""

    def __init__(self, limit: int, per_client: int, gauge=None, on_refused=None):
        super().__init__()
        self.limit, self.per_client = limit, per_client
        self.open = 0
        self.by_client: collections.Counter = collections.Counter()
        self.gauge = gauge
        self.on_refused = on_refused

    async def Watch(self, request, context) -> None:
        client = peer_host(context.peer())
        if self.open >= self.limit or (self.per_client and self.by_client[client] >= self.per_client):
            if self.on_refused:
                self.on_refused()
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many health watches open (server.max_health_watches = {self.limit}, "
                                f"{self.per_client or 'no limit'} per client address); use Check, or retry later")
        self.open += 1
        self.by_client[client] += 1
        self.update_gauge()
        try:
            await super().Watch(request, context)
        finally:
            self.open -= 1
            self.by_client[client] -= 1
            if not self.by_client[client]:
                del self.by_client[client]
            self.update_gauge()

    def update_gauge(self) -> None:
        if self.gauge is not None:
            self.gauge.set(self.open)


class GuidanceServer:
    """One guidance server. `await start()`, then `.port`; `await stop(grace)` drains and closes.

    Give either a loaded `teacher` or a `checkpoint` path (loaded during start, health NOT_SERVING
    meanwhile).
    """

    def __init__(self, config: Config, *, checkpoint: str | None = None, teacher: Teacher | None = None):
        if (checkpoint is None) == (teacher is None):
            raise ValueError("give exactly one of checkpoint= or teacher=")
        self.config = config
        self.checkpoint = checkpoint
        self.teacher = teacher
        self.record = None  # the model file, read before binding (its input spec sets the receive limit)
        self.metrics = ServerMetrics()
        self.servicer = GuidanceServicer(config, self.metrics)
        self.health = BoundedHealth(config.server.max_health_watches, config.server.max_streams_per_client,
                                    self.metrics.health_watches,
                                    lambda: self.metrics.errors.labels(code="RESOURCE_EXHAUSTED").inc())
        self.server: grpc.aio.Server | None = None
        self.health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        self.guard: ConnectionGuard | None = None
        self.max_message_bytes = 0  # the receive limit in force (derived from the teacher unless configured)
        self.batcher: DynamicBatcher | None = None
        self.port: int = 0
        self.metrics_port: int | None = None
        self.stopped = asyncio.Event()
        self.stopping = False

    @property
    def address(self) -> str:
        return f"{self.config.server.host}:{self.port}"

    async def start(self) -> None:
        cfg = self.config.server
        credentials = server_credentials(cfg)  # fails before binding when TLS files are wrong
        device = str(resolve_device(self.config.batcher.device, "batcher.device"))
        tokens = load_tokens(cfg.tokens_file) if cfg.tokens_file else []
        if tokens and cfg.insecure:
            log.warning("bearer tokens over plaintext (--insecure with --tokens-file): anyone on the network path "
                        "can read and reuse them; serve with TLS (server.cert, server.key) outside a test setup")
        if self.teacher is None:
            log.info("reading teacher %s", self.checkpoint)
            self.record = await asyncio.get_running_loop().run_in_executor(None, read_teacher, self.checkpoint,
                                                                           self.config.teacher)
        spec = self.record.input_spec if self.teacher is None else self.teacher.input_spec
        needed = max_request_bytes(spec, self.config.batcher.max_request_batch)
        self.max_message_bytes = cfg.max_message_bytes or needed
        if self.max_message_bytes < needed:
            log.warning("server.max_message_bytes = %d is below the %d bytes a full request (batcher.max_request_batch "
                        "float32 images) needs; such requests will be refused", self.max_message_bytes, needed)
        self.servicer.max_message_bytes = self.max_message_bytes
        self.servicer.tokens = tokens
        interceptors = []
        if tokens:
            interceptors.append(TokenAuthInterceptor(
                tokens, on_refused=lambda method: self.metrics.errors.labels(code="UNAUTHENTICATED").inc()))
        open_files = raise_open_file_limit()
        connections = connection_budget(cfg.max_connections, open_files, cfg.health_port >= 0)
        self.server = grpc.aio.server(interceptors=interceptors,
                                      options=self.server_options(self.max_message_bytes, connections))
        add_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, NOT_SERVING)
        self.port = self.bind(self.server, cfg.port, credentials, "--port or server.port")
        if cfg.health_port >= 0:
            self.health_server = grpc.aio.server(options=self.server_options(4096, HEALTH_PORT_CONNECTIONS))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self.bind(self.health_server, cfg.health_port, credentials, "server.health_port")
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        try:
            await self.load_teacher(device)
            if cfg.metrics_port >= 0:
                self.metrics_port = self.serve_metrics(tokens if cfg.metrics_require_token else None)
        except BaseException:
            await self.close_ports()
            raise
        if cfg.max_connections_per_client and ConnectionGuard.available():
            ports = {self.port} | ({self.health_port} if self.health_port is not None else set())
            self.guard = ConnectionGuard(ports, cfg.max_connections_per_client,
                                         on_held_off=self.metrics.connections_held_off.inc).start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, SERVING)
        log.info("serving %s version %s on %s (%s)%s; receive limit %d bytes, %d connections (open-file limit %d)",
                 self.teacher.arch, self.teacher.version, self.address,
                 "insecure" if cfg.insecure else "mutual TLS" if cfg.client_ca else "TLS",
                 f", metrics on :{self.metrics_port}/metrics" if self.metrics_port else "",
                 self.max_message_bytes, connections, open_files,
                 extra={"fields": {"address": self.address, "teacher": self.teacher.arch,
                                   "teacher_version": self.teacher.version, "metrics_port": self.metrics_port,
                                   "health_port": self.health_port, "max_message_bytes": self.max_message_bytes,
                                   "max_connections": connections, "open_file_limit": open_files}})

    def server_options(self, max_message_bytes: int, max_connections: int) -> list[tuple[str, int]]:
        cfg = self.config.server
        return channel_options(max_message_bytes) + [
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
            ("grpc.keepalive_permit_without_calls", 1),  # clients may ping idle connections
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.max_allowed_incoming_connections", max_connections),
            ("grpc.server_handshake_timeout_ms", int(cfg.handshake_timeout_seconds * 1000)),
            *([("grpc.max_connection_idle_ms", int(cfg.connection_idle_seconds * 1000))]
              if cfg.connection_idle_seconds else []),
            *([("grpc.max_connection_age_ms", int(cfg.max_connection_age_seconds * 1000)),
               ("grpc.max_connection_age_grace_ms", int(cfg.grace_seconds * 1000))]
              if cfg.max_connection_age_seconds else []),
        ]

    def bind(self, server: grpc.aio.Server, port: int, credentials, option: str) -> int:
        bind = f"{self.config.server.host}:{port}"
        try:
            return server.add_secure_port(bind, credentials) if credentials else server.add_insecure_port(bind)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {bind} ({exc}); is the port in use? Choose another with {option}") from exc

    def serve_metrics(self, tokens: list[bytes] | None) -> int:
        cfg = self.config.server
        host = cfg.metrics_host or cfg.host
        try:
            return self.metrics.serve(host, cfg.metrics_port, tokens)
        except OSError as exc:
            raise ConfigError(f"cannot serve /metrics on {host}:{cfg.metrics_port} ({exc.strerror or exc}); is the "
                              "port in use? Choose another with --metrics-port or server.metrics_port "
                              "(-1 turns /metrics off)") from exc

    async def close_ports(self) -> None:
        for server in (self.server, self.health_server):
            if server is not None:
                await server.stop(0)

    async def load_teacher(self, device: str) -> None:
        import torch

        b = self.config.batcher
        if b.threads:
            torch.set_num_threads(b.threads)
        if self.teacher is None:
            log.info("building teacher %s on %s", self.record.arch, device)
            self.teacher = await asyncio.get_running_loop().run_in_executor(None, Teacher, self.record, device)
        self.batcher = DynamicBatcher(self.teacher, max_batch_size=b.max_batch_size,
                                      max_queue_delay_ms=b.max_queue_delay_ms,
                                      max_queue_requests=b.max_queue_requests, metrics=self.metrics)
        self.batcher.start()
        self.servicer.ready(self.teacher, self.batcher)

    async def stop(self, grace: float | None = None) -> None:
        """Drain and close: NOT_SERVING, refuse new calls, finish accepted requests, exit within `grace`."""
        if self.stopping:
            await self.stopped.wait()
            return
        self.stopping = True
        grace = self.config.server.grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        log.info("draining (grace %.1f s, %d open streams)", grace, self.servicer.open_streams)
        await self.health.enter_graceful_shutdown()
        self.servicer.start_draining()
        try:
            await asyncio.wait_for(self.servicer.drained.wait(), timeout=grace)
        except asyncio.TimeoutError:
            log.warning("grace period over with %d streams still open; cancelling them", self.servicer.open_streams)
        # What is left are health watches and the odd unary call: a short grace lets them see NOT_SERVING.
        if self.guard is not None:
            self.guard.stop()
        if self.server is not None:
            await self.server.stop(max(0.0, min(0.1, deadline - time.monotonic())))
        if self.health_server is not None:
            await self.health_server.stop(0)
        if self.batcher is not None:
            await self.batcher.stop()
        self.metrics.close()
        log.info("stopped")
        self.stopped.set()

    async def wait_for_termination(self) -> None:
        await self.stopped.wait()


async def serve_until_signal(config: Config, checkpoint: str) -> None:
    """Run a server until SIGTERM or SIGINT, then drain within server.grace_seconds."""
    server = GuidanceServer(config, checkpoint=checkpoint)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    log.info("signal received")
    await server.stop()


def serve(config: Config, checkpoint: str) -> None:
    """Blocking entry point of `lnpt serve`."""
    asyncio.run(serve_until_signal(config, checkpoint))
