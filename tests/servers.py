"""Real guidance servers for tests: in a background thread, or as an `lnpt serve` subprocess.

    from servers import make_teacher, running_server, server_process

    teacher_path = make_teacher(tmp_path / "T.pt")            # untrained lenet5, Fashion-MNIST spec
    with running_server(teacher_path) as srv:                  # insecure, 127.0.0.1, ephemeral port
        channel = grpc.insecure_channel(srv.address)
    with server_process(teacher_path) as proc:                 # `lnpt serve` subprocess
        proc.kill(); proc.restart()                            # same port again

With `tls=generate_test_pki(folder)` the server uses TLS (and mutual TLS with `mutual=True`); clients
then connect to `localhost:PORT` (`srv.tls_address`) with `pki.ca_cert` as root certificate.
Bearer tokens: pass `overrides=["server.tokens_file=\"/path\""]`; clients send metadata
`("authorization", "Bearer <token>")`.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import grpc

from lnpt.cloud.certs import TestPki
from lnpt.cloud.server import GuidanceServer
from lnpt.shared.config import Config, load_config


def make_teacher(path, arch: str = "lenet5", input_spec=None, num_classes: int = 10, seed: int = 0) -> Path:
    """An untrained teacher model file (real architecture, random weights): enough to test serving."""
    import torch

    from lnpt.shared.checkpoint import save_model
    from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC
    from lnpt.shared.zoo import build_model

    spec = input_spec or FASHION_MNIST_SPEC
    torch.manual_seed(seed)
    model = build_model(arch, num_classes, spec)
    names = list(FASHION_MNIST_CLASSES) if num_classes == 10 else [f"class {i}" for i in range(num_classes)]
    save_model(path, model, kind="teacher", input_spec=spec, class_names=names)
    return Path(path)


def server_config(overrides: Sequence[str] = (), tls: TestPki | None = None, mutual: bool = False,
                  port: int = 0) -> Config:
    base = [f"server.port={port}", "server.metrics_port=0", "server.grace_seconds=5", "batcher.threads=1"]
    if tls is None:
        base.append("server.insecure=true")
    else:
        base += [f"server.cert={json.dumps(str(tls.server_cert))}", f"server.key={json.dumps(str(tls.server_key))}"]
        if mutual:
            base.append(f"server.client_ca={json.dumps(str(tls.ca_cert))}")
    return load_config(None, [*base, *overrides])


class ThreadServer:
    """A GuidanceServer running on its own event loop in a daemon thread."""

    def __init__(self, config: Config, checkpoint):
        self.config = config
        self.checkpoint = str(checkpoint)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="guidance-server", daemon=True)
        self.server: GuidanceServer | None = None
        self.stopped = False

    def call(self, coroutine, timeout: float = 60):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> "ThreadServer":
        self.thread.start()

        async def create_and_start():
            self.server = GuidanceServer(self.config, checkpoint=self.checkpoint)
            await self.server.start()

        self.call(create_and_start())
        return self

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls_address(self) -> str:
        return f"localhost:{self.port}"  # the name in the test server certificate

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    def stop(self, grace: float | None = 2.0) -> None:
        """Drain and stop (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        try:
            self.call(self.server.stop(grace), timeout=(grace or 0) + 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@contextlib.contextmanager
def running_server(checkpoint_path, overrides: Sequence[str] = (), tls: TestPki | None = None,
                   mutual: bool = False) -> Iterator[ThreadServer]:
    """A real grpc.aio guidance server on 127.0.0.1 (ephemeral port) in a background thread."""
    server = ThreadServer(server_config(overrides, tls, mutual), checkpoint_path)
    try:
        server.start()
    except BaseException:
        server.loop.call_soon_threadsafe(server.loop.stop)
        raise
    try:
        yield server
    finally:
        server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(address: str, credentials: grpc.ChannelCredentials | None = None, timeout: float = 60,
                 process: subprocess.Popen | None = None) -> None:
    """Poll grpc.health.v1 Check until SERVING; fails early when `process` exits."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode} before serving")
        channel = grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        finally:
            channel.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"server at {address} not SERVING after {timeout} s")
        time.sleep(0.2)


class ServerProcess:
    """`lnpt serve` as a subprocess on a fixed port, so it can be killed and restarted in place."""

    def __init__(self, checkpoint, overrides: Sequence[str], tls: TestPki | None, mutual: bool, port: int,
                 log_path: Path):
        self.checkpoint = str(checkpoint)
        self.overrides = list(overrides)
        self.tls = tls
        self.mutual = mutual
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}" if self.tls is None else f"localhost:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "lnpt.shared.cli", "serve", "--checkpoint", self.checkpoint,
               "--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", "-1",
               "--set", "batcher.threads=1", "--set", "server.grace_seconds=5"]
        if self.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--cert", str(self.tls.server_cert), "--key", str(self.tls.server_key)]
            if self.mutual:
                cmd += ["--client-ca", str(self.tls.ca_cert)]
        for item in self.overrides:
            cmd += ["--set", item]
        return cmd

    def credentials(self) -> grpc.ChannelCredentials | None:
        if self.tls is None:
            return None
        chain = (self.tls.client_key.read_bytes(), self.tls.client_cert.read_bytes()) if self.mutual else (None, None)
        return grpc.ssl_channel_credentials(self.tls.ca_cert.read_bytes(), *chain)

    def start(self, timeout: float = 60) -> "ServerProcess":
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_serving(self.address, self.credentials(), timeout, self.process)
        except BaseException:
            self.kill()
            raise
        return self

    def kill(self) -> None:
        """SIGKILL: the server vanishes without draining (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM: graceful drain; returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def restart(self, timeout: float = 60) -> "ServerProcess":
        """Kill (if running) and start again on the same port."""
        self.kill()
        return self.start(timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextlib.contextmanager
def server_process(checkpoint_path, overrides: Sequence[str] = (), tls: TestPki | None = None,
                   mutual: bool = False, port: int | None = None, log_path=None) -> Iterator[ServerProcess]:
    """`lnpt serve` in a subprocess, yielded once health says SERVING; killed at the end."""
    if log_path is None:
        log_path = Path(checkpoint_path).with_name(f"server-{os.getpid()}-{time.monotonic_ns()}.log")
    proc = ServerProcess(checkpoint_path, overrides, tls, mutual, port or free_port(), Path(log_path))
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()
