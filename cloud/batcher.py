"""Dynamic batching: requests from every open stream merge into one teacher forward.

Like Triton's dynamic batcher: a bounded queue, a largest batch and a longest queue delay. The
oldest waiting request never waits more than `max_queue_delay_ms` for company; a full queue is
refused (`QueueFull`) instead of growing memory. The teacher runs in inference mode on a single
worker thread so the event loop keeps reading and writing streams while it computes; the next batch
collects while the current one runs.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field

import torch

from lnpt.shared.data import normalize
from lnpt.shared.teacher_model import Teacher

log = logging.getLogger("lnpt.cloud.batcher")


class QueueFull(Exception):
    """The batcher's queue holds `max_queue_requests` requests already."""


class BatcherStopped(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass
class Pending:
    images: torch.Tensor  # N x C x H x W, uint8 pixels or float model input
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


class DynamicBatcher:
    """`await submit(images)` -> (features, logits) float32, computed in a merged batch."""

    def __init__(self, teacher: Teacher, *, max_batch_size: int, max_queue_delay_ms: float,
                 max_queue_requests: int, metrics=None):
        self.teacher = teacher
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self.max_queue_requests = max_queue_requests
        self.queue: collections.deque[Pending] = collections.deque()
        self.wakeup = asyncio.Event()  # set on every new request and on stop
        self.metrics = metrics
        # One thread: the teacher is one model; a second thread would only contend for the same cores.
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher")
        self.task: asyncio.Task | None = None
        self.carry: Pending | None = None  # a request that did not fit in the previous batch
        self.stopping = False

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run(), name="lnpt-batcher")

    def submit_nowait(self, images: torch.Tensor) -> asyncio.Future:
        """Queue a request; the returned future resolves to (features, logits). Raises QueueFull."""
        if self.stopping:
            raise BatcherStopped("the server is shutting down")
        if len(self.queue) >= self.max_queue_requests:
            raise QueueFull(f"the server's request queue is full ({self.max_queue_requests} requests waiting); "
                            "retry later or send fewer requests at once")
        future = asyncio.get_running_loop().create_future()
        self.queue.append(Pending(images, future))
        self.wakeup.set()
        return future

    async def run(self) -> None:
        while True:
            batch = await self.collect()
            if not batch:
                return  # stopped and nothing left
            await self.compute(batch)

    async def collect(self) -> list[Pending]:
        """The next batch: wait for a first request, then add more until the batch is full or the
        first one has waited `max_queue_delay_ms`."""
        first = self.carry or await self.next_request(None)
        self.carry = None
        if first is None:
            return []
        batch, samples = [first], first.size
        deadline = first.enqueued + self.max_delay
        while samples < self.max_batch_size:
            item = await self.next_request(deadline)
            if item is None:
                break
            if samples + item.size > self.max_batch_size:
                self.carry = item  # requests are never split: it opens the next batch
                break
            batch.append(item)
            samples += item.size
        return batch

    async def next_request(self, deadline: float | None) -> Pending | None:
        """A queued request; None when the deadline passed or the batcher stops with an empty queue."""
        while not self.queue:
            if self.stopping:
                return None
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return None
            self.wakeup.clear()
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        return self.queue.popleft()

    async def compute(self, batch: list[Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a cancelled stream no longer waits
        if not live:
            return
        started = time.monotonic()
        if self.metrics:
            for p in live:
                self.metrics.queue_seconds.observe(started - p.enqueued)
        try:
            features, logits = await asyncio.get_running_loop().run_in_executor(
                self.executor, self.forward, [p.images for p in live])
        except Exception as exc:  # a teacher failure fails this batch, not the server
            log.exception("teacher forward failed for a batch of %d requests", len(live))
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        if self.metrics:
            self.metrics.compute_seconds.observe(time.monotonic() - started)
            self.metrics.batch_size.observe(int(features.shape[0]))
        offset = 0
        for p in live:
            if not p.future.done():
                p.future.set_result((features[offset:offset + p.size], logits[offset:offset + p.size]))
            offset += p.size

    def forward(self, parts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Runs on the worker thread. uint8 parts are normalised with the teacher's own mean/std so
        pixel and float requests can share one forward."""
        spec = self.teacher.input_spec
        x = torch.cat([normalize(p, spec) if p.dtype == torch.uint8 else p.float() for p in parts])
        return self.teacher.targets(x)

    async def stop(self) -> None:
        """Take no new requests, finish every queued one, then release the worker thread."""
        self.stopping = True
        self.wakeup.set()
        if self.task is not None:
            await self.task
        self.executor.shutdown(wait=True)
