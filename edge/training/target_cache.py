"""Teacher targets for un-augmented samples, on disk, keyed by sample content and teacher version.

With a cache, later epochs (and later runs) train without the network: one SQLite file per teacher
version (`<folder>/<teacher_version>.sqlite`) maps a 16-byte BLAKE2 digest of each sample's pixels
to its float16 features and logits. The targets stay on disk (SQLite's page cache is a few MiB), so
a data set larger than RAM can be cached; a batch is one indexed query. Rows are committed by
`save()` (each epoch and at the end), so a killed run keeps what it had committed.
The trade-off: a target only exists for the exact pixels the teacher saw, so random augmentation
cannot be used with the cache — with the cache on, training sees every sample un-augmented in every
epoch (less regularisation, no network after epoch one).
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lnpt.shared.model_file import ModelFileError

FORMAT = "lnpt-target-cache-sqlite"
QUERY_CHUNK = 500  # keys per SELECT ... IN (...), below SQLite's parameter limit


def digest(image: torch.Tensor) -> bytes:
    """Content hash of one uint8 image (shape included, so a 28x28 and a 784x1 never collide)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(str(tuple(image.shape)).encode())
    h.update(image.contiguous().numpy().tobytes())
    return h.digest()


class CachedKeys:
    """Set-like, read-only view of the keys in a cache (`key in cache.rows`, `len(cache.rows)`)."""

    def __init__(self, cache: "TargetCache"):
        self.cache = cache

    def __contains__(self, key: bytes | None) -> bool:
        return key is not None and self.cache.db.execute(
            "SELECT 1 FROM targets WHERE key = ?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return len(self.cache)


class TargetCache:
    """Targets of one teacher version in `<folder>/<teacher_version>.sqlite`."""

    def __init__(self, folder: str | os.PathLike, teacher_version: str):
        if not teacher_version:
            raise ModelFileError("a target cache needs the teacher version it belongs to")
        self.path = Path(folder) / f"{teacher_version}.sqlite"
        self.teacher_version = teacher_version
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path)
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.db.execute("CREATE TABLE IF NOT EXISTS targets (key BLOB PRIMARY KEY, features BLOB NOT NULL, "
                            "logits BLOB NOT NULL) WITHOUT ROWID")
            self.meta = dict(self.db.execute("SELECT name, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:  # unreadable: say so rather than silently refetching everything
            raise ModelFileError(f"target cache {self.path} is unreadable ({exc}); delete it to rebuild") from exc
        if self.meta and (self.meta.get("format") != FORMAT or self.meta.get("teacher_version") != teacher_version):
            raise ModelFileError(f"target cache {self.path} belongs to {self.meta.get('format')} / teacher "
                                 f"{self.meta.get('teacher_version')}; delete it to rebuild")
        self.rows = CachedKeys(self)

    def __len__(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM targets").fetchone()[0])

    def __contains__(self, key: bytes | None) -> bool:
        return key in self.rows

    @property
    def feature_dim(self) -> int | None:
        return int(self.meta["feature_dim"]) if "feature_dim" in self.meta else None

    def missing(self, keys: Sequence[bytes | None]) -> list[int]:
        """Positions of the keys without a target (None keys, i.e. bad files, are never missing)."""
        present = self._fetch([k for k in keys if k is not None], columns="key")
        return [i for i, k in enumerate(keys) if k is not None and k not in present]

    def lookup(self, keys: list[bytes]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """float32 (features, logits) for every key, or None if any is missing."""
        found = self._fetch(keys, columns="key, features, logits")
        if not all(k in found for k in keys):
            return None
        dims = int(self.meta["feature_dim"]), int(self.meta["num_classes"])
        features = np.stack([np.frombuffer(found[k][0], dtype=np.float16, count=dims[0]) for k in keys])
        logits = np.stack([np.frombuffer(found[k][1], dtype=np.float16, count=dims[1]) for k in keys])
        return torch.from_numpy(features.astype(np.float32)), torch.from_numpy(logits.astype(np.float32))

    def add(self, keys: list[bytes], features: torch.Tensor, logits: torch.Tensor) -> None:
        """Store targets (float16) for `keys`; kept on disk once `save()` commits."""
        if not self.meta:
            self.meta = {"format": FORMAT, "teacher_version": self.teacher_version,
                         "feature_dim": str(features.shape[1]), "num_classes": str(logits.shape[1])}
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", self.meta.items())
        f16 = features.detach().to("cpu", torch.float16).numpy()
        z16 = logits.detach().to("cpu", torch.float16).numpy()
        self.db.executemany("INSERT OR IGNORE INTO targets VALUES (?, ?, ?)",
                            ((k, f.tobytes(), z.tobytes()) for k, f, z in zip(keys, f16, z16)))

    def save(self) -> None:
        self.db.commit()

    def close(self) -> None:
        self.db.commit()
        self.db.close()

    def _fetch(self, keys: list[bytes], columns: str) -> dict:
        found: dict = {}
        for start in range(0, len(keys), QUERY_CHUNK):
            chunk = keys[start:start + QUERY_CHUNK]
            rows = self.db.execute(f"SELECT {columns} FROM targets WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            for row in rows:
                found[row[0]] = row[1:]
        return found
