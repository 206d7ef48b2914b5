"""Dynamic batching: requests from every open stream merge into one teacher forward.

Like Triton's dynamic batcher: a bounded queue, a largest batch and a longest queue delay. The
first request of a batch never waits more than `max_queue_delay_ms` for company; a full queue is
refused (`QueueFull`) instead of growing memory. Requests wait in one queue per stream, and a batch
takes them round robin, least recently served stream first: a stream that keeps many large requests
queued delays another stream's request by about one batch, not by its whole backlog.

The event loop only queues a request (a read-only view of its bytes) and, once per batch, hands
the finished answers to the waiting streams. Everything else runs on one worker thread, so no
stream waits behind CPU work on the loop: collecting the batch, the one copy of the pixels into it,
normalisation, the forward pass, the float16 conversion (once per batch) and encoding each
request's answer as a ready `TargetsResponse`. Requests that arrive while a batch computes form
the next one.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lnpt.cloud.metrics import name_native_thread
from lnpt.shared.codec import encode_array
from lnpt.shared.data import normalize
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.teacher_model import Teacher

log = logging.getLogger("lnpt.cloud.batcher")


class QueueFull(Exception):
    """The batcher's queue holds `max_queue_requests` requests already."""


class BatcherStopped(Exception):
    """The batcher is shutting down and takes no new work."""


@dataclass
class Pending:
    request_id: int
    images: np.ndarray  # N x C x H x W: uint8 pixels or float model input (read-only view of the request)
    target_dtype: torch.dtype  # float16 or float32 on the wire
    future: asyncio.Future  # -> Answer
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def size(self) -> int:
        return int(self.images.shape[0])


@dataclass
class Answer:
    """A request's encoded targets and when each step of its batch happened (perf_counter seconds)."""
    response: pb.TargetsResponse
    samples: int
    forward_started: float
    forward_ended: float
    encoded: float
    finite: bool = True  # False when a feature or logit on the wire is NaN or infinite


class DynamicBatcher:
    """`submit_nowait(...)` -> a future of the request's `Answer`, computed in a merged batch."""

    def __init__(self, teacher: Teacher, *, max_batch_size: int, max_queue_delay_ms: float,
                 max_queue_requests: int, metrics=None):
        self.teacher = teacher
        self.max_batch_size = max_batch_size
        self.max_delay = max_queue_delay_ms / 1000.0
        self.max_queue_requests = max_queue_requests
        self.metrics = metrics
        # Waiting requests per stream, least recently served stream first (round robin).
        self.queues: collections.OrderedDict[object, collections.deque[Pending]] = collections.OrderedDict()
        self.waiting = 0  # requests in all queues
        self.arrived = threading.Condition()  # guards the queues and stopping; notified on every request and on stop
        self.stopping = False
        self.loop: asyncio.AbstractEventLoop | None = None
        # One thread: the teacher is one model; a second thread would only contend for the same cores.
        self.worker = threading.Thread(target=self.work, name="lnpt-teacher", daemon=True)

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.worker.start()

    def submit_nowait(self, request_id: int, images: np.ndarray, target_dtype: torch.dtype,
                      stream: object = None) -> asyncio.Future:
        """Queue a request of `stream` (any hashable key; on the event loop); the future resolves to
        its `Answer`. Raises QueueFull."""
        future = self.loop.create_future()
        with self.arrived:
            if self.stopping:
                raise BatcherStopped("the server is shutting down")
            if self.waiting >= self.max_queue_requests:
                raise QueueFull(f"the server's request queue is full ({self.max_queue_requests} requests waiting); "
                                "retry later or send fewer requests at once")
            queue = self.queues.get(stream)
            if queue is None:
                queue = self.queues[stream] = collections.deque()
            queue.append(Pending(request_id, images, target_dtype, future))
            self.waiting += 1
            self.arrived.notify()
        return future

    # --- the worker thread ---------------------------------------------------------------------

    def work(self) -> None:
        name_native_thread("lnpt-teacher")
        while (batch := self.collect()) is not None:
            live = [p for p in batch if not p.future.done()]  # a cancelled stream no longer waits
            if live:
                self.compute(live)

    def collect(self) -> list[Pending] | None:
        """The next batch: wait for a first request, then add more, one per stream in turn, until the
        batch is full or the first one has waited `max_queue_delay_ms`. None once stopped with
        nothing left."""
        with self.arrived:
            while not self.waiting:
                if self.stopping:
                    return None
                self.arrived.wait()
            batch: list[Pending] = []
            samples = 0
            while samples < self.max_batch_size:
                taken = self.take_round(batch, self.max_batch_size - samples)
                samples += sum(p.size for p in taken)
                if taken:
                    continue
                if self.waiting:
                    break  # no waiting request fits: requests are never split, the next batch takes them
                left = batch[0].enqueued + self.max_delay - time.perf_counter()
                if left <= 0 or self.stopping:
                    break
                self.arrived.wait(left)
            return batch

    def take_round(self, batch: list[Pending], room: int) -> list[Pending]:
        """One round: the head request of each stream that fits in `room` samples, least recently
        served stream first (the first request of a batch is taken whatever its size)."""
        taken = []
        for stream in list(self.queues):
            queue = self.queues[stream]
            if queue[0].size > room and (batch or taken):
                continue
            item = queue.popleft()
            taken.append(item)
            room -= item.size
            self.waiting -= 1
            if queue:
                self.queues.move_to_end(stream)  # served: to the back of the round
            else:
                del self.queues[stream]
            if room <= 0:
                break
        batch.extend(taken)
        return taken

    def compute(self, batch: list[Pending]) -> None:
        started = time.perf_counter()
        try:
            features, logits = self.forward([p.images for p in batch])
        except Exception as exc:  # a teacher failure fails this batch, not the server
            log.exception("teacher forward failed for a batch of %d requests", len(batch))
            self.loop.call_soon_threadsafe(fail, batch, exc)
            return
        computed = time.perf_counter()
        answers = self.encode(batch, features, logits, started, computed)
        encoded = time.perf_counter()
        for answer in answers:
            answer.encoded = encoded
        if self.metrics:
            for p in batch:
                self.metrics.queue_seconds.observe(started - p.enqueued)
            self.metrics.compute_seconds.observe(computed - started)
            self.metrics.encode_seconds.observe(encoded - computed)
            self.metrics.batch_size.observe(int(features.shape[0]))
        self.loop.call_soon_threadsafe(deliver, batch, answers)  # one hop back to the loop per batch

    def forward(self, parts: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 parts are joined first and normalised once, with the teacher's own mean/std, so pixel
        and float requests can share one forward."""
        if all(p.dtype == np.uint8 for p in parts):
            return self.teacher.targets(torch.from_numpy(np.concatenate(parts)))
        spec = self.teacher.input_spec
        inputs = [normalize(torch.from_numpy(p.copy()), spec) if p.dtype == np.uint8
                  else torch.from_numpy(p.astype(np.float32)) for p in parts]
        return self.teacher.targets(torch.cat(inputs))

    def encode(self, batch: list[Pending], features: torch.Tensor, logits: torch.Tensor,
               started: float, computed: float) -> list[Answer]:
        """Each request's rows as a TargetsResponse; each wire dtype converted (and checked finite:
        extreme float input can overflow the teacher, or float16's range) once for the batch."""
        converted: dict[torch.dtype, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        teacher_id, version = self.teacher.arch, self.teacher.version
        answers, offset = [], 0
        for p in batch:
            if p.target_dtype not in converted:
                f, z = features.to(p.target_dtype).numpy(), logits.to(p.target_dtype).numpy()
                converted[p.target_dtype] = (f, z, np.isfinite(f).all(axis=1) & np.isfinite(z).all(axis=1))
            f, z, finite_rows = converted[p.target_dtype]
            rows = slice(offset, offset + p.size)
            response = pb.TargetsResponse(request_id=p.request_id, features=encode_array(f[rows]),
                                          logits=encode_array(z[rows]), teacher_id=teacher_id,
                                          teacher_version=version)
            answers.append(Answer(response, p.size, started, computed, 0.0, bool(finite_rows[rows].all())))
            offset += p.size
        return answers

    async def stop(self) -> None:
        """Take no new requests, finish every queued one, then end the worker thread."""
        with self.arrived:
            self.stopping = True
            self.arrived.notify_all()
        if self.worker.is_alive():
            await asyncio.get_running_loop().run_in_executor(None, self.worker.join)


def deliver(batch: list[Pending], answers: list[Answer]) -> None:
    """On the event loop: wake each waiting stream with its answer."""
    for p, answer in zip(batch, answers):
        if not p.future.done():
            p.future.set_result(answer)


def fail(batch: list[Pending], exc: Exception) -> None:
    for p in batch:
        if not p.future.done():
            p.future.set_exception(exc)
