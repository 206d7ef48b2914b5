"""Real guidance servers for tests: in a background thread, or as an `lnpt serve` subprocess.

    from support.servers import make_teacher, running_server, server_process

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

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Iterator, Sequence


from lnpt.cloud.certs import TestPki
from lnpt.cloud.process import ServerProcess, free_port
from lnpt.cloud.background import BackgroundServer
from lnpt.shared.config import Config, load_config


def make_teacher(path, arch: str = "lenet5", input_spec=None, num_classes: int = 10, seed: int = 0) -> Path:
    """An untrained teacher model file (real architecture, random weights): enough to test serving."""
    import torch

    from lnpt.shared.model_file import save_model
    from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC
    from lnpt.shared.models import build_model

    spec = input_spec or FASHION_MNIST_SPEC
    torch.manual_seed(seed)
    model = build_model(arch, num_classes, spec)
    names = list(FASHION_MNIST_CLASSES) if num_classes == 10 else [f"class {i}" for i in range(num_classes)]
    save_model(path, model, kind="teacher", input_spec=spec, class_names=names)
    return Path(path)


def make_student(path, arch: str = "lenet5", density: float = 0.5, seed: int = 1) -> Path:
    """A student with random masks keeping `density` of every layer, saved as a student file."""
    import torch
    from torch.nn.utils import prune

    from lnpt.edge.student import prunable_modules, save_student
    from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC
    from lnpt.shared.models import build_model

    torch.manual_seed(seed)
    model = build_model(arch, 10, FASHION_MNIST_SPEC)
    for module in prunable_modules(model).values():
        prune.random_unstructured(module, "weight", 1 - density)
    save_student(path, model, input_spec=FASHION_MNIST_SPEC, class_names=list(FASHION_MNIST_CLASSES))
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


class ThreadServer(BackgroundServer):
    """The product's background server, plus the address the test certificates name."""

    @property
    def tls_address(self) -> str:
        return f"localhost:{self.port}"


@contextlib.contextmanager
def running_server(checkpoint_path, overrides: Sequence[str] = (), tls: TestPki | None = None,
                   mutual: bool = False) -> Iterator[ThreadServer]:
    """A real grpc.aio guidance server on 127.0.0.1 (ephemeral port) in a background thread."""
    server = ThreadServer(server_config(overrides, tls, mutual), checkpoint_path).start()
    try:
        yield server
    finally:
        server.stop(grace=2.0)


@contextlib.contextmanager
def server_process(checkpoint_path, overrides: Sequence[str] = (), tls: TestPki | None = None,
                   mutual: bool = False, port: int | None = None, log_path=None) -> Iterator[ServerProcess]:
    """`lnpt serve` in a subprocess, yielded once health says SERVING; killed at the end."""
    if log_path is None:
        log_path = Path(checkpoint_path).with_name(f"server-{os.getpid()}-{time.monotonic_ns()}.log")
    pki = dict(cert=tls.server_cert, key=tls.server_key, ca_cert=tls.ca_cert) if tls else {}
    if tls and mutual:
        pki.update(client_ca=tls.ca_cert, probe_cert=tls.client_cert, probe_key=tls.client_key)
    proc = ServerProcess(checkpoint_path, port=port or free_port(), log_path=Path(log_path),
                         overrides=["server.grace_seconds=5", *overrides], **pki)
    proc.start()
    try:
        yield proc
    finally:
        proc.kill()
