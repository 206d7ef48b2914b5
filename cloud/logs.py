"""Structured logs for the server: readable text or one JSON object per line (server.log_format).

Every record is exactly one line: newlines and other control characters in a message (strings a
client sent, gRPC-core's own messages) are escaped, so no client can forge a log line. gRPC core
writes to file descriptor 2 from C, around Python's logging; `route_native_stderr()` reads that
descriptor through a pipe and logs each of its messages as a record of the `grpc.core` logger.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time

CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
# A gRPC-core (absl) line starts like "E1201 21:45:00.123456   1234 file.cc:12] ..."; any other line
# continues the message before it (a newline the message carried, e.g. in a client's TLS server name).
CORE_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


def escape(text: str) -> str:
    """`text` on one line: control characters as \\n, \\t, \\x1b, ..."""
    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class OneLineText(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))  # the traceback of an exception too


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))  # logger.info(..., extra={"fields": {...}})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)  # escapes every control character: one line


def setup_logging(log_format: str = "text", level: int = logging.INFO, stream=None) -> None:
    """Send the `lnpt` and `grpc.core` loggers to `stream` (stderr) in the chosen format (idempotent)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLines() if log_format == "json" else OneLineText())
    for name in ("lnpt", "grpc.core"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


CORE_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}


def route_native_stderr() -> "object":
    """Replace file descriptor 2 with a pipe whose lines become `grpc.core` log records.

    Call it after setup_logging, before gRPC logs anything. The log handlers and `sys.stderr`
    (Python's own writes) move to a duplicate of the original stderr, which is returned.
    """
    original = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
    for name in ("lnpt", "grpc.core"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(original)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = original
    threading.Thread(target=_log_core_lines, args=(read_end,), name="lnpt-grpc-core-log", daemon=True).start()
    return original


def _log_core_lines(fd: int) -> None:
    """Log what arrives on `fd`: lines read together that do not start like a gRPC-core line
    continue the one before (a message with a newline in it), so each message is one record."""
    core = logging.getLogger("grpc.core")
    partial = b""
    while chunk := os.read(fd, 65536):
        *lines, partial = (partial + chunk).split(b"\n")
        message: list[str] = []
        for line in (raw.decode("utf-8", "backslashreplace") for raw in lines):
            if message and CORE_LINE.match(line):
                _log_core(core, message)
                message = []
            message.append(line)
        if message:
            _log_core(core, message)
    if partial:
        _log_core(core, [partial.decode("utf-8", "backslashreplace")])


def _log_core(core: logging.Logger, lines: list[str]) -> None:
    level = CORE_LEVELS.get(lines[0][:1], logging.WARNING) if CORE_LINE.match(lines[0]) else logging.WARNING
    core.log(level, "%s", "\n".join(lines))  # the formatter escapes the newlines: one line
