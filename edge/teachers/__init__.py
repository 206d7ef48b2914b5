"""Where the edge gets teacher targets: a guidance server, or a teacher file for offline work.

`open_teacher` picks the kind from its argument, so pruning, training and evaluation treat a remote
and a local teacher the same way: both are a `TargetSource`.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from lnpt.edge.teachers.local import LocalTeacher
from lnpt.edge.teachers.source import TargetSource, TeacherMismatch
from lnpt.shared.config import ClientConfig
from lnpt.shared.errors import LnptError

__all__ = ["LocalTeacher", "TargetSource", "TeacherMismatch", "open_teacher", "opened_teacher"]


def open_teacher(teacher: str | os.PathLike | None = None, client_config: ClientConfig | None = None,
                 expected_version: str = "", device: str = "cpu") -> TargetSource:
    """A source of teacher targets: an existing file is a teacher model file (offline); anything else
    is the address of a guidance server (`host:port`, or several comma-separated, balanced round-robin),
    reached with the [client] settings (TLS, token, ...); None means `client.addresses`.

        >>> from lnpt.edge import open_teacher
        >>> with open_teacher("127.0.0.1:50051", ClientConfig(insecure=True)) as teacher:  # doctest: +SKIP
        ...     features, logits = teacher.targets(images)
    """
    client_config = client_config or ClientConfig()
    if teacher and Path(teacher).is_file():
        return LocalTeacher.load(teacher, device)
    teacher = str(teacher) if teacher else None
    if teacher and (":" not in teacher or Path(teacher).suffix in (".pt", ".pth", ".onnx")):
        raise LnptError(f"teacher {teacher!r} is neither an existing teacher file nor a server address "
                        "(host:port); check the path, or train one with `lnpt teacher train`")
    from lnpt.edge.teachers.remote import GuidanceClient

    return GuidanceClient.from_config(client_config, teacher, expected_version=expected_version)


@contextmanager
def opened_teacher(teacher: TargetSource | str | os.PathLike | None | bool, client_config: ClientConfig | None = None,
                   expected_version: str = "") -> Iterator[TargetSource | None]:
    """`teacher` as an open source for a `with` block: a given source is used as is (and left open
    for its owner), a file or address is opened here and closed after; False means no teacher."""
    if teacher is False:
        yield None
    elif isinstance(teacher, TargetSource):
        yield teacher
    else:
        with open_teacher(teacher, client_config, expected_version) as source:
            yield source
