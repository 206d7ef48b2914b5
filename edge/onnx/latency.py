"""Latency of an ONNX model where it will run: ONNX Runtime's CPU provider on this machine.

One figure, measured one way everywhere (budgets, `lnpt bench device`, `lnpt bench export`): the
median wall time of `session.run` on a fixed random input of the given batch size, after warm-up
runs, with the given intra-op threads. The median, because a shared or throttled device adds
outliers that only ever make a run slower. `side_by_side` measures several models in interleaved
rounds, so that load which comes and goes on a shared machine falls on all of them alike: compare
its figures as ratios. On a machine shared with other processes, wall time also counts the slices
the OS gives them, more of them the longer a run takes (measured here at load ~10: a 50 ms run
read 4x its CPU time, a 1 ms run 1x), so ratios between models of very different speed are
skewed; `clock="cpu"` times the calling thread's CPU time instead, which with one intra-op thread
(ONNX Runtime then runs the graph on the calling thread) is the latency an idle device would see.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from lnpt.edge.onnx.onnx_export import INPUT_NAME, ExportError


@dataclass(frozen=True)
class LatencySettings:
    """How one latency figure is measured."""

    threads: int = 1  # ONNX Runtime intra-op threads
    batch: int = 1
    warmup: int = 5  # runs discarded before timing (allocations, caches)
    runs: int = 20  # at least this many timed runs ...
    seconds: float = 0.3  # ... and at least this long (per round, in side_by_side)
    clock: str = "wall"  # "wall" time, or "cpu": the calling thread's CPU time (needs threads == 1)

    def __post_init__(self):
        if self.threads < 1 or self.batch < 1 or self.warmup < 0 or self.runs < 1 or self.seconds < 0:
            raise ExportError(f"latency settings out of range: {self}")
        if self.clock not in ("wall", "cpu") or (self.clock == "cpu" and self.threads != 1):
            raise ExportError(f"latency clock {self.clock!r} with {self.threads} thread(s): use 'wall', or 'cpu' "
                              "with one thread (other threads' CPU time is not the caller's)")


def onnx_latency(model, input_shape: Sequence[int], settings: LatencySettings = LatencySettings()) -> dict:
    """Median milliseconds per `session.run` of `model` (ONNX bytes or a path) on a batch of
    `settings.batch` inputs shaped `input_shape` (C, H, W); returns the figure and how it was taken."""
    return side_by_side({"model": model}, input_shape, settings, rounds=1)["model"]


def side_by_side(models: dict[str, Any], input_shape: Sequence[int], settings: LatencySettings = LatencySettings(),
                 rounds: int = 3) -> dict[str, dict]:
    """`onnx_latency` of each model (name -> ONNX bytes or path), measured in `rounds` interleaved
    rounds (each round warms up and times every model in turn); the median is over all rounds' runs."""
    import numpy as np
    import onnxruntime

    from lnpt.edge.onnx.verify import session

    if rounds < 1:
        raise ExportError(f"latency rounds must be at least 1, got {rounds}")
    sessions = {name: session(model, settings.threads) for name, model in models.items()}
    feed = {INPUT_NAME: np.random.default_rng(0).standard_normal((settings.batch, *input_shape), dtype=np.float32)}
    samples: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, sess in sessions.items():
            samples[name] += timed_runs(sess, feed, settings)
    runtime = f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider"
    return {name: {"median_ms": 1e3 * statistics.median(times), "runs": len(times), "rounds": rounds,
                   "runtime": runtime, **asdict(settings)} for name, times in samples.items()}


def timed_runs(sess, feed: dict, settings: LatencySettings) -> list[float]:
    """Seconds of each timed run (on `settings.clock`), after `settings.warmup` untimed ones."""
    clock = time.thread_time if settings.clock == "cpu" else time.perf_counter
    for _ in range(settings.warmup):
        sess.run(None, feed)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < settings.runs or time.perf_counter() - started < settings.seconds:
        t0 = clock()
        sess.run(None, feed)
        times.append(clock() - t0)
    return times


def model_onnx(model, spec, opset: int = 18) -> bytes:
    """`model` (a student, on any device) as `lnpt export`'s exporter writes it: dense float ONNX bytes."""
    import copy

    import torch

    from lnpt.edge.onnx.onnx_export import serialize, to_onnx

    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()  # ONNX Runtime here runs on the CPU
    with torch.no_grad():
        return serialize(to_onnx(model, spec, opset=opset))


def model_latency(model, spec, settings: LatencySettings = LatencySettings(), opset: int = 18) -> dict:
    """Export `model` with `lnpt export`'s exporter and measure it with `onnx_latency`."""
    return onnx_latency(model_onnx(model, spec, opset), spec.shape, settings)
