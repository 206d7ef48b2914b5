"""Where teacher targets come from: a running guidance server, or a teacher file for offline work.

Pruning only needs `targets(uint8 images) -> (features, logits)` plus what the teacher expects
(input spec, feature width, classes, version); both sources give exactly that.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from lnpt.shared.errors import LnptError
from lnpt.shared.zoo import InputSpec

TargetsFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
StreamFn = Callable[[Iterable[torch.Tensor]], Iterator[tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class TeacherSource:
    targets: TargetsFn  # one uint8 batch -> (features, logits), float32
    stream: StreamFn  # many batches, in order (a server pipelines them on one stream)
    version: str
    arch: str
    input_spec: InputSpec
    feature_dim: int
    num_classes: int
    class_names: list[str]
    where: str
    close: Callable[[], None] = lambda: None


def open_teacher(teacher: str, client_config=None) -> TeacherSource:
    """An existing file is a local teacher checkpoint; anything else is a server ADDRESS
    (host:port, or several comma-separated), reached with the [client] config section."""
    if Path(teacher).is_file():
        return local_teacher(teacher)
    if ":" not in teacher or Path(teacher).suffix in (".pt", ".pth"):
        raise LnptError(f"teacher {teacher!r} is neither an existing teacher file nor a server address "
                        "(host:port); check the path, or train one with `lnpt teacher train`")
    return remote_teacher(teacher, client_config)


def local_teacher(path: str) -> TeacherSource:
    from lnpt.shared.teacher import Teacher

    loaded = Teacher.load(path)
    return TeacherSource(loaded.targets, lambda batches: map(loaded.targets, batches), loaded.version,
                         loaded.arch, loaded.input_spec, loaded.feature_dim, loaded.num_classes,
                         list(loaded.record.class_names), str(path))


def remote_teacher(address: str, client_config=None) -> TeacherSource:
    from lnpt.edge.guidance import GuidanceClient
    from lnpt.shared.config import ClientConfig

    client = GuidanceClient.from_config(client_config or ClientConfig(), addresses=address)
    try:
        info = client.info
        channels, size = int(info.input_shape[0]), int(info.input_shape[-1])
        spec = InputSpec(channels, size, tuple(info.normalization.mean), tuple(info.normalization.std))
    except BaseException:
        client.close()
        raise
    class_names = list(info.class_names) or [str(i) for i in range(info.num_classes)]
    return TeacherSource(client.targets, client.stream, info.teacher_version, info.teacher_id, spec,
                         int(info.feature_dim), int(info.num_classes), class_names, address, client.close)
