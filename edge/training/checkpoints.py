"""Training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint holds the masked model (weight_orig + weight_mask), the objective's own parameters
(a projector), optimizer and scheduler state, the position (epoch, batch within the epoch, global
step), the epoch's sample order, RNG states and the teacher version. It is written atomically, so
a kill during the write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch

from lnpt.shared.model_file import ModelFileError, atomic_save

FORMAT = "lnpt-train-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state,
             "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}}
    return atomic_save(state, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no checkpoint to resume from (train without --resume to start fresh)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an lnpt training checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: checkpoint format {state.get('format_version')} is not supported")
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate((3, tuple(state["rng"]["python"]), None))
