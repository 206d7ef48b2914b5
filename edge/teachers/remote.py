"""The edge's connection to the cloud teacher: `GuidanceClient`.

One `StreamTargets` stream stays open while training; `stream(batches)` keeps `prefetch` batches in
flight ahead of the one being trained, so the network and the teacher work while the student
computes. Every request carries an id and every answer must echo the id of the oldest unanswered
request, so a target is never paired with another batch. When the stream drops (UNAVAILABLE, a
restart, a full queue) the client reconnects with exponential backoff and full jitter and re-sends
only the batches still unanswered. TLS and authentication failures are not retried: waiting does
not fix a wrong certificate or token.

Several addresses become one gRPC channel with the round_robin policy, so gRPC itself spreads
streams over replicas and skips ones that are down.
"""
from __future__ import annotations

import ipaddress
import queue
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import grpc
import torch

from lnpt.shared.errors import LnptError
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.protocol import guidance_pb2_grpc
from lnpt.shared.teacher_model import PROTOCOL_VERSION
from lnpt.edge.teachers.source import TargetSource, TeacherMismatch
from lnpt.shared.codec import CodecError, decode, encode

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
             grpc.StatusCode.CANCELLED}
AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# "verification check": a certificate for another host ("Hostname Verification Check failed").
TLS_MARKERS = ("ssl", "handshake", "certificate", "tsi_", "x509", "verification check")
INFO_TIMEOUT_SECONDS = 30.0


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
        prefetch: int = 4,
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
        self.prefetch = max(1, prefetch)
        self.retry = retry or RetryPolicy()
        self.expected_version = expected_version
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.stats = {"requests": 0, "responses": 0, "resent": 0, "reconnects": 0, "wait_seconds": 0.0}
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
                   prefetch=client.prefetch, retry=retry, max_message_bytes=client.max_message_bytes,
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
        """Targets for each batch, in order, with up to `prefetch` batches requested ahead.

        `batches` is pulled lazily, so the connection opens only when the first batch is there.
        """
        info = self.info
        image_dtype = pb.DTYPE_UINT8 if (self.image_wire == "uint8" and pb.DTYPE_UINT8 in info.input_dtypes) \
            else pb.DTYPE_FLOAT32
        target_dtype = pb.DTYPE_FLOAT16 if (self.target_wire == "float16" and pb.DTYPE_FLOAT16 in
                                            info.target_dtypes) else pb.DTYPE_FLOAT32
        batches = iter(batches)
        pending: OrderedDict[int, pb.TargetsRequest] = OrderedDict()  # sent, not yet answered
        backoff = Backoff(self.retry, self.where)
        call: _Call | None = None
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < self.prefetch:
                    images = next(batches, None)
                    if images is None:
                        exhausted = True
                        break
                    request = self._request(images, image_dtype, target_dtype)
                    pending[request.request_id] = request
                    self.stats["requests"] += 1
                    if call is None:  # open as soon as there is something to ask (or after a drop)
                        call = self._open(pending)
                    else:
                        call.send(request)
                if not pending:
                    return
                if call is None:
                    call = self._open(pending)
                if exhausted:
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
                        error = GuidanceError(f"stream closed with {len(pending)} batches unanswered")
                    backoff.failed(error)
                    self.stats["reconnects"] += 1
                    self.stats["resent"] += len(pending)
                    continue
                self.stats["wait_seconds"] += time.perf_counter() - started
                request_id, request = pending.popitem(last=False)
                features, logits = self._check_response(response, request_id, request)
                self.stats["responses"] += 1
                backoff.reset()
                yield features, logits
        finally:
            if call is not None:
                call.cancel()

    def _open(self, pending: OrderedDict) -> _Call:
        """A new stream that first (re-)sends every unanswered request, oldest first."""
        call = _Call(self.stub, self.metadata)
        for request in pending.values():
            call.send(request)
        return call

    def _request(self, images: torch.Tensor, image_dtype: int, target_dtype: int) -> pb.TargetsRequest:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise GuidanceError(f"images must be a uint8 (N, C, H, W) batch, got {images.dtype} "
                                f"{tuple(images.shape)}")
        if self.info.max_batch_size and len(images) > self.info.max_batch_size:
            raise GuidanceError(f"batch of {len(images)} images, but the teacher at {self.where} takes at "
                                f"most {self.info.max_batch_size} per request; lower train.batch_size")
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
        try:
            features = decode(response.features, require_finite=True, name="features").float()
            logits = decode(response.logits, require_finite=True, name="logits").float()
        except CodecError as exc:
            raise GuidanceError(f"teacher at {self.where} sent malformed targets: {exc}") from exc
        if tuple(features.shape) != (n, self.info.feature_dim) or tuple(logits.shape) != (n, self.info.num_classes):
            raise GuidanceError(f"teacher at {self.where} sent targets of shape {tuple(features.shape)} / "
                                f"{tuple(logits.shape)} for a batch of {n}")
        return features, logits

    def close(self) -> None:
        self.channel.close()
