"""Claim 1 across runs: does a predictor (the final learning gap, a weight distance) rank the pruned
students of a grid by their test accuracy? Spearman's rank correlation with a bootstrap interval.

Within one training run every monotone quantity correlates with accuracy; across many students
(different scores, sparsities, seeds) only a real predictor does. `across_runs` takes the grid's run
records and returns, per predictor, rho, its 95 % percentile-bootstrap interval and the run count.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ranked = np.empty(len(values))
    ranked[order] = np.arange(len(values))
    for value in np.unique(values):
        tied = values == value
        if tied.sum() > 1:
            ranked[tied] = ranked[tied].mean()
    return ranked


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (nan when either side is constant)."""
    rx, ry = ranks(np.asarray(x, float)), ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def bootstrap_interval(x: Sequence[float], y: Sequence[float], resamples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of Spearman's rho over runs resampled with replacement."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    rhos = [spearman(x[pick], y[pick]) for pick in (rng.integers(0, len(x), len(x)) for _ in range(resamples))]
    rhos = np.asarray([r for r in rhos if np.isfinite(r)])
    if not len(rhos):  # every resample constant on one side
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    return float(np.percentile(rhos, tail)), float(np.percentile(rhos, 100 - tail))


def across_runs(runs: Iterable[dict], predictors: Sequence[str], target: str = "test_accuracy",
                resamples: int = 2000, seed: int = 0) -> dict[str, dict]:
    """{predictor: {"rho", "interval", "runs"}} over the runs that report both the predictor and `target`
    (a weight distance to the teacher exists only where the architectures match)."""
    runs = list(runs)
    result = {}
    for name in predictors:
        pairs = [(r[name], r[target]) for r in runs if r.get(name) is not None and r.get(target) is not None]
        if len(pairs) < 3:
            result[name] = {"rho": None, "interval": None, "runs": len(pairs)}
            continue
        x, y = zip(*pairs)
        rho = spearman(x, y)
        if not np.isfinite(rho):  # one side constant: no ranking to measure
            result[name] = {"rho": None, "interval": None, "runs": len(pairs)}
            continue
        result[name] = {"rho": rho, "interval": bootstrap_interval(x, y, resamples, seed=seed), "runs": len(pairs)}
    return result
