"""What the edge trainer and the teacher trainer share to stop and continue a run exactly.

- `save_checkpoint` / `load_checkpoint`: one atomic file per run (a kill during the write leaves the
  previous checkpoint intact), tagged with its kind so one trainer never resumes the other's file,
  carrying the RNG states `restore_rng` puts back.
- `refuse_finished_work`: no run silently replaces a trained model or an unfinished run's checkpoint.
- `stop_on_signals`: Ctrl-C / SIGTERM ask the loop to stop after its current step; the trainer then
  writes a checkpoint and raises an `Interrupted` error (exit code 130) saying how to resume.
"""
from __future__ import annotations

import os
import random
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from lnpt.shared.errors import LnptError
from lnpt.shared.files import atomic_save
from lnpt.shared.model_file import ModelFileError


class Interrupted(LnptError):
    """A run stopped on request (Ctrl-C, SIGTERM) after saving a checkpoint at its last step."""

    exit_code = 130  # what a shell reports for an interrupted command

    def __init__(self, message: str, step: int, checkpoint: str | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


def rng_state() -> dict[str, Any]:
    """The global RNG states a run consumes (torch CPU and CUDA, Python, NumPy)."""
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "numpy": numpy_state(),
            # only when this process uses CUDA: capturing would otherwise start a CUDA context
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def numpy_state() -> list:
    """NumPy's global RNG state as plain data (a checkpoint loads with weights_only=True)."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    return [keys.tolist(), int(position), int(has_gauss), float(gauss)]


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Put back what `rng_state` captured (NumPy and CUDA only when the checkpoint has them)."""
    torch.set_rng_state(rng["torch"])
    random.setstate((3, tuple(rng["python"]), None))
    if rng.get("numpy"):
        keys, position, has_gauss, gauss = rng["numpy"]
        np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss))
    if rng.get("cuda") and torch.cuda.is_initialized() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any], kind: str, version: int = 1) -> Path:
    """Write `state` plus the current RNG states atomically as a checkpoint of `kind`."""
    return atomic_save({"format": kind, "format_version": version, **state, "rng": rng_state()}, path)


def load_checkpoint(path: str | os.PathLike, kind: str, what: str, version: int = 1) -> dict[str, Any]:
    """Read a checkpoint of `kind` (tensors and plain data only: weights_only=True); `what` names
    the kind in errors ("lnpt training checkpoint")."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no checkpoint to resume from (start without --resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != kind:
        raise ModelFileError(f"{path}: not an {what}")
    if state.get("format_version") != version:
        raise ModelFileError(f"{path}: checkpoint format {state.get('format_version')} is not supported")
    return state


def refuse_finished_work(outputs: Mapping[Path, str], checkpoint: Path, resume: bool, overwrite: bool,
                         error: type[LnptError] = LnptError) -> None:
    """Raise `error` when a file of `outputs` (path -> what it is) or `checkpoint` exists, unless
    `resume` (which needs the checkpoint) or `overwrite`."""
    if resume:
        if not checkpoint.exists():
            raise error(f"nothing to resume: {checkpoint} does not exist (start without --resume)")
        return
    if overwrite:
        return
    for path, what in (*outputs.items(), (checkpoint, "the checkpoint of an earlier run")):
        if path.exists():
            raise error(f"{path} exists ({what}); continue it with --resume, or pass --overwrite to "
                        f"start over and replace it")


@contextmanager
def stop_on_signals(trainer: Any) -> Iterator[None]:
    """The first SIGINT/SIGTERM sets `trainer.stop_requested` (the loop stops after its step,
    checkpoints and says how to resume); a second one acts at once. Only the main thread can
    install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(signum, frame) -> None:
        trainer.stop_requested = True
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
