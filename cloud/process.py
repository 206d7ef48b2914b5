"""`lnpt serve` as a child process: start it, wait until health says SERVING, drain or kill it.

The demo, the benchmarks and the end-to-end tests all run the real server this way (a separate
process, as in production), optionally pinned to one CPU core so it does not fight its clients.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import grpc

from lnpt.shared.errors import LnptError


class ServerStartError(LnptError, RuntimeError):
    """The server process exited or never became SERVING; the message points at its log."""


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
            raise ServerStartError(f"server process exited with code {process.returncode} before serving")
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
            raise ServerStartError(f"server at {address} not SERVING after {timeout:.0f} s")
        time.sleep(0.2)


@dataclass
class ServerProcess:
    """One `lnpt serve` child on a fixed port (so a restart comes back at the same address).

    TLS is used when `cert`/`key` are given (clients verify against `ca_cert`); `client_ca` turns on
    mutual TLS (the health probe then presents `probe_cert`/`probe_key`); `tokens_file` turns on
    bearer-token auth. `metrics_port` -1 turns /metrics off. `core` pins the process to one CPU.
    """

    checkpoint: str | os.PathLike
    port: int = field(default_factory=free_port)
    cert: str | os.PathLike | None = None
    key: str | os.PathLike | None = None
    ca_cert: str | os.PathLike | None = None
    client_ca: str | os.PathLike | None = None
    tokens_file: str | os.PathLike | None = None
    probe_cert: str | os.PathLike | None = None
    probe_key: str | os.PathLike | None = None
    metrics_port: int = -1
    overrides: Sequence[str] = ()
    core: int | None = None
    log_path: str | os.PathLike | None = None
    process: subprocess.Popen | None = None

    @property
    def tls(self) -> bool:
        return self.cert is not None

    @property
    def address(self) -> str:
        # The test certificates name localhost; plaintext uses the literal loopback address.
        return f"localhost:{self.port}" if self.tls else f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "lnpt.shared.cli", "serve", "--checkpoint", str(self.checkpoint),
               "--host", "127.0.0.1", "--port", str(self.port), "--metrics-port", str(self.metrics_port),
               "--set", "batcher.threads=1"]
        if self.tls:
            cmd += ["--cert", str(self.cert), "--key", str(self.key)]
            if self.client_ca:
                cmd += ["--client-ca", str(self.client_ca)]
        else:
            cmd.append("--insecure")
        if self.tokens_file:
            cmd += ["--tokens-file", str(self.tokens_file)]
        for item in self.overrides:
            cmd += ["--set", item]
        return cmd

    def credentials(self) -> grpc.ChannelCredentials | None:
        """Channel credentials a health probe can use (probes need no token)."""
        if not self.tls:
            return None
        read = lambda path: Path(path).read_bytes() if path else None  # noqa: E731
        return grpc.ssl_channel_credentials(read(self.ca_cert), read(self.probe_key), read(self.probe_cert))

    def start(self, timeout: float = 60) -> "ServerProcess":
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        pin = (lambda: os.sched_setaffinity(0, {self.core})) if self.core is not None else None
        try:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                            preexec_fn=pin)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        try:
            wait_serving(self.address, self.credentials(), timeout, self.process)
        except BaseException as exc:
            self.kill()
            if isinstance(exc, ServerStartError) and self.log_path:
                raise ServerStartError(f"{exc}; see {self.log_path}") from exc
            raise
        return self

    def kill(self) -> None:
        """SIGKILL: the server vanishes without draining (a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM: graceful drain; returns the exit code (kills after `timeout`)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def restart(self, timeout: float = 60) -> "ServerProcess":
        """Kill (if running) and start again on the same port."""
        self.kill()
        return self.start(timeout)

    def logs(self) -> str:
        path = Path(self.log_path) if self.log_path else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def __enter__(self) -> "ServerProcess":
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.kill()
