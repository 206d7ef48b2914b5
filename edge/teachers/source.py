"""The interface every source of teacher targets implements: `TargetSource`.

A source has `info` (the TeacherInfo), `version`, `input_spec`, `where`, `check_student(...)`,
`stream(batches)` (targets for each uint8 batch, in order), `targets(batch)`, `stats` and `close()`.
`lnpt.edge.teachers.local` computes targets in-process from a teacher file; `lnpt.edge.teachers.remote`
streams them from a guidance server. Neither imports the other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import torch

from lnpt.shared.errors import LnptError
from lnpt.shared.protocol import guidance_pb2 as pb
from lnpt.shared.teacher_model import Teacher
from lnpt.shared.models import InputSpec


class TeacherMismatch(LnptError, RuntimeError):
    """The teacher does not fit the student (input shape, classes, feature width or version)."""


class TargetSource:
    """Shared behaviour of teacher sources; subclasses provide `info`, `where`, `stream`, `close`."""

    info: pb.TeacherInfo
    where: str
    stats: dict

    def stream(self, batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    @property
    def version(self) -> str:
        return self.info.teacher_version

    @property
    def arch(self) -> str:
        return self.info.teacher_id

    @property
    def feature_dim(self) -> int:
        return int(self.info.feature_dim)

    @property
    def num_classes(self) -> int:
        return int(self.info.num_classes)

    @property
    def input_spec(self) -> InputSpec:
        """The teacher's input shape and normalisation, as the student should use them."""
        info = self.info
        channels, height, width = (int(side) for side in info.input_shape)
        return InputSpec(channels, height if height == width else (height, width), tuple(info.normalization.mean),
                         tuple(info.normalization.std))

    @property
    def class_names(self) -> list[str]:
        return list(self.info.class_names) or [str(i) for i in range(self.info.num_classes)]

    def targets(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, logits) float32 for one uint8 (N, C, H, W) batch; blocking."""
        return next(iter(self.stream([images])))

    def check_student(self, num_classes: int, feature_dim: int,
                      projector: bool = False, lambda_kd: float = 1.0) -> None:
        """Refuse a teacher whose classes (with logit distillation) or, without a projector, feature
        width differ from the student's.

        The input may differ (architecture, resolution, channels): the one rule is that targets are
        the teacher's outputs on its own input, so every source resizes uint8 batches to the
        teacher's input spec on the edge before they reach the teacher (in-process for a teacher
        file, before sending for a server), and each side normalises with its own mean/std.
        """
        info = self.info
        name = f"teacher {info.teacher_id} ({info.teacher_version}) at {self.where}"
        if info.num_classes != num_classes and lambda_kd > 0:
            raise TeacherMismatch(f"{name} has {info.num_classes} classes, the student {num_classes}; "
                                  f"logit distillation needs the same classes (objective.lambda_kd = 0 "
                                  f"learns from the features only)")
        if info.feature_dim != feature_dim and not projector:
            raise TeacherMismatch(f"{name} has {info.feature_dim} penultimate features, the student "
                                  f"{feature_dim}; use a student of the same width or enable a projector")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
