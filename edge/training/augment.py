"""Augmentation on uint8 batches, on the device, before the batch goes to the teacher.

The augmented pixels are what both the student and the teacher see, so the targets always belong
to the exact input the student is trained on. Randomness comes from an explicit generator seeded
per batch, so a resumed run augments every batch exactly as the uninterrupted run would.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, batch index)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + batch)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int | None = None) -> torch.Tensor:
    """Random crop after zero padding (default size // 8 pixels) and random horizontal flip."""
    n, _, height, width = images.shape
    pad = max(1, height // 8) if padding is None else padding
    padded = F.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(images)
    for i in range(n):  # 64 slices cost well under a millisecond
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, top:top + height, left:left + width]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out
