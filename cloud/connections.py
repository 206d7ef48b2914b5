"""Connection budgets of the guidance server: the open-file limit, and a cap per client address.

gRPC core caps the connections of a port (`grpc.max_allowed_incoming_connections`: beyond it, new
ones are closed at once) and closes connections that never finish their handshake or stay idle,
but it has no cap per client address: one address could take every slot. `ConnectionGuard` lists
the server's accepted sockets a few times a second and shuts down a client's newest connections
beyond its cap. It calls shutdown(2) on a duplicate of gRPC's descriptor: the TCP connection ends
and gRPC closes its own descriptor as for any peer that went away, so no descriptor is ever closed
under gRPC's feet.

The sockets come from the process's own descriptors (/proc/self/fd, then getsockname/getpeername
on a duplicate), not from /proc/net/tcp: reading that table walks the kernel's whole connection
hash, which took 10 ms per pass on a 24 GiB machine with a handful of connections (5 % of the
server's core at five passes a second). The descriptors cost microseconds each, in proportion to
the connections the server actually holds.
"""
from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from pathlib import Path

from lnpt.cloud.metrics import name_native_thread

log = logging.getLogger("lnpt.cloud.connections")

RESERVED_FDS = 256  # descriptors kept for everything but client connections (files, pipes, metrics)
HEALTH_PORT_CONNECTIONS = 64  # the health-only port's own budget
TCP_ESTABLISHED = 1  # tcpi_state, the first byte of TCP_INFO


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit (RLIMIT_NOFILE) to the hard one; returns the soft limit in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # a container may forbid it; keep what we have
            pass
    return soft


def connection_budget(configured: int, open_file_limit: int, health_port: bool) -> int:
    """Connections the gRPC port may hold: `server.max_connections`, or what the fd limit leaves."""
    if configured:
        return configured
    left = open_file_limit - RESERVED_FDS - (HEALTH_PORT_CONNECTIONS if health_port else 0)
    return max(16, left)


def _client_address(host: str) -> str:
    """A peer's host as text; IPv4 clients of a dual-stack socket without their "::ffff:" prefix."""
    return host[7:] if host.startswith("::ffff:") and "." in host else host


def _accepted_peer(fd: int, inode: int, ports: set[int]) -> str | None:
    """The client address of descriptor `fd` when it is still socket `inode`, an established TCP
    connection accepted on one of `ports`; None for anything else (listening, client-side, closed)."""
    try:
        duplicate = os.dup(fd)
    except OSError:
        return None
    try:
        if os.fstat(duplicate).st_ino != inode:  # closed and reused meanwhile
            return None
        with socket.socket(fileno=duplicate) as sock:
            duplicate = -1  # the socket object closes it
            if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                return None
            if sock.getsockname()[1] not in ports:
                return None
            if sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != TCP_ESTABLISHED:
                return None
            return _client_address(sock.getpeername()[0])
    except OSError:  # not a socket of ours any more, or not connected (a listener)
        return None
    finally:
        if duplicate >= 0:
            os.close(duplicate)


def accepted_sockets(ports: set[int]) -> dict[str, list[tuple[int, int]]]:
    """This process's established connections accepted on `ports`, as {client address: [(socket
    inode, descriptor), ...]}."""
    by_client: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for entry in os.scandir("/proc/self/fd"):
        try:
            target = os.readlink(entry.path)
        except OSError:  # closed meanwhile
            continue
        if not target.startswith("socket:["):
            continue
        inode, fd = int(target[8:-1]), int(entry.name)
        client = _accepted_peer(fd, inode, ports)
        if client is not None:
            by_client[client].append((inode, fd))
    return by_client


def shut_down(fd: int, inode: int) -> bool:
    """shutdown(2) the socket behind `fd` if it is still socket `inode`; True when it was."""
    try:
        duplicate = os.dup(fd)
    except OSError:
        return False
    try:
        if os.fstat(duplicate).st_ino != inode:  # the descriptor was closed and reused meanwhile
            return False
        with socket.socket(fileno=duplicate) as sock:
            duplicate = -1  # the socket object closes it
            sock.shutdown(socket.SHUT_RDWR)
        return True
    except OSError:
        return False
    finally:
        if duplicate >= 0:
            os.close(duplicate)


class ConnectionGuard:
    """Holds every client address to `per_client` connections on `ports` (a daemon thread).

    `on_held_off(n)` is called with the number of connections it shut down in one pass.
    """

    def __init__(self, ports: set[int], per_client: int, interval: float = 0.2, on_held_off=None):
        self.ports = ports
        self.per_client = per_client
        self.interval = interval
        self.on_held_off = on_held_off
        self.held_off = 0
        self.unlogged: collections.Counter = collections.Counter()  # held off since the last log line
        self.logged_at = 0.0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="lnpt-connection-guard", daemon=True)

    @staticmethod
    def available() -> bool:
        return Path("/proc/self/fd").is_dir() and hasattr(socket, "TCP_INFO")

    def start(self) -> "ConnectionGuard":
        self.thread.start()
        return self

    def run(self) -> None:
        name_native_thread("lnpt-guard")
        while not self.stopping.wait(self.interval):
            try:
                self.enforce()
            except Exception:  # never let the guard die silently
                log.exception("connection guard pass failed")

    def enforce(self) -> int:
        """One pass: shut down each client's newest connections beyond its cap; returns how many."""
        excess: list[tuple[int, int, str]] = []
        for client, sockets in accepted_sockets(self.ports).items():
            if len(sockets) > self.per_client:
                # Socket inodes grow with creation: the highest are the newest connections.
                excess += [(inode, fd, client) for inode, fd in sorted(sockets)[self.per_client:]]
        if not excess:
            return 0
        count = 0
        for inode, fd, client in excess:
            if shut_down(fd, inode):
                count += 1
                self.unlogged[client] += 1
        if count:
            self.held_off += count
            if self.on_held_off:
                self.on_held_off(count)
        if self.unlogged and time.monotonic() - self.logged_at > 5:  # one line per 5 s under a flood
            self.logged_at = time.monotonic()
            log.warning("closed %d connection(s) beyond server.max_connections_per_client=%d from %s",
                        sum(self.unlogged.values()), self.per_client,
                        ", ".join(f"{c} ({n})" for c, n in self.unlogged.most_common(3)))
            self.unlogged.clear()
        return count

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(5)
