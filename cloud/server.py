"""The guidance server: gRPC (aio) with the Guidance service, health, reflection, metrics, security.

Lifecycle: bind the port with health NOT_SERVING -> load the teacher off the event loop -> start the
batcher -> SERVING. `stop()` drains: health NOT_SERVING, new calls refused UNAVAILABLE, open streams
get the answers for what they already sent, then the server closes within the grace period.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lnpt.cloud.batcher import DynamicBatcher
from lnpt.cloud.metrics import ServerMetrics
from lnpt.cloud.security import TokenAuthInterceptor, load_tokens, server_credentials
from lnpt.cloud.service import GuidanceServicer
from lnpt.shared.config import Config, ConfigError
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.protocol import guidance_pb2_grpc
from lnpt.shared.teacher_model import Teacher

log = logging.getLogger("lnpt.cloud.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Guidance"].full_name  # "lnpt.v1.Guidance"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def channel_options(max_message_bytes: int) -> list[tuple[str, int]]:
    """Message limits set explicitly (gRPC's 4 MiB default is too small for image batches)."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


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
        self.metrics = ServerMetrics()
        self.servicer = GuidanceServicer(config, self.metrics)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
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
        interceptors = []
        if cfg.tokens_file:
            tokens = load_tokens(cfg.tokens_file)
            interceptors.append(TokenAuthInterceptor(
                tokens, on_refused=lambda method: self.metrics.errors.labels(code="UNAUTHENTICATED").inc()))
        options = channel_options(cfg.max_message_bytes) + [
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
            ("grpc.keepalive_permit_without_calls", 1),  # clients may ping idle connections
            *([("grpc.max_connection_age_ms", int(cfg.max_connection_age_seconds * 1000)),
               ("grpc.max_connection_age_grace_ms", int(cfg.grace_seconds * 1000))]
              if cfg.max_connection_age_seconds else []),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
        self.server = grpc.aio.server(interceptors=interceptors, options=options)
        guidance_pb2_grpc.add_GuidanceServicer_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, NOT_SERVING)
        bind = f"{cfg.host}:{cfg.port}"
        try:
            self.port = (self.server.add_secure_port(bind, credentials) if credentials
                         else self.server.add_insecure_port(bind))
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {bind} ({exc}); is the port in use? "
                              "Choose another with --port or server.port") from exc
        await self.server.start()
        try:
            await self.load_teacher()
        except BaseException:
            await self.server.stop(0)
            raise
        if cfg.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(cfg.host, cfg.metrics_port)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, SERVING)
        log.info("serving %s version %s on %s (%s)%s", self.teacher.arch, self.teacher.version, self.address,
                 "insecure" if cfg.insecure else "mutual TLS" if cfg.client_ca else "TLS",
                 f", metrics on :{self.metrics_port}/metrics" if self.metrics_port else "",
                 extra={"fields": {"address": self.address, "teacher": self.teacher.arch,
                                   "teacher_version": self.teacher.version, "metrics_port": self.metrics_port}})

    async def load_teacher(self) -> None:
        import torch

        b = self.config.batcher
        if b.threads:
            torch.set_num_threads(b.threads)
        if self.teacher is None:
            log.info("loading teacher %s", self.checkpoint)
            self.teacher = await asyncio.get_running_loop().run_in_executor(None, Teacher.load, self.checkpoint, b.device)
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
        if self.server is not None:
            await self.server.stop(max(0.0, min(0.1, deadline - time.monotonic())))
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
