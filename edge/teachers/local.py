"""Targets computed in-process from a teacher model file, for offline pruning, training and tests."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import torch

from lnpt.edge.teachers.source import TargetSource
from lnpt.shared.teacher_model import Teacher


class LocalTeacher(TargetSource):
    """Targets computed in-process from a teacher file: the same forward the server runs."""


    def __init__(self, teacher: Teacher, where: str = "local teacher file"):
        self.teacher = teacher
        self.where = where
        self.info = teacher.info()
        self.stats = {"requests": 0, "responses": 0, "resent": 0, "reconnects": 0, "wait_seconds": 0.0}

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "LocalTeacher":
        return cls(Teacher.load(path, device), str(path))

    def stream(self, batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images in batches:
            self.stats["requests"] += 1
            yield self.teacher.targets(images)
            self.stats["responses"] += 1
