"""The `lnpt.v1.Guidance` service: request validation and the per-stream read/answer loop.

Each StreamTargets call has a reader task (validate, queue into the shared batcher) and the handler
itself, which answers requests strictly in arrival order. The reader awaits gRPC's read directly
(no task or wait set per request); a per-stream watchdog cuts a stream whose client sends nothing
or reads nothing for server.stream_idle_seconds, and draining interrupts readers waiting for a
request. A malformed request ends only its own
stream: the answers for the requests before it are sent first, then the status with a message a
person can act on. While the server drains, streams finish what they accepted and end UNAVAILABLE.
Values a client sent are echoed shortened (`shorten`), so a status never outgrows gRPC's metadata
limit; every request accepted holds its bytes against the server's in-flight budget until answered.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass

import grpc
import numpy as np
import torch
from google.protobuf import unknown_fields

from lnpt.cloud.batcher import BatcherStopped, DynamicBatcher, QueueFull
from lnpt.cloud.security import token_id
from lnpt.shared.codec import CodecError, decode_view, dtype_name
from lnpt.shared.config import Config
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.protocol import guidance_pb2_grpc
from lnpt.shared.teacher_model import INPUT_DTYPES, PROTOCOL_VERSION, TARGET_DTYPES, Teacher

log = logging.getLogger("lnpt.cloud.service")

END = object()  # the client closed its side of the stream
MAX_ECHO_CHARS = 80  # of one value a client sent, quoted in a status or log line
MAX_STATUS_CHARS = 1000  # of a whole status message (gRPC's metadata limit is 8 KiB)


def shorten(value, limit: int = MAX_ECHO_CHARS) -> str:
    """repr(value), cut to `limit` characters with the full length said: safe to echo."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def peer_host(peer: str) -> str:
    """The client's address without its port: "ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7"."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


class RequestError(Exception):
    """Ends one stream with `code` and a message for the person who sent the request."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


@dataclass(eq=False)  # hashed by identity: the servicer keeps a set of them
class StreamWatch:
    """What a stream's watchdog and the drain look at; all on the event loop."""
    reader: asyncio.Task | None = None
    writing_since: float | None = None  # monotonic: when the response now being written was handed to gRPC
    reading_since: float | None = None  # ... when the reader began waiting for the next request
    stop: "RequestError | None" = None  # why the reader was cancelled while waiting (idle, drain)
    cut: bool = False  # the watchdog is ending this stream

    def interrupt_read(self, reason: "RequestError") -> None:
        """Stop the reader if it waits for a request (only then: a request it holds is never dropped)."""
        if self.reading_since is not None and self.stop is None and self.reader is not None:
            self.stop = reason
            self.reader.cancel()


@dataclass
class Accepted:
    request_id: int
    target_dtype: torch.dtype
    future: asyncio.Future  # -> batcher.Answer
    received: float = 0.0  # perf_counter when the request was read (the profile's stages start here)
    decoded: float = 0.0  # ... and when it was validated and queued
    reserved: int = 0  # bytes held against the in-flight budget until answered


class InflightBudget:
    """Bytes of accepted, unanswered requests across all streams, at most `limit`
    (server.max_inflight_bytes): admission control that keeps memory bounded under any mix of
    legal requests. Beyond it a request is refused RESOURCE_EXHAUSTED, which clients retry."""

    def __init__(self, limit: int, gauge=None):
        self.limit = limit
        self.used = 0
        self.gauge = gauge

    def reserve(self, amount: int) -> bool:
        if self.used + amount > self.limit:
            return False
        self.used += amount
        if self.gauge is not None:
            self.gauge.set(self.used)
        return True

    def release(self, amount: int) -> None:
        self.used -= amount
        if self.gauge is not None:
            self.gauge.set(self.used)


def request_cost(images: np.ndarray, teacher: Teacher) -> int:
    """Memory one accepted request holds: its decoded images, their float32 model input, and the
    answer (float32 targets and their wire copy)."""
    n = int(images.shape[0])
    return images.nbytes + images.size * 4 + n * (teacher.feature_dim + teacher.num_classes) * 8


REQUEST_HEADROOM_BYTES = 16 * 1024


def max_request_bytes(input_spec, max_request_batch: int) -> int:
    """The largest legal TargetsRequest on the wire: a full batch of float32 images (the widest
    accepted dtype) plus room for the header fields (request id, dtypes, shape, a version pin)."""
    c, h, w = input_spec.shape
    return max_request_batch * c * h * w * 4 + REQUEST_HEADROOM_BYTES


def reject_unknown_fields(message, name: str) -> None:
    """A peer built against a newer .proto would be silently misunderstood; say so instead."""
    numbers = sorted({f.field_number for f in unknown_fields.UnknownFieldSet(message)})
    if numbers:
        raise invalid(f"{name} carries unknown field number(s) {numbers}; this server speaks "
                      f"{PROTOCOL_VERSION} — upgrade the server or drop those fields")


def parse_request(request: pb.TargetsRequest, teacher: Teacher, max_request_batch: int) -> tuple[np.ndarray, torch.dtype]:
    """Validate a TargetsRequest; returns (images as a read-only view of its bytes, target dtype)
    or raises RequestError.

    Cheap checks on the header come before decoding, so an oversized batch costs no copy.
    """
    where = f"request {request.request_id}"
    reject_unknown_fields(request, where)
    if request.expected_teacher_version and request.expected_teacher_version != teacher.version:
        raise invalid(f"{where}: expected teacher version {shorten(request.expected_teacher_version)}, but this server "
                      f"runs {teacher.arch} version {teacher.version!r}; drop expected_teacher_version or "
                      "connect to a server with that teacher")
    target = request.target_dtype or pb.DTYPE_FLOAT32
    if target not in TARGET_DTYPES:
        raise invalid(f"{where}: target_dtype {dtype_name(target)} is not offered; "
                      "use DTYPE_FLOAT32 or DTYPE_FLOAT16")
    if not request.HasField("images"):
        raise invalid(f"{where}: no images; send an N x C x H x W tensor in `images`")
    images = request.images
    reject_unknown_fields(images, f"{where}: images")
    if images.dtype not in INPUT_DTYPES:
        raise invalid(f"{where}: images dtype {dtype_name(images.dtype)} is not accepted; send "
                      "DTYPE_UINT8 pixels (0..255) or DTYPE_FLOAT32/DTYPE_FLOAT16 normalised input")
    shape, expected = list(images.shape), list(teacher.input_spec.shape)
    if len(shape) != 4 or shape[1:] != expected:
        raise invalid(f"{where}: images have shape {shorten(shape)}, but teacher {teacher.arch} takes N x "
                      f"{' x '.join(map(str, expected))} (N images of C x H x W); resize or convert them first")
    if shape[0] > max_request_batch:
        raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"{where}: batch of {shape[0]} images, but this server takes at most "
                           f"{max_request_batch} per request (see GetTeacherInfo.max_batch_size); split it")
    try:
        pixels = decode_view(images, require_finite=True, name=f"{where}: images")  # no copy
    except CodecError as exc:
        raise invalid(str(exc)) from None
    return pixels, TARGET_DTYPES[target]


class GuidanceServicer(guidance_pb2_grpc.GuidanceServicer):
    def __init__(self, config: Config, metrics):
        self.config = config
        self.metrics = metrics
        self.teacher: Teacher | None = None  # set once loaded; until then calls get UNAVAILABLE
        self.batcher: DynamicBatcher | None = None
        self.open_streams = 0
        self.client_streams: collections.Counter = collections.Counter()  # open streams per client address
        self.token_streams: collections.Counter = collections.Counter()  # open streams per bearer token
        self.tokens: list[bytes] = []  # the server's bearer tokens (per-token limits); empty = no tokens
        self.max_message_bytes = config.server.max_message_bytes  # the server sets the derived limit
        self.budget = InflightBudget(config.server.max_inflight_bytes, metrics.inflight_bytes)
        self.drained = asyncio.Event()  # set whenever no stream is open
        self.drained.set()
        self.draining = False
        self.watches: set[StreamWatch] = set()  # one per open stream

    def ready(self, teacher: Teacher, batcher: DynamicBatcher) -> None:
        """Called on the event loop once the teacher is loaded."""
        self.teacher, self.batcher = teacher, batcher

    def start_draining(self) -> None:
        """Take no new requests: readers waiting for one end their stream UNAVAILABLE now, the others
        after the request they hold (every accepted request is still answered)."""
        self.draining = True
        for watch in self.watches:
            watch.interrupt_read(drain_error())

    @property
    def is_draining(self) -> bool:
        return self.draining

    async def fail(self, context, code: grpc.StatusCode, message: str):
        if len(message) > MAX_STATUS_CHARS:  # a last guard; echoed values are shortened already
            message = message[:MAX_STATUS_CHARS] + "..."
        self.metrics.errors.labels(code=code.name).inc()
        log.info("ending call: %s %s", code.name, message)
        await context.abort(code, message)

    async def refuse_if_unavailable(self, context) -> None:
        if self.is_draining:
            await self.fail(context, grpc.StatusCode.UNAVAILABLE, "server is shutting down; connect to another replica or retry")
        if self.teacher is None:
            await self.fail(context, grpc.StatusCode.UNAVAILABLE, "teacher is still loading; retry shortly")

    async def GetTeacherInfo(self, request: bytes, context):
        """Takes the raw request bytes (see `add_to_server`): bytes that are no GetTeacherInfoRequest
        get INVALID_ARGUMENT instead of gRPC's UNKNOWN naming a Python exception."""
        try:
            parsed = pb.GetTeacherInfoRequest.FromString(request)
        except Exception as exc:  # protobuf's DecodeError
            await self.fail(context, grpc.StatusCode.INVALID_ARGUMENT, f"could not read the request "
                            f"({shorten(str(exc), 200)}); send an empty lnpt.v1.GetTeacherInfoRequest")
        try:
            reject_unknown_fields(parsed, "GetTeacherInfoRequest")
        except RequestError as exc:
            await self.fail(context, exc.code, exc.message)
        await self.refuse_if_unavailable(context)
        info = self.teacher.info(self.config.batcher.max_request_batch, self.max_message_bytes)
        info.preferred_batch_size = self.config.batcher.max_batch_size
        info.max_in_flight = self.config.server.stream_window
        return info

    async def StreamTargets(self, request_iterator, context):
        await self.refuse_if_unavailable(context)
        if self.open_streams >= self.config.server.max_streams:
            await self.fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"server has {self.open_streams} open streams, its limit (server.max_streams); "
                            "retry later or use another replica")
        client = peer_host(context.peer())
        per_client = self.config.server.max_streams_per_client
        if per_client and self.client_streams[client] >= per_client:
            await self.fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"client {client} already has {per_client} open streams, its limit "
                            "(server.max_streams_per_client); close one or retry later")
        token = token_id(context.invocation_metadata(), self.tokens) if self.tokens else None
        per_token = self.config.server.max_streams_per_token
        if token and per_token and self.token_streams[token] >= per_token:
            await self.fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"this token ({token}) already has {per_token} open streams, its limit "
                            "(server.max_streams_per_token); close one or retry later")
        self.client_streams[client] += 1
        if token:
            self.token_streams[token] += 1
        self.open_streams += 1
        self.drained.clear()
        self.metrics.open_streams.inc()
        # Bounded: a client that sends faster than it reads waits (flow control) instead of filling memory.
        outbox: asyncio.Queue = asyncio.Queue(maxsize=self.config.server.stream_window)
        watch = StreamWatch()
        watch.reader = reader = asyncio.create_task(self.read_requests(request_iterator, outbox, watch))
        self.watches.add(watch)
        watchdog = asyncio.create_task(self.watch_stream(watch, asyncio.current_task(), context))
        try:
            while True:
                item = await outbox.get()
                if item is END:
                    return
                if isinstance(item, RequestError):
                    await self.fail(context, item.code, item.message)
                try:
                    answer = await item.future  # encoded on the batcher's thread: nothing left to do here
                except Exception as exc:  # the teacher failed on this batch
                    await self.fail(context, grpc.StatusCode.INTERNAL, f"teacher forward failed: {exc}")
                finally:
                    self.budget.release(item.reserved)  # its answer is computed: what is left is small
                if not answer.finite:  # checked on the batcher's thread, once per batch
                    await self.fail(context, grpc.StatusCode.INVALID_ARGUMENT,
                                    f"request {item.request_id}: the teacher's targets for these images are not finite "
                                    "(float input far outside the teacher's range overflowed); send uint8 pixels, or "
                                    "float input normalised with GetTeacherInfo.normalization")
                self.metrics.samples.inc(answer.samples)
                watch.writing_since = time.monotonic()
                written = time.perf_counter()
                yield answer.response
                self.metrics.stages.add(item.received, item.decoded, answer, written, time.perf_counter())
                watch.writing_since = None
        finally:
            self.watches.discard(watch)
            reader.cancel()
            if not watch.cut:
                watchdog.cancel()
            while not outbox.empty():  # answers nobody will read
                item = outbox.get_nowait()
                if isinstance(item, Accepted):
                    item.future.cancel()
                    self.budget.release(item.reserved)
            self.open_streams -= 1
            self.client_streams[client] -= 1
            if not self.client_streams[client]:
                del self.client_streams[client]
            if token:
                self.token_streams[token] -= 1
                if not self.token_streams[token]:
                    del self.token_streams[token]
            self.metrics.open_streams.dec()
            if self.open_streams == 0:
                self.drained.set()

    async def watch_stream(self, watch: StreamWatch, handler: asyncio.Task, context) -> None:
        """Every stream_idle_seconds / 4 (at most 1 s): end a stream whose client sent no request for
        server.stream_idle_seconds, or stopped reading (flow control holds a response back that long).
        Without this either would hold its slot (server.max_streams) forever."""
        idle = self.config.server.stream_idle_seconds
        if not idle:
            return
        while True:
            await asyncio.sleep(min(idle / 4, 1.0))
            now = time.monotonic()
            if watch.reading_since is not None and now - watch.reading_since > idle:
                watch.interrupt_read(RequestError(grpc.StatusCode.UNAVAILABLE,
                                                  f"stream idle for {idle:g} s (server.stream_idle_seconds); "
                                                  "open a new stream"))
            if watch.writing_since is not None and now - watch.writing_since > idle:
                message = (f"client read no response for {idle:g} s (server.stream_idle_seconds); "
                           "read the answers or close the stream")
                self.metrics.errors.labels(code="UNAVAILABLE").inc()
                log.info("ending call: UNAVAILABLE %s", message)
                # The handler waits inside gRPC's write, and a status would queue behind that write:
                # cancel the handler first (frees the write), then send the status.
                watch.cut = True
                handler.cancel()
                try:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, message)
                except Exception:  # abort always raises once the status is on its way
                    pass
                return

    async def read_requests(self, request_iterator, outbox: asyncio.Queue, watch: StreamWatch) -> None:
        """Validate and queue each request; ends with END or the RequestError that ends the stream."""
        requests = request_iterator.__aiter__()
        try:
            while True:
                if self.is_draining:
                    raise drain_error()
                watch.reading_since = time.monotonic()
                try:
                    request = await requests.__anext__()
                except StopAsyncIteration:
                    await outbox.put(END)
                    return
                except asyncio.CancelledError:
                    if watch.stop is None:  # the stream itself ended
                        raise
                    raise watch.stop from None
                finally:
                    watch.reading_since = None
                received = time.perf_counter()
                self.metrics.requests.inc()
                images, target_dtype = parse_request(request, self.teacher, self.config.batcher.max_request_batch)
                cost = request_cost(images, self.teacher)
                if not self.budget.reserve(cost):
                    raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                       f"request {request.request_id}: the server holds {self.budget.used} bytes of "
                                       f"requests in flight and this one needs {cost} more, beyond its budget "
                                       f"(server.max_inflight_bytes = {self.budget.limit}); retry shortly")
                try:
                    future = self.batcher.submit_nowait(request.request_id, images, target_dtype, stream=watch)
                except (QueueFull, BatcherStopped) as exc:
                    self.budget.release(cost)
                    if isinstance(exc, BatcherStopped):
                        raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry elsewhere") from None
                    raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
                await outbox.put(Accepted(request.request_id, target_dtype, future, received, time.perf_counter(),
                                          reserved=cost))
        except RequestError as exc:
            await outbox.put(exc)
        except Exception as exc:  # e.g. bytes that do not parse as a TargetsRequest
            log.warning("could not read a request: %s: %s", type(exc).__name__, shorten(str(exc), 200))
            await outbox.put(invalid(f"could not read the next request ({type(exc).__name__}: {shorten(str(exc), 200)}); "
                                     "send lnpt.v1.TargetsRequest messages"))


def drain_error() -> RequestError:
    return RequestError(grpc.StatusCode.UNAVAILABLE,
                        "server is shutting down; requests already sent were answered, send the rest to another replica")


def add_to_server(servicer: GuidanceServicer, server) -> None:
    """Register the Guidance service like the generated `add_GuidanceServicer_to_server`, except that
    GetTeacherInfo receives raw bytes and parses them itself (to answer INVALID_ARGUMENT)."""
    handlers = {
        "GetTeacherInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetTeacherInfo, request_deserializer=None,
            response_serializer=pb.TeacherInfo.SerializeToString),
        "StreamTargets": grpc.stream_stream_rpc_method_handler(
            servicer.StreamTargets, request_deserializer=pb.TargetsRequest.FromString,
            response_serializer=pb.TargetsResponse.SerializeToString),
    }
    name = pb.DESCRIPTOR.services_by_name["Guidance"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
