"""The edge's connection to the cloud teacher: `GuidanceClient`.

One `StreamTargets` stream stays open while training; `stream(batches)` keeps batches in flight
ahead of the one being trained, so the network and the teacher work while the student computes:
`prefetch` of them, or (prefetch 0) as many as the measured round trip and time per step call
for, within the server's per-stream limit. A batch too large for one message or request (limits
from GetTeacherInfo) is split into several requests and reassembled in order; with the adaptive
window, small batches are merged into one request of up to the server's preferred batch, so gRPC's
cost per message is paid once for several batches and the server's batch fills at once. Every request
carries an id and every answer must echo the id of the oldest unanswered request, so a target is
never paired with another batch. When the stream drops (UNAVAILABLE, a restart, a full queue) the
client reconnects with exponential backoff and full jitter and re-sends only the requests still
unanswered. TLS and authentication failures are not retried: waiting does
not fix a wrong certificate or token.

Several addresses become one gRPC channel with the round_robin policy, so gRPC itself spreads
streams over replicas and skips ones that are down.
"""
from __future__ import annotations

import ipaddress
import math
import queue
import random
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import grpc
import numpy as np
import torch

from lnpt.shared.errors import LnptError
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.protocol import guidance_pb2_grpc
from lnpt.shared.teacher_model import PROTOCOL_VERSION
from lnpt.edge.teachers.source import TargetSource, TeacherMismatch
from lnpt.shared.codec import CodecError, decode_view, encode
from lnpt.shared.data import adapt

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
             grpc.StatusCode.CANCELLED}
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# "verification check": a certificate for another host ("Hostname Verification Check failed").
TLS_MARKERS = ("ssl", "handshake", "certificate", "tsi_", "x509", "verification check")
INFO_TIMEOUT_SECONDS = 30.0
MESSAGE_HEADROOM_BYTES = 4096  # a request's fields besides the pixels: id, shape, dtypes, version
BUFFERED_READ_SECONDS = 0.001  # a read that took longer waited for the answer to arrive
SLACK_BATCHES = 1  # the adaptive window's margin over one round trip: round trips jitter, merged ones more


class GuidanceError(LnptError, RuntimeError):
    """The teacher could not deliver targets; the message says what failed and what to check."""


class GuidanceAuthError(GuidanceError):
    """The server refused our token or certificate, or the TLS handshake failed (never retried)."""


class GuidanceUnavailable(GuidanceError):
    """The server stayed unreachable for the whole retry budget."""


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts and by total time spent waiting."""

    max_attempts: int = 8
    max_wait_seconds: float = 120.0
    base_seconds: float = 0.2
    max_seconds: float = 10.0


class Backoff:
    """Counts consecutive failures; `failed` sleeps before the next attempt or raises when spent."""

    def __init__(self, policy: RetryPolicy, where: str):
        self.policy = policy
        self.where = where
        self.attempts = 0
        self.waited = 0.0

    def reset(self) -> None:
        """Progress was made: the next failure starts a fresh budget."""
        self.attempts = 0
        self.waited = 0.0

    def failed(self, error: BaseException) -> None:
        self.attempts += 1
        budget_left = self.policy.max_wait_seconds - self.waited
        if self.attempts >= self.policy.max_attempts or budget_left <= 0:
            raise GuidanceUnavailable(
                f"teacher at {self.where} unreachable after {self.attempts} attempts and "
                f"{self.waited:.1f}s of backoff (client.max_attempts={self.policy.max_attempts}, "
                f"client.max_wait_seconds={self.policy.max_wait_seconds:g}); last error: {describe(error)}. "
                f"Check the address and that the server runs; a TLS server reached with --insecure, or a "
                f"mutual-TLS server reached without --client-cert, also just closes the socket"
            ) from error
        ceiling = min(self.policy.max_seconds, self.policy.base_seconds * 2 ** (self.attempts - 1))
        delay = min(random.uniform(0.0, ceiling), budget_left)  # full jitter: spreads reconnecting clients
        time.sleep(delay)
        self.waited += delay


def describe(error: BaseException) -> str:
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def raise_if_fatal(error: grpc.RpcError, where: str) -> None:
    """Turn errors that waiting cannot fix into a clear exception; return for retryable ones."""
    code, details = error.code(), error.details() or ""
    if code in AUTH_CODES:
        raise GuidanceAuthError(f"teacher at {where} refused the client ({code.name}: {details}); "
                                f"check client.token_file / the client certificate") from error
    if code == grpc.StatusCode.UNAVAILABLE and any(m in details.lower() for m in TLS_MARKERS):
        raise GuidanceAuthError(f"TLS handshake with {where} failed ({details}); check client.ca_cert, "
                                f"client.server_name, the client certificate, or use --insecure only "
                                f"if the server runs without TLS") from error
    if code == grpc.StatusCode.FAILED_PRECONDITION or "teacher version" in details:
        raise TeacherMismatch(f"teacher at {where}: {details}") from error
    if code not in RETRYABLE:
        raise GuidanceError(f"teacher at {where} failed the request ({code.name}: {details})") from error


def channel_target(addresses: Sequence[str]) -> str:
    """One address as given; several as one `ipv4:`/`ipv6:` target gRPC balances over itself."""
    if not addresses:
        raise GuidanceError("no teacher address given (use --teacher HOST:PORT or client.addresses)")
    if len(addresses) == 1:
        return addresses[0]
    families = set()
    for address in addresses:
        host = address.rsplit(":", 1)[0].strip("[]")
        try:
            families.add(ipaddress.ip_address(host).version)
        except ValueError:
            raise GuidanceError(
                f"several teacher addresses must be IP:PORT literals (got {address!r}); for host names "
                f"give one DNS name that resolves to all replicas, e.g. dns:///teacher.example:50051"
            ) from None
    if len(families) > 1:
        raise GuidanceError(f"teacher addresses mix IPv4 and IPv6: {', '.join(addresses)}")
    return f"ipv{families.pop()}:{','.join(addresses)}"


def is_loopback(address: str) -> bool:
    """True for addresses that never leave this machine (localhost, 127.0.0.0/8, ::1, unix sockets)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.split("///")[-1].rsplit(":", 1)[0].strip("[]") if ":" in address else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_file(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise GuidanceError(f"cannot read {what} {path}: {exc.strerror}") from exc


class _Call:
    """One open StreamTargets call, fed from a queue by gRPC's request thread."""

    def __init__(self, stub: guidance_pb2_grpc.GuidanceStub, metadata: tuple):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.closed = False
        self.responses = stub.StreamTargets(self._requests(), metadata=metadata)

    def _requests(self) -> Iterator[pb.TargetsRequest]:
        while (request := self._queue.get()) is not None:
            yield request

    def send(self, request: pb.TargetsRequest) -> None:
        self._queue.put(request)

    def close(self) -> None:
        """No more requests (half-close); the server still answers the ones sent."""
        if not self.closed:
            self.closed = True
            self._queue.put(None)

    def cancel(self) -> None:
        self.close()  # also releases gRPC's request thread if it is waiting on the queue
        self.responses.cancel()


class GuidanceClient(TargetSource):
    """Targets from a remote teacher: `info`, `check_student`, `targets(images)`, `stream(batches)`."""


    def __init__(
        self,
        addresses: Sequence[str] | str,
        *,
        insecure: bool = False,
        ca_cert: str = "",
        client_cert: str = "",
        client_key: str = "",
        token: str = "",
        server_name: str = "",
        image_wire: str = "uint8",
        target_wire: str = "float16",
        prefetch: int = 0,
        max_prefetch: int = 16,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = 64 * 1024 * 1024,
        expected_version: str = "",
        keepalive_seconds: float = 20.0,
        allow_insecure_token: bool = False,
    ):
        if isinstance(addresses, str):
            addresses = [a.strip() for a in addresses.split(",") if a.strip()]
        self.addresses = list(addresses)
        self.where = ", ".join(self.addresses)
        if token and insecure and not allow_insecure_token and not all(map(is_loopback, self.addresses)):
            raise GuidanceError(
                f"refusing to send the bearer token in plaintext to {self.where}: anyone on the path could "
                f"read and reuse it. Use TLS (drop --insecure, set client.ca_cert), or set "
                f"client.allow_insecure_token = true if a TLS-terminating proxy on a trusted network is in between")
        self.keepalive_seconds = keepalive_seconds
        self.image_wire = image_wire
        self.target_wire = target_wire
        self.prefetch = max(0, prefetch)
        self.max_prefetch = max(1, max_prefetch)
        self.max_message_bytes = max_message_bytes
        self.retry = retry or RetryPolicy()
        self.expected_version = expected_version
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.stats = {"batches": 0, "requests": 0, "responses": 0, "resent": 0, "reconnects": 0, "wait_seconds": 0.0,
                      "window": 0, "batches_per_request": 0, "max_in_flight": 0}
        self._info: pb.TeacherInfo | None = None
        self._next_id = 1
        self._id_lock = threading.Lock()
        self.channel = self._make_channel(insecure, ca_cert, client_cert, client_key, server_name,
                                          max_message_bytes)
        self.stub = guidance_pb2_grpc.GuidanceStub(self.channel)

    @classmethod
    def from_config(cls, client, addresses: Sequence[str] | str | None = None, expected_version: str = ""):
        """Build from a `[client]` config section; `addresses` overrides client.addresses."""
        token = read_file(client.token_file, "token file").decode().strip() if client.token_file else ""
        retry = RetryPolicy(client.max_attempts, client.max_wait_seconds, client.backoff_base_seconds,
                            client.backoff_max_seconds)
        return cls(addresses or client.addresses, insecure=client.insecure, ca_cert=client.ca_cert,
                   client_cert=client.client_cert, client_key=client.client_key, token=token,
                   server_name=client.server_name, image_wire=client.image_wire, target_wire=client.target_wire,
                   prefetch=client.prefetch, max_prefetch=client.max_prefetch, retry=retry, max_message_bytes=client.max_message_bytes,
                   expected_version=expected_version, keepalive_seconds=client.keepalive_seconds,
                   allow_insecure_token=client.allow_insecure_token)

    def _make_channel(self, insecure, ca_cert, client_cert, client_key, server_name, max_message_bytes):
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.lb_policy_name", "round_robin"),
            # gRPC's own reconnect backoff must not outlast ours after a server restart.
            ("grpc.initial_reconnect_backoff_ms", max(100, int(self.retry.base_seconds * 1000))),
            ("grpc.min_reconnect_backoff_ms", max(100, int(self.retry.base_seconds * 1000))),
            ("grpc.max_reconnect_backoff_ms", max(100, int(self.retry.max_seconds * 1000))),
        ]
        if self.keepalive_seconds:
            # A link that dies silently (no FIN or RST: NAT timeout, pulled cable) would leave the stream
            # waiting forever; an unanswered ping drops the connection and the stream is resumed.
            period = max(1, int(self.keepalive_seconds * 1000))
            options += [("grpc.keepalive_time_ms", period), ("grpc.keepalive_timeout_ms", period),
                        ("grpc.http2.ping_timeout_ms", period),  # gRPC >= 1.5x waits on this one (default 60 s)
                        ("grpc.http2.max_pings_without_data", 0)]  # a client only reading still pings
        target = channel_target(self.addresses)
        if insecure:
            return grpc.insecure_channel(target, options=options)
        if bool(client_cert) != bool(client_key):
            raise GuidanceError("mutual TLS needs both client.client_cert and client.client_key")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read_file(ca_cert, "CA certificate") if ca_cert else None,
            private_key=read_file(client_key, "client key") if client_key else None,
            certificate_chain=read_file(client_cert, "client certificate") if client_cert else None,
        )
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        return grpc.secure_channel(target, credentials, options=options)

    # --- teacher info --------------------------------------------------------------------------

    @property
    def info(self) -> pb.TeacherInfo:
        """The server's TeacherInfo, fetched once (with the same retry policy as the stream)."""
        if self._info is None:
            backoff = Backoff(self.retry, self.where)
            while True:
                try:
                    info = self.stub.GetTeacherInfo(pb.GetTeacherInfoRequest(), metadata=self.metadata,
                                                    timeout=INFO_TIMEOUT_SECONDS)
                    break
                except grpc.RpcError as error:
                    raise_if_fatal(error, self.where)
                    backoff.failed(error)
            if info.protocol_version and info.protocol_version != PROTOCOL_VERSION:
                raise TeacherMismatch(f"teacher at {self.where} speaks {info.protocol_version}, "
                                      f"this client speaks {PROTOCOL_VERSION}")
            if self.expected_version and info.teacher_version != self.expected_version:
                raise TeacherMismatch(
                    f"teacher at {self.where} runs version {info.teacher_version}, but this run needs "
                    f"{self.expected_version} (the version the student/checkpoint was made with)")
            self._info = info
        return self._info

    # --- targets -------------------------------------------------------------------------------

    def stream(self, batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Targets for each batch, in order, with batches requested ahead of the one being trained.

        `batches` is pulled lazily, so the connection opens only when the first batch is there. The
        images asked for travel as a queue of rows cut into requests: a batch larger than one message
        (GetTeacherInfo.max_message_bytes) or than the server's largest request (max_batch_size) is
        split over several, and with the adaptive window (prefetch 0) small batches are merged, up to
        the server's preferred batch, so each request pays gRPC's per-message cost for more images
        and fills the server's batch at once. The answers are cut back into the caller's batches.
        The window of batches in flight is `prefetch`, or, with prefetch 0, sized from the measured
        round trip and the time the caller spends between batches; the requests in flight never
        exceed the server's per-stream limit (max_in_flight).
        """
        info = self.info
        image_dtype = pb.DTYPE_UINT8 if (self.image_wire == "uint8" and pb.DTYPE_UINT8 in info.input_dtypes) \
            else pb.DTYPE_FLOAT32
        target_dtype = pb.DTYPE_FLOAT16 if (self.target_wire == "float16" and pb.DTYPE_FLOAT16 in
                                            info.target_dtypes) else pb.DTYPE_FLOAT32
        request_rows = self.rows_per_request(image_dtype, target_dtype)
        batches = iter(batches)
        window = Window(self.prefetch, self.max_prefetch, int(info.max_in_flight))
        unsent = Rows()  # pixels asked for, not yet in a request
        answered = Rows()  # targets received, not yet handed to the caller
        open_batches: deque[int] = deque()  # rows of each batch asked for, not yet handed out, oldest first
        pending: OrderedDict[int, pb.TargetsRequest] = OrderedDict()  # sent, not yet answered, oldest first
        sent_at: dict[int, float] = {}
        backoff = Backoff(self.retry, self.where)
        call: _Call | None = None
        exhausted = False

        def send(full_only: bool) -> None:
            """Cut the unsent rows into requests and send them; `full_only`: only requests as large as
            allowed (the rest waits for the next batch), so a batch goes out as soon as its request is.
            Until the batches sent cover one round trip, each goes alone: the next steps do not wait
            for a merged request's longer forward (`Window.request_batches`)."""
            nonlocal call
            while unsent.count and window.may_send(len(pending)):
                sent_batches = len(open_batches) - len(unsent.blocks)  # asked for and (partly) in flight
                limit = min(request_rows, window.request_batches(sent_batches, len(pending)) * window.rows)
                if full_only and unsent.count < limit:
                    return
                request = self._request(unsent.take(unsent.leading(limit))[0], image_dtype, target_dtype)
                self.stats["requests"] += 1
                pending[request.request_id] = request
                sent_at[request.request_id] = time.perf_counter()
                if call is None:  # open as soon as there is something to ask (or after a drop)
                    call = self._open(pending)
                else:
                    call.send(request)

        try:
            while True:
                if not exhausted and len(open_batches) <= window.batches - window.merge:
                    while len(open_batches) < window.batches:  # room for a whole merged request: refill
                        images = next(batches, None)
                        if images is None:
                            exhausted = True
                            break
                        if images.dtype == torch.uint8 and tuple(images.shape[1:]) != tuple(info.input_shape):
                            images = adapt(images, self.input_spec)  # one rule: targets of the teacher's input
                        self._check_images(images)
                        if not window.rows:  # the first batch sets the merge limit
                            window.batch_rows(len(images), request_rows, int(info.preferred_batch_size))
                        unsent.put(images)
                        open_batches.append(len(images))
                        send(full_only=True)
                send(full_only=False)
                self.stats["max_in_flight"] = max(self.stats["max_in_flight"], len(pending))
                if open_batches and answered.count >= open_batches[0]:  # one batch at a time: refill between
                    targets = answered.take(open_batches.popleft())
                    self.stats["batches"] += 1
                    self.stats["window"], self.stats["batches_per_request"] = window.batches, window.merge
                    handed = time.perf_counter()
                    yield targets
                    window.step(time.perf_counter() - handed)
                    continue
                if not pending:
                    return
                if call is None:
                    call = self._open(pending)
                if exhausted and not unsent.count:
                    call.close()
                started = time.perf_counter()
                try:
                    response = next(call.responses)
                except (grpc.RpcError, StopIteration) as error:
                    self.stats["wait_seconds"] += time.perf_counter() - started
                    call.cancel()
                    call = None
                    if isinstance(error, grpc.RpcError):
                        raise_if_fatal(error, self.where)
                    else:
                        error = GuidanceError(f"stream closed with {len(pending)} requests unanswered")
                    backoff.failed(error)
                    self.stats["reconnects"] += 1
                    self.stats["resent"] += len(pending)
                    now = time.perf_counter()
                    sent_at = {request_id: now for request_id in pending}  # re-sent on the next stream
                    continue
                answered_at = time.perf_counter()
                self.stats["wait_seconds"] += answered_at - started
                request_id, request = pending.popitem(last=False)
                window.round_trip(answered_at - sent_at.pop(request_id, answered_at),
                                  waited=answered_at - started > BUFFERED_READ_SECONDS, rows=request.images.shape[0])
                answered.put(*self._check_response(response, request_id, request))
                self.stats["responses"] += 1
                backoff.reset()
        finally:
            if call is not None:
                call.cancel()

    def _open(self, pending: OrderedDict) -> _Call:
        """A new stream that first (re-)sends every unanswered request, oldest first."""
        call = _Call(self.stub, self.metadata)
        for request in pending.values():
            call.send(request)
        return call

    def rows_per_request(self, image_dtype: int, target_dtype: int) -> int:
        """The most images one request may carry: the server's largest request, and what fits one
        message (the smaller of the server's and this client's limit) both ways."""
        info = self.info
        c, h, w = (int(d) for d in info.input_shape)
        image_bytes = c * h * w * (1 if image_dtype == pb.DTYPE_UINT8 else 4)
        target_bytes = (int(info.feature_dim) + int(info.num_classes)) * (2 if target_dtype == pb.DTYPE_FLOAT16 else 4)
        limit = min(int(info.max_message_bytes) or self.max_message_bytes, self.max_message_bytes)
        rows = (limit - MESSAGE_HEADROOM_BYTES) // max(image_bytes, target_bytes)
        if rows < 1:
            raise GuidanceError(
                f"one image of {c} x {h} x {w} is {image_bytes} bytes as {pb.DType.Name(image_dtype)}, more than "
                f"one message may carry to the teacher at {self.where}: its limit is {limit} bytes "
                f"(GetTeacherInfo.max_message_bytes {info.max_message_bytes}, client.max_message_bytes "
                f"{self.max_message_bytes}); send smaller images or raise server.max_message_bytes")
        return min(rows, int(info.max_batch_size)) if info.max_batch_size else rows

    @staticmethod
    def _check_images(images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise GuidanceError(f"images must be a uint8 (N, C, H, W) batch, got {images.dtype} "
                                f"{tuple(images.shape)}")

    def _request(self, images: torch.Tensor, image_dtype: int, target_dtype: int) -> pb.TargetsRequest:
        if self.info.max_batch_size and len(images) > self.info.max_batch_size:
            raise GuidanceError(f"batch of {len(images)} images, but the teacher at {self.where} takes at "
                                f"most {self.info.max_batch_size} per request; split it (stream() does)")
        if image_dtype == pb.DTYPE_FLOAT32:  # the server does not take pixels: send its model input
            norm = self.info.normalization
            mean = torch.tensor(list(norm.mean)).view(1, -1, 1, 1)
            std = torch.tensor(list(norm.std)).view(1, -1, 1, 1)
            images = (images.float() / 255.0 - mean) / std
        with self._id_lock:
            request_id = self._next_id
            self._next_id += 1
        return pb.TargetsRequest(request_id=request_id, images=encode(images), target_dtype=target_dtype,
                                 expected_teacher_version=self.info.teacher_version)

    def _check_response(self, response: pb.TargetsResponse, request_id: int,
                        request: pb.TargetsRequest) -> tuple[torch.Tensor, torch.Tensor]:
        if response.request_id != request_id:
            raise GuidanceError(f"teacher at {self.where} answered request {response.request_id} while "
                                f"{request_id} was due; refusing targets that may belong to another batch")
        if response.teacher_version and response.teacher_version != self.info.teacher_version:
            raise TeacherMismatch(f"teacher at {self.where} changed version mid-run "
                                  f"({self.info.teacher_version} -> {response.teacher_version}); "
                                  f"restart training against one teacher version")
        n = request.images.shape[0]
        try:  # a view of the received bytes, converted to float32: the one copy
            features = torch.from_numpy(decode_view(response.features, require_finite=True, name="features")
                                        .astype(np.float32))
            logits = torch.from_numpy(decode_view(response.logits, require_finite=True, name="logits")
                                      .astype(np.float32))
        except CodecError as exc:
            raise GuidanceError(f"teacher at {self.where} sent malformed targets: {exc}") from exc
        if tuple(features.shape) != (n, self.info.feature_dim) or tuple(logits.shape) != (n, self.info.num_classes):
            raise GuidanceError(f"teacher at {self.where} sent targets of shape {tuple(features.shape)} / "
                                f"{tuple(logits.shape)} for a batch of {n}")
        return features, logits

    def close(self) -> None:
        self.channel.close()


class Rows:
    """A queue of row blocks (tuples of tensors sharing their first dimension: a batch's pixels, a
    request's targets), taken out in any number of rows: blocks are split or joined, in order."""

    def __init__(self):
        self.blocks: deque[tuple[torch.Tensor, ...]] = deque()
        self.count = 0

    def put(self, *tensors: torch.Tensor) -> None:
        self.blocks.append(tensors)
        self.count += len(tensors[0])

    def leading(self, limit: int) -> int:
        """Rows of the whole blocks at the front that fit in `limit` together; `limit` when the first
        block alone is larger (it is split)."""
        rows = 0
        for block in self.blocks:
            if rows + len(block[0]) > limit:
                break
            rows += len(block[0])
        return rows or min(limit, self.count)

    def take(self, rows: int) -> tuple[torch.Tensor, ...]:
        """The next `rows` rows (at most `count`), one tensor per field."""
        parts, left = [], rows
        while left > 0:
            block = self.blocks[0]
            if len(block[0]) <= left:
                parts.append(self.blocks.popleft())
                left -= len(block[0])
            else:
                parts.append(tuple(t[:left] for t in block))
                self.blocks[0] = tuple(t[left:] for t in block)
                left = 0
        self.count -= rows
        return parts[0] if len(parts) == 1 else tuple(torch.cat(field) for field in zip(*parts))


class Window:
    """How many batches to keep in flight, and how many of them one request may carry (`merge`).

    Fixed (`prefetch` > 0): that many batches, one per request at most. Adaptive: batches are merged
    into requests of up to the server's preferred batch (at most half of `max_prefetch` batches),
    and the window covers one round trip with the caller's time per batch plus one merged request
    and one batch of slack, ceil(rtt / step) + merge + 1, from smoothed measurements, at most
    `max_prefetch`; merging shrinks first when that cap binds, and grows by doubling (a size is
    used once half of it has been answered). New batches are asked for only when a whole merged request fits.
    Either way the requests in flight stay within the server's per-stream limit (`server_limit`
    requests; 0 = none)."""

    SMOOTHING = 0.2

    def __init__(self, prefetch: int, max_prefetch: int, server_limit: int):
        self.fixed = prefetch
        self.max_batches = max(1, prefetch or max_prefetch)
        self.server_limit = server_limit
        self.batches = prefetch or 2
        self.merge = 1  # batches per request
        self.max_merge = 1  # ... at most: the server's preferred batch in batches (adaptive only)
        self.rows = 0  # rows of a batch, from the first one
        self.covered = 1  # batches trained during one round trip
        self.answered_merge = 0  # the most batches one answered request carried
        self.rtt: float | None = None
        self.step_seconds: float | None = None

    def batch_rows(self, rows: int, request_rows: int, preferred_rows: int) -> None:
        """The caller's batch size, the rows one request may carry and the server's preferred batch."""
        self.rows = max(1, rows)
        if not self.fixed:
            target = min(request_rows, preferred_rows) if preferred_rows else request_rows
            self.max_merge = max(1, min(target // self.rows, self.max_batches // 2))
        self.resize()

    def may_send(self, in_flight: int) -> bool:
        return not self.server_limit or in_flight < self.server_limit

    def request_batches(self, sent_batches: int, in_flight: int) -> int:
        """How many batches the next request may carry, with `sent_batches` batches and `in_flight`
        requests already out. One until the batches sent cover a round trip (the next steps do not wait
        for a merged request's longer forward: at the start, or after the caller caught up), except in
        the last request the server's limit allows: one batch per request would cap the window at that
        limit, below a round trip it could then never cover."""
        last_slot = bool(self.server_limit) and in_flight + 1 >= self.server_limit
        return self.merge if sent_batches >= self.covered or last_slot else 1

    def round_trip(self, seconds: float, waited: bool = True, rows: int = 0) -> None:
        """A request of `rows` images took `seconds` from sent to read. Read without waiting, the
        answer may have arrived any time before (the caller was training on earlier batches): then it
        only bounds the round trip from above, and lowers the estimate but never raises it."""
        if self.rows:
            self.answered_merge = max(self.answered_merge, rows // self.rows)
        if waited or self.rtt is None or seconds < self.rtt:
            self.rtt = smooth(self.rtt, seconds, self.SMOOTHING)
            self.resize()

    def step(self, seconds: float) -> None:
        self.step_seconds = smooth(self.step_seconds, seconds, self.SMOOTHING)
        self.resize()

    def resize(self) -> None:
        if self.fixed or self.rtt is None or self.step_seconds is None:
            return
        self.covered = math.ceil(self.rtt / max(self.step_seconds, 1e-4))
        # Merged requests grow by doubling once each size has been answered: the round trip of a larger
        # one is measured before the window relies on it.
        merge = min(self.max_merge, 2 * max(1, self.answered_merge))
        self.merge = max(1, min(merge, self.max_batches - self.covered - SLACK_BATCHES))
        self.batches = max(1, min(self.max_batches, self.covered + self.merge + SLACK_BATCHES))


def smooth(previous: float | None, value: float, weight: float) -> float:
    return value if previous is None else previous + weight * (value - previous)
