"""Fault and hostile-input tools shared by `lnpt bench reliability` and tests/test_reliability*.py.

- `FaultProxy`: a TCP proxy on loopback (asyncio, own thread) between a client and the server that
  can delay traffic, cut every open connection, or black-hole them (keep the sockets open, forward
  nothing: what a dead NAT entry or a pulled cable looks like to both ends).
- `hostile_request(rng)`: one hostile StreamTargets payload (random or truncated bytes, absurd
  shapes, unknown dtypes, wrong byte lengths, NaN/Inf, oversize) as raw bytes for a stream with
  identity serializers, so bytes the .proto would never produce reach the server.
- `expired_certificate` / `wrong_host_certificate`: server certificates signed by a test CA that
  a client must refuse.
- `idle_connections(port, n, source=...)`: a flood of TCP connections that send nothing, optionally
  from another loopback address (127.0.0.2, ...), counting how many the server closes.
- `rss_bytes(pid)` / `peak_rss_bytes(pid)`: resident memory from /proc.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# --- TCP proxy -----------------------------------------------------------------------------------


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `target_port`; `delay`, `cut()` and `blackhole` inject faults.

        with FaultProxy(server_port) as proxy:      # clients connect to proxy.address
            proxy.delay = 0.02                      # every chunk waits 20 ms each way
            proxy.cut()                             # reset every open connection
            proxy.silence()                         # open connections go silent for good; new ones pass
            proxy.blackhole = True                  # every connection, new ones too, goes silent
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.delay = 0.0
        self.blackhole = False
        self.port = 0
        self.connections = 0  # accepted so far
        self.cuts = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fault-proxy", daemon=True)
        self.writers: set[asyncio.StreamWriter] = set()
        self.links: list[dict] = []  # {"dead": bool} per accepted connection
        self.server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        self.thread.start()
        self.server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def _call(self, coroutine, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _accept(self, client_reader, client_writer) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        pair = {client_writer, server_writer}
        link = {"dead": False}
        self.links.append(link)
        self.writers |= pair
        try:
            await asyncio.gather(self._pump(client_reader, server_writer, link),
                                 self._pump(server_reader, client_writer, link))
        except asyncio.CancelledError:
            pass  # closing the proxy; asyncio's stream callback would log a cancelled handler as an error
        finally:
            for writer in pair:
                writer.close()
            self.writers -= pair

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: dict) -> None:
        try:
            while data := await reader.read(65536):
                while (self.blackhole or link["dead"]) and not writer.is_closing():
                    await asyncio.sleep(0.05)  # forward nothing, close nothing: the link is dead
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def silence(self) -> int:
        """Black-hole every open connection for good (new ones still pass): no FIN, no RST, no data."""
        async def mark() -> int:
            live = [link for link in self.links if not link["dead"]]
            for link in live:
                link["dead"] = True
            return len(live)

        return self._call(mark())

    def cut(self) -> int:
        """Reset every open connection (SO_LINGER 0 sends RST, as a crashed middlebox does)."""
        async def reset_all() -> int:
            writers = list(self.writers)
            for writer in writers:
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            return len(writers)

        count = self._call(reset_all())
        self.cuts += 1
        return count

    def close(self) -> None:
        async def shut() -> None:
            self.server.close()
            for writer in list(self.writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:  # silenced links wait forever; end them
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self.server is not None:
            self._call(shut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


# --- hostile requests ------------------------------------------------------------------------------

FAMILIES = ("random bytes", "truncated request", "bad tensor", "non-finite", "bad header", "oversize")
DTYPES = (0, 1, 2, 3, 4, 5, 17, 2**31 - 1, -1)  # unspecified, the four known, unknown values
DIMENSIONS = (0, 1, 2, 3, 28, 64, 257, -1, -2**31, 2**31, 2**40, 2**62, 2**63 - 1, -2**63)


@dataclass(frozen=True)
class Hostile:
    family: str
    payload: bytes  # a serialized TargetsRequest, or bytes that only look like one


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 as protobuf writes it: ten bytes of two's complement
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_delimited(field: int, data: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(data)) + data


def tensor_bytes(shape, dtype: int, data: bytes) -> bytes:
    """A `lnpt.v1.Tensor` written by hand, so shapes and dtypes the generated code rejects still go out."""
    packed = b"".join(varint(d) for d in shape)
    out = _length_delimited(1, packed) if shape else b""
    if dtype:
        out += varint(2 << 3 | 0) + varint(dtype)
    return out + (_length_delimited(3, data) if data else b"")


def request_bytes(request_id: int, tensor: bytes | None, target_dtype: int = 0, version: str = "") -> bytes:
    out = varint(1 << 3 | 0) + varint(request_id)
    if tensor is not None:
        out += _length_delimited(2, tensor)
    if target_dtype:
        out += varint(3 << 3 | 0) + varint(target_dtype)
    if version:
        out += _length_delimited(4, version.encode())
    return out


def good_request_bytes(request_id: int, n: int = 2, shape=(1, 28, 28)) -> bytes:
    count = n * shape[0] * shape[1] * shape[2]
    return request_bytes(request_id, tensor_bytes([n, *shape], 1, bytes(count)))


def hostile_request(rng: random.Random, max_message_bytes: int, shape=(1, 28, 28)) -> Hostile:
    """One hostile payload from a random family; every one must end its stream with a defined code."""
    family = rng.choice(FAMILIES)
    if family == "random bytes":
        return Hostile(family, rng.randbytes(rng.choice((0, 1, 2, 5, 17, 100, 3000))))
    if family == "truncated request":
        whole = good_request_bytes(rng.randrange(1, 2**31), rng.randint(1, 4), shape)
        return Hostile(family, whole[:rng.randrange(1, len(whole))])
    if family == "oversize":
        return Hostile(family, request_bytes(1, tensor_bytes([1, *shape], 1, bytes(max_message_bytes + 1))))
    if family == "bad header":  # a well-formed tensor with a header the server must refuse
        tensor = tensor_bytes([2, *shape], 1, bytes(2 * shape[0] * shape[1] * shape[2]))
        return Hostile(family, request_bytes(rng.randrange(2**63), tensor, rng.choice((3, 1, 5, 2**31 - 1, -7)),
                                             rng.choice(("", "not-the-version", "\u00e9" * 40))))
    if family == "non-finite":
        n = rng.randint(1, 3)
        values = [rng.choice((float("nan"), float("inf"), float("-inf"), 0.5)) for _ in range(n * shape[0] * shape[1] * shape[2])]
        values[rng.randrange(len(values))] = rng.choice((float("nan"), float("inf"), float("-inf")))
        return Hostile(family, request_bytes(1, tensor_bytes([n, *shape], 4, struct.pack(f"<{len(values)}f", *values))))
    # bad tensor: shapes of any rank with absurd dimensions, unknown dtypes, wrong byte lengths
    rank = rng.choice((0, 1, 3, 4, 4, 4, 5, 9))
    dims = [rng.choice(DIMENSIONS) for _ in range(rank)]
    if rank == 4 and rng.random() < 0.5:
        dims[1:] = shape  # only the batch dimension is wrong
    length = rng.choice((0, 1, 783, 784, 785, 1568, 4096))
    return Hostile(family, request_bytes(1, tensor_bytes(dims, rng.choice(DTYPES), rng.randbytes(length))))


# --- certificates a client must refuse ------------------------------------------------------------

def _sign_with_ca(pki_folder: Path, name: str, subject: str, extensions: str, dates: tuple[str, str]) -> tuple[Path, Path]:
    """A key + certificate signed by the test CA in `pki_folder`, with explicit validity dates
    (`openssl ca -startdate/-enddate`: OpenSSL 3.0's `x509 -days` cannot make a past certificate)."""
    from lnpt.cloud.certs import openssl

    work = pki_folder / f"{name}-ca"
    work.mkdir(exist_ok=True)
    (work / "index.txt").write_text("")
    (work / "serial").write_text(f"{random.randrange(1 << 40, 1 << 48):012X}\n")
    (work / "ext.cnf").write_text(f"[ext]\n{extensions}")
    (work / "ca.cnf").write_text(
        "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
        "default_md = sha256\npolicy = anything\nunique_subject = no\ncopy_extensions = none\n"
        "[anything]\ncommonName = supplied\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"../{name}.key", "-out", "req.csr", "-subj", subject, cwd=work)
    openssl("ca", "-batch", "-config", "ca.cnf", "-cert", "../ca.pem", "-keyfile", "../ca.key",
            "-startdate", dates[0], "-enddate", dates[1], "-extfile", "ext.cnf", "-extensions", "ext",
            "-in", "req.csr", "-out", f"../{name}.pem", "-notext", cwd=work)
    return pki_folder / f"{name}.pem", pki_folder / f"{name}.key"


SERVER_EXTENSIONS = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"


def expired_certificate(pki_folder: Path) -> tuple[Path, Path]:
    """A localhost server certificate from the test CA that expired in 2021."""
    return _sign_with_ca(Path(pki_folder), "expired", "/CN=localhost",
                         SERVER_EXTENSIONS + "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
                         ("20200101000000Z", "20210101000000Z"))


def wrong_host_certificate(pki_folder: Path) -> tuple[Path, Path]:
    """A valid server certificate from the test CA for another host (no localhost, no 127.0.0.1)."""
    return _sign_with_ca(Path(pki_folder), "wronghost", "/CN=teacher.example.org",
                         SERVER_EXTENSIONS + "subjectAltName=DNS:teacher.example.org\n",
                         ("20200101000000Z", "20990101000000Z"))


# --- memory ------------------------------------------------------------------------------------------

def send_tcp_garbage(port: int, rng: random.Random, connections: int, timeout: float = 5) -> None:
    """Open `connections` plain TCP connections and send random bytes (not even HTTP/2) on each,
    reading until the server drops the connection."""
    for _ in range(connections):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(rng.randbytes(rng.randint(1, 4096)))
            sock.settimeout(timeout)
            try:
                while sock.recv(4096):
                    pass
            except (ConnectionResetError, socket.timeout):
                pass


class IdleConnections:
    """TCP connections that send nothing; `closed()` counts those the server has closed."""

    def __init__(self, sockets: list[socket.socket], refused: int):
        self.sockets = sockets
        self.refused = refused  # connect() itself failed (the server's backlog was full)
        self.ended: set[int] = set()

    def closed(self) -> int:
        for i, sock in enumerate(self.sockets):
            if i in self.ended:
                continue
            try:
                while True:
                    if sock.recv(65536) == b"":  # EOF: the server closed it
                        self.ended.add(i)
                        break
            except BlockingIOError:
                pass  # open, nothing (more) to read
            except OSError:  # reset
                self.ended.add(i)
        return len(self.ended) + self.refused

    def open_count(self) -> int:
        return len(self.sockets) + self.refused - self.closed()

    def wait_closed(self, at_least: int, timeout: float) -> int:
        """Poll until `at_least` connections are closed or `timeout` passes; returns the count."""
        wait_for(lambda: self.closed() >= at_least, timeout)
        return self.closed()


@contextlib.contextmanager
def idle_connections(port: int, count: int, source: str = "127.0.0.1", host: str = "127.0.0.1"):
    """Open `count` idle TCP connections to host:port from `source` (any 127.x.y.z works on Linux
    loopback, so a flood can come from "another client"); all are closed on exit."""
    sockets, refused = [], 0
    try:
        for _ in range(count):
            sock = socket.socket()
            try:
                sock.bind((source, 0))
                sock.settimeout(5)
                sock.connect((host, port))
                sock.setblocking(False)
                sockets.append(sock)
            except OSError:
                sock.close()
                refused += 1
        yield IdleConnections(sockets, refused)
    finally:
        for sock in sockets:
            sock.close()


def metrics(proc) -> dict[str, float]:
    """The server's Prometheus samples by name (labels included), scraped from its metrics port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=10) as reply:
        lines = reply.read().decode().splitlines()
    return {name: float(value) for name, _, value in (line.rpartition(" ") for line in lines if not line.startswith("#"))}


def wait_for(condition, timeout: float = 30) -> bool:
    """Poll `condition()` until it is true (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def rss_bytes(pid: int | None = None) -> int:
    return _status_kib(pid or os.getpid(), "VmRSS") * 1024


def peak_rss_bytes(pid: int | None = None) -> int:
    return _status_kib(pid or os.getpid(), "VmHWM") * 1024
