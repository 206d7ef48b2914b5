"""Seeding of the augmentation on the device (`shared.data.random_crop_flip`), before the batch goes
to the teacher.

The augmented pixels are what both the student and the teacher see, so the targets always belong
to the exact input the student is trained on. Randomness comes from an explicit generator seeded
per batch, so a resumed run augments every batch exactly as the uninterrupted run would.
"""
from __future__ import annotations

import torch


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """A generator that depends only on (seed, epoch, batch index)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + batch)
