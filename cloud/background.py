"""A guidance server on its own event loop in a background thread, for notebooks, tests and the demo.

`serve(..., background=True)` returns one; as a context manager it yields the bound address:

    >>> from lnpt.cloud import serve
    >>> with serve("teacher.pt", port=0, insecure=True, background=True) as address:  # doctest: +SKIP
    ...     ...  # prune/train against `address`
"""
from __future__ import annotations

import asyncio
import threading

from lnpt.cloud.server import GuidanceServer
from lnpt.shared.config import Config
from lnpt.shared.teacher_model import Teacher


class BackgroundServer:
    """A started GuidanceServer in a daemon thread; `stop()` drains it (also on leaving `with`)."""

    def __init__(self, config: Config, checkpoint: str | None = None, teacher: Teacher | None = None):
        self.config = config
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.teacher = teacher
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="guidance-server", daemon=True)
        self.server: GuidanceServer | None = None
        self.stopped = False

    def call(self, coroutine, timeout: float = 60):
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> "BackgroundServer":
        self.thread.start()

        async def create_and_start():
            self.server = GuidanceServer(self.config, checkpoint=self.checkpoint, teacher=self.teacher)
            await self.server.start()

        try:
            self.call(create_and_start())
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise
        return self

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        """`host:port` as clients dial it (the listening host; loopback when listening on all)."""
        host = self.config.server.host
        return f"{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{self.port}"

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    def stop(self, grace: float | None = None) -> None:
        """Drain (health NOT_SERVING, in-flight batches finish) and stop; idempotent."""
        if self.stopped:
            return
        self.stopped = True
        grace = self.config.server.grace_seconds if grace is None else grace
        try:
            self.call(self.server.stop(grace), timeout=(grace or 0) + 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def __enter__(self) -> str:
        return self.address

    def __exit__(self, *exc) -> None:
        self.stop()
