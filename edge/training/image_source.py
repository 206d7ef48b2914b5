"""Where training images and teacher targets come from, behind two tiny interfaces.

Images: `ImageSource.batch(indices) -> uint8 (N, C, H, W)` shaped for the student. Labels are not
part of it: a source has no way to return one.
Targets come from an `lnpt.edge.teachers.TargetSource` (a guidance server or a teacher file).
"""
from __future__ import annotations

from pathlib import Path

import torch

from lnpt.shared.data import UnlabeledImageFolder, adapt, load_fashion_mnist
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
