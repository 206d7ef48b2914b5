"""Where training images and teacher targets come from, behind two tiny interfaces.

Images: `ImageSource.batch(indices) -> uint8 (N, C, H, W)` shaped for the student. Labels are not
part of it: a source has no way to return one.
Targets: anything with `version` and `stream(batches) -> iterator of (features, logits)`:
the remote `lnpt.edge.guidance.GuidanceClient` or `LocalTargets` around a teacher file (offline
runs, tests, benchmarks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from lnpt.shared.data import UnlabeledImageFolder, adapt, load_fashion_mnist
from lnpt.shared.teacher import Teacher
from lnpt.shared.zoo import InputSpec


class ImageSource:
    """Unlabeled images for one input spec, from memory or from an image folder."""

    def __init__(self, images: torch.Tensor | UnlabeledImageFolder, spec: InputSpec, name: str):
        self.images = images
        self.spec = spec
        self.name = name

    @classmethod
    def open(cls, data: str | None, spec: InputSpec, data_root: str | None = None) -> "ImageSource":
        """`data` = a folder of images (any depth; sub-folder names are ignored) or None for the
        Fashion-MNIST training images, read without their labels."""
        if data:
            return cls(UnlabeledImageFolder(Path(data), spec), spec, str(data))
        images, _ = load_fashion_mnist(train=True, root=data_root)  # the labels are dropped right here
        return cls(images, spec, "fashion-mnist:train")

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):
            return adapt(self.images[indices], self.spec)
        return torch.stack([self.images[int(i)] for i in indices])


class LocalTargets:
    """Targets computed in-process by a teacher file (same code path the server runs)."""

    def __init__(self, teacher: Teacher):
        self.teacher = teacher
        self.stats = {"requests": 0, "responses": 0, "resent": 0, "reconnects": 0, "wait_seconds": 0.0}

    @property
    def version(self) -> str:
        return self.teacher.version

    def check_student(self, input_shape: Sequence[int], num_classes: int, feature_dim: int,
                      projector: bool = False) -> None:
        from lnpt.edge.guidance import TeacherMismatch

        if tuple(self.teacher.input_spec.shape) != tuple(input_shape) or self.teacher.num_classes != num_classes:
            raise TeacherMismatch(f"teacher {self.teacher.arch} takes {self.teacher.input_spec.shape} images "
                                  f"with {self.teacher.num_classes} classes; the student takes {tuple(input_shape)} "
                                  f"with {num_classes}")
        if self.teacher.feature_dim != feature_dim and not projector:
            raise TeacherMismatch(f"teacher has {self.teacher.feature_dim} features, student {feature_dim}")

    def stream(self, batches: Iterable[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for images in batches:
            self.stats["requests"] += 1
            yield self.teacher.targets(images)
            self.stats["responses"] += 1
