"""Where the edge gets teacher targets: a guidance server, or a teacher file for offline work.

`open_teacher` picks the kind from its argument, so pruning, training and evaluation treat a remote
and a local teacher the same way: both are a `TargetSource`.
"""
from __future__ import annotations

from pathlib import Path

from lnpt.edge.teachers.local import LocalTeacher
from lnpt.edge.teachers.source import TargetSource, TeacherMismatch
from lnpt.shared.errors import LnptError

__all__ = ["LocalTeacher", "TargetSource", "TeacherMismatch", "open_teacher"]


def open_teacher(teacher: str | None, client_config, expected_version: str = "", device: str = "cpu") -> TargetSource:
    """An existing file is a teacher model file (offline); anything else is the address of a guidance
    server (`host:port`, or several comma-separated), reached with the [client] config section;
    None means `client.addresses`."""
    if teacher and Path(teacher).is_file():
        return LocalTeacher.load(teacher, device)
    if teacher and (":" not in teacher or Path(teacher).suffix in (".pt", ".pth")):
        raise LnptError(f"teacher {teacher!r} is neither an existing teacher file nor a server address "
                        "(host:port); check the path, or train one with `lnpt teacher train`")
    from lnpt.edge.teachers.remote import GuidanceClient

    return GuidanceClient.from_config(client_config, teacher, expected_version=expected_version)
