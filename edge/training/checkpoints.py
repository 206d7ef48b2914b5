"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the masked model (weight_orig + weight_mask), the objective's own parameters
(a projector), optimizer and scheduler state, the position (epoch, batch within the epoch, global
step), the epoch's sample order, RNG states and the teacher version. Reading and writing (atomic,
so a kill during the write leaves the previous checkpoint intact) is lnpt.shared.checkpoints.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lnpt.shared import checkpoints

FORMAT = "lnpt-train-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    return checkpoints.save_checkpoint(path, state, FORMAT, FORMAT_VERSION)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    return checkpoints.load_checkpoint(path, FORMAT, "lnpt training checkpoint", FORMAT_VERSION)


def restore_rng(state: dict[str, Any]) -> None:
    checkpoints.restore_rng(state["rng"])
