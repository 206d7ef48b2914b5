"""`serve()`: run the guidance server for a teacher, blocking until a signal or in the background."""
from __future__ import annotations

import os
from typing import Any

from lnpt.cloud.background import BackgroundServer
from lnpt.shared.config import Config, updated
from lnpt.shared.teacher_model import Teacher


def serve(teacher: str | os.PathLike | Teacher, config: Config | None = None, *, background: bool = False,
          **settings: Any) -> BackgroundServer | None:
    """Serve `teacher` (a teacher file, or a loaded Teacher) over gRPC: lnpt.v1.Guidance, health,
    reflection and Prometheus metrics, with the [server] and [batcher] settings of `config`;
    `settings` override [server] keys by name (port=0 picks a free port, insecure=True, ...).

    Blocking (the default, what `lnpt serve` runs): until SIGTERM/SIGINT, then drain. With
    `background=True`: returns a started BackgroundServer; as a context manager it yields the bound
    address and drains on exit.

        >>> from lnpt.cloud import serve
        >>> with serve("teacher.pt", port=0, insecure=True, background=True) as address:  # doctest: +SKIP
        ...     print(address)
        127.0.0.1:41234
    """
    config = updated(config or Config(), "server", source="serve()", **settings)
    loaded = teacher if isinstance(teacher, Teacher) else None
    if background:
        return BackgroundServer(config, None if loaded else teacher, loaded).start()
    if loaded is not None:
        raise ValueError("blocking serve() takes a teacher file; use background=True for a loaded Teacher")
    from lnpt.cloud.server import serve as serve_until_signal

    serve_until_signal(config, str(teacher))
    return None
