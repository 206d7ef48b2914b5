"""Connection budgets of the guidance server: the open-file limit, and a cap per client address.

gRPC core caps the connections of a port (`grpc.max_allowed_incoming_connections`: beyond it, new
ones are closed at once) and closes connections that never finish their handshake or stay idle,
but it has no cap per client address: one address could take every slot. `ConnectionGuard` reads
the server's accepted sockets from /proc (Linux) a few times a second and shuts down a client's
newest connections beyond its cap. It calls shutdown(2) on a duplicate of gRPC's descriptor: the
TCP connection ends and gRPC closes its own descriptor as for any peer that went away, so no
descriptor is ever closed under gRPC's feet.
"""
from __future__ import annotations

import collections
import logging
import os
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger("lnpt.cloud.connections")

RESERVED_FDS = 256  # descriptors kept for everything but client connections (files, pipes, metrics)
HEALTH_PORT_CONNECTIONS = 64  # the health-only port's own budget
ESTABLISHED = "01"


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


def _address(hex_address: str) -> str:
    """An address from /proc/net/tcp{,6} (hex, host byte order per 32-bit word) as text."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    text = socket.inet_ntop(socket.AF_INET6, words)
    return text[7:] if text.startswith("::ffff:") and "." in text else text  # IPv4 over a dual-stack socket


def accepted_sockets(ports: set[int], tables=("/proc/self/net/tcp", "/proc/self/net/tcp6")) -> dict[str, list[int]]:
    """Established connections to `ports`, as {client address: [socket inode, ...]}."""
    by_client: dict[str, list[int]] = collections.defaultdict(list)
    for table in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], int(parts[9])
            if state != ESTABLISHED or not inode or int(local.rsplit(":", 1)[1], 16) not in ports:
                continue
            by_client[_address(remote.rsplit(":", 1)[0])].append(inode)
    return by_client


def _descriptors_by_inode(wanted: set[int]) -> dict[int, int]:
    found = {}
    for entry in os.scandir("/proc/self/fd"):
        try:
            target = os.readlink(entry.path)
        except OSError:
            continue
        if target.startswith("socket:[") and int(target[8:-1]) in wanted:
            found[int(target[8:-1])] = int(entry.name)
    return found


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
        return Path("/proc/self/net/tcp").exists() and Path("/proc/self/fd").is_dir()

    def start(self) -> "ConnectionGuard":
        self.thread.start()
        return self

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.enforce()
            except Exception:  # never let the guard die silently
                log.exception("connection guard pass failed")

    def enforce(self) -> int:
        """One pass: shut down each client's newest connections beyond its cap; returns how many."""
        excess: dict[int, str] = {}
        for client, inodes in accepted_sockets(self.ports).items():
            if len(inodes) > self.per_client:
                # Socket inodes grow with creation: the highest are the newest connections.
                excess.update((inode, client) for inode in sorted(inodes)[self.per_client:])
        if not excess:
            return 0
        count = 0
        for inode, fd in _descriptors_by_inode(set(excess)).items():
            count += shut_down(fd, inode)
        if count:
            self.held_off += count
            self.unlogged.update(excess.values())
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
