"""Teacher targets for un-augmented samples, on disk, keyed by sample content and teacher version.

With a cache, later epochs (and later runs) train without the network: one file per teacher
version (`<folder>/<teacher_version>.pt`) maps a 16-byte BLAKE2 digest of each sample's pixels to
its float16 features and logits. The trade-off: a target only exists for the exact pixels the
teacher saw, so random augmentation cannot be used with the cache — with the cache on, training
sees every sample un-augmented in every epoch (less regularisation, no network after epoch one).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from lnpt.shared.model_file import ModelFileError, atomic_save

FORMAT = "lnpt-target-cache"


def digest(image: torch.Tensor) -> bytes:
    """Content hash of one uint8 image (shape included, so a 28x28 and a 784x1 never collide)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(image.shape)).encode())
    h.update(image.contiguous().numpy().tobytes())
    return h.digest()


class TargetCache:
    def __init__(self, folder: str | os.PathLike, teacher_version: str):
        if not teacher_version:
            raise ModelFileError("a target cache needs the teacher version it belongs to")
        self.path = Path(folder) / f"{teacher_version}.pt"
        self.teacher_version = teacher_version
        self.rows: dict[bytes, int] = {}
        self.features: list[torch.Tensor] = []
        self.logits: list[torch.Tensor] = []
        self.dirty = False
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        try:
            raw = torch.load(self.path, map_location="cpu", weights_only=True)
            assert raw["format"] == FORMAT and raw["teacher_version"] == self.teacher_version
            keys, features, logits = raw["digests"], raw["features"], raw["logits"]
        except Exception as exc:  # unreadable: say so rather than silently refetching everything
            raise ModelFileError(f"target cache {self.path} is unreadable ({exc}); delete it to rebuild") from exc
        self.rows = {bytes(k.tolist()): i for i, k in enumerate(keys)}
        self.features, self.logits = list(features), list(logits)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def feature_dim(self) -> int | None:
        return int(self.features[0].shape[0]) if self.features else None

    def lookup(self, keys: list[bytes]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """float32 (features, logits) for every key, or None if any is missing."""
        if not all(k in self.rows for k in keys):
            return None
        rows = [self.rows[k] for k in keys]
        return (torch.stack([self.features[r] for r in rows]).float(),
                torch.stack([self.logits[r] for r in rows]).float())

    def add(self, keys: list[bytes], features: torch.Tensor, logits: torch.Tensor) -> None:
        for key, f, z in zip(keys, features.to(torch.float16), logits.to(torch.float16)):
            if key not in self.rows:
                self.rows[key] = len(self.features)
                self.features.append(f.clone())
                self.logits.append(z.clone())
                self.dirty = True

    def save(self) -> None:
        if not self.dirty:
            return
        keys = torch.tensor([list(k) for k in self.rows], dtype=torch.uint8)
        atomic_save({"format": FORMAT, "teacher_version": self.teacher_version, "digests": keys,
                     "features": torch.stack(self.features), "logits": torch.stack(self.logits)}, self.path)
        self.dirty = False
