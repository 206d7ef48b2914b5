"""Channel pruning to a budget: a latency in ONNX Runtime on this machine, a MAC count or a
parameter count, instead of a fixed ratio.

Progressive and label-free: Torch-Pruning removes `step` of every prunable group's original
channels at a time, the group Taylor importance recomputed before each step from the gradients
of the same objective as a fixed-ratio run (learning gap + KD on the teacher's targets) on the
current, narrower network. After each step the model is measured — MACs and parameters counted
by Torch-Pruning, latency as the median time of the exported ONNX graph in ONNX Runtime with the
given threads and batch (`edge.onnx.latency`), timed side by side with the unpruned graph so that
its ratio to it (`latency_over_dense`, a target too: 0.5 = twice as fast) holds on a machine whose
load drifts during the run — and pruning stops at the first step that meets
every target. When even `max_ratio` does not, `BudgetError` gives the smallest reachable
figures, by how much they miss, and what keeps the model from shrinking further.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from lnpt.edge.onnx.latency import LatencySettings, model_onnx, side_by_side
from lnpt.edge.pruning.masks import PruneError
from lnpt.edge.pruning.scorers import Batches, model_device
from lnpt.edge.pruning.structured import (CHANNEL_IMPORTANCES, channel_pruner, count_macs_and_params,
                                          kept_width_layers, taylor_gradients)
from lnpt.shared.objectives import Objective
from lnpt.shared.models import Classifier, InputSpec

TARGETS = ("latency_ms", "latency_over_dense", "macs", "params")
# How far a latency ratio measured side by side (edge.onnx.latency.side_by_side, 3 rounds) can stray
# by noise alone: a ResNet-20 timed beside itself 12 times on a shared 2-core machine (load ~11) gave
# 0.90-1.10. A re-measured latency ratio is compared with its budget within this. (Single medians
# taken minutes apart varied 1.34x there: compare figures measured side by side.)
LATENCY_TOLERANCE = 0.15


class BudgetError(PruneError):
    """The budget cannot be met; `report` holds every step and the smallest reachable figures."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Budget:
    """What the pruned student must fit; a target of 0 is no target (at least one is needed)."""

    latency_ms: float = 0.0  # median ms per run in ONNX Runtime, measured as `latency` says
    latency_over_dense: float = 0.0  # that latency over the unpruned model's, timed side by side (< 1)
    macs: int = 0  # multiply-accumulates of one image (Torch-Pruning's count)
    params: int = 0  # parameters (Torch-Pruning's count)
    latency: LatencySettings = field(default_factory=LatencySettings)
    step: float = 0.05  # channel ratio removed per step (of the original widths)
    max_ratio: float = 0.9  # never remove more than this ratio of any prunable group's channels

    def __post_init__(self):
        if not self.targets():
            raise PruneError("a budget needs at least one target: latency_ms, latency_over_dense, macs or params")
        if any(value < 0 for value in (self.latency_ms, self.latency_over_dense, self.macs, self.params)):
            raise PruneError(f"budget targets must be positive, got {self.targets()}")
        if self.latency_over_dense >= 1:
            raise PruneError(f"latency_over_dense {self.latency_over_dense}: a budget below 1 (0.5 = twice as fast)")
        if not 0 < self.max_ratio < 1 or not 0 < self.step <= self.max_ratio:
            raise PruneError(f"budget step {self.step} and max ratio {self.max_ratio}: need 0 < step <= max ratio < 1")

    @property
    def timed(self) -> bool:
        """Whether meeting the budget needs latency measurements."""
        return bool(self.latency_ms or self.latency_over_dense)

    def targets(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in TARGETS if getattr(self, name) > 0}

    @classmethod
    def from_config(cls, prune_config) -> "Budget | None":
        """The [prune] section's budget, or None when it sets no target (a fixed-ratio run)."""
        c = prune_config
        if not (c.target_latency_ms or c.target_latency_over_dense or c.target_macs or c.target_params):
            return None
        return cls(latency_ms=c.target_latency_ms, latency_over_dense=c.target_latency_over_dense,
                   macs=c.target_macs, params=c.target_params,
                   latency=LatencySettings(threads=c.latency_threads, batch=c.latency_batch),
                   step=c.budget_step, max_ratio=c.budget_max_ratio)


def measure(model: Classifier, spec: InputSpec, budget: Budget, dense: bytes | None) -> dict[str, Any]:
    """MACs and parameters, and when the budget has a latency target the ONNX Runtime latency of
    `model`'s exported graph, timed side by side with the `dense` (unpruned) graph."""
    example = torch.zeros((1, *spec.shape), device=model_device(model))
    macs, params = count_macs_and_params(model, example)
    figures = {"macs": macs, "params": params, "latency_ms": None, "latency_over_dense": None}
    if dense is not None:
        timed = side_by_side({"dense": dense, "model": model_onnx(model, spec)}, spec.shape, budget.latency)
        figures["latency_ms"] = timed["model"]["median_ms"]
        figures["latency_over_dense"] = timed["model"]["median_ms"] / timed["dense"]["median_ms"]
    return figures


def meets(figures: dict[str, Any], budget: Budget) -> bool:
    """Whether measured `figures` are within every target of `budget`."""
    return all(figures[name] <= target for name, target in budget.targets().items())


def prune_to_budget(model: Classifier, budget: Budget, objective: Objective | None, batches: Batches, spec: InputSpec,
                    *, importance: str = "taylor", seed: int = 0,
                    on_step: Callable[[dict[str, Any]], None] = lambda row: None) -> dict[str, Any]:
    """Prune `model`'s channels in place, step by step, until it meets `budget`; returns the report
    (every step's ratio removed, MACs, params and latency; the figures before and after; measured
    over target per target). `on_step` sees each step's row as it is measured. Raises BudgetError
    (the model left at `budget.max_ratio`) when the budget cannot be met."""
    if importance not in CHANNEL_IMPORTANCES:
        raise PruneError(f"unknown channel importance {importance!r}; choose one of {', '.join(CHANNEL_IMPORTANCES)}")
    if importance == "taylor" and objective is None:
        raise PruneError("taylor channel importance needs an objective (teacher targets or labels)")
    started = time.perf_counter()
    example = torch.zeros((1, *spec.shape), device=model_device(model))
    count = max(1, round(budget.max_ratio / budget.step))
    try:
        pruner = channel_pruner(model, example, budget.max_ratio, importance, steps=count)
    except ValueError as exc:  # a model Torch-Pruning cannot trace, or without a final Linear
        raise PruneError(str(exc)) from exc
    dense = model_onnx(model, spec) if budget.timed else None
    steps = [{"step": 0, "ratio": 0.0, **measure(model, spec, budget, dense)}]
    steps[0]["met"] = meets(steps[0], budget)
    on_step(steps[0])
    while not steps[-1]["met"] and len(steps) <= count:
        if importance == "taylor":
            taylor_gradients(model, objective, batches)
        with torch.random.fork_rng():  # random importance draws from torch's generator
            torch.manual_seed(seed + len(steps))
            pruner.step()
        model.zero_grad(set_to_none=True)
        row = {"step": len(steps), "ratio": round(float(pruner.per_step_pruning_ratio[len(steps)]), 6),
               **measure(model, spec, budget, dense)}
        row["met"] = meets(row, budget)
        steps.append(row)
        on_step(row)
    first, last = steps[0], steps[-1]
    report = {
        "budget": budget.targets(), "importance": importance, "step": budget.max_ratio / count,
        "max_ratio": budget.max_ratio, "latency_settings": asdict(budget.latency) if budget.timed else None,
        "met": last["met"], "ratio": last["ratio"], "steps": steps,
        "macs_before": first["macs"], "macs_after": last["macs"],
        "params_before": first["params"], "params_after": last["params"],
        "latency_ms_before": first["latency_ms"], "latency_ms_after": last["latency_ms"],
        "latency_over_dense": last["latency_over_dense"],
        "over_target": {name: last[name] / target for name, target in budget.targets().items()},
        "seconds": time.perf_counter() - started,
    }
    if not last["met"]:
        report["why"] = what_stays(model, example)
        raise BudgetError(failure_message(report, budget), report)
    return report


def format_step(row: dict[str, Any]) -> str:
    """One line per measured step, as progress output shows it."""
    latency = (f", {row['latency_ms']:.3f} ms ({row['latency_over_dense']:.2f}x dense)"
               if row["latency_ms"] is not None else "")
    return (f"budget step {row['step']}: {row['ratio']:.0%} of channels removed, {row['macs']:,} MACs, "
            f"{row['params']:,} params{latency}{' - met' if row['met'] else ''}")


def what_stays(model: Classifier, example: torch.Tensor, largest: int = 3) -> dict[str, Any]:
    """Where the remaining MACs are: the share in layers whose output width pruning keeps (the
    classifier and the penultimate features the teacher expects), and the largest layers."""
    import torch_pruning as tp

    _, _, layer_macs, _ = tp.utils.count_ops_and_params(model, example, layer_wise=True)
    names = {module: name for name, module in model.named_modules()}
    leaves = {m: int(v) for m, v in layer_macs.items() if v and not list(m.children())}
    total = max(sum(leaves.values()), 1)
    kept = set(kept_width_layers(model, example))
    top = sorted(leaves, key=leaves.get, reverse=True)[:largest]
    return {"fixed_width_macs_share": sum(v for m, v in leaves.items() if m in kept) / total,
            "feature_width": model.feature_dim,
            "largest_layers": [{"layer": names[m], "macs_share": leaves[m] / total, "fixed_width": m in kept}
                               for m in top]}


def failure_message(report: dict[str, Any], budget: Budget) -> str:
    last, why = report["steps"][-1], report["why"]
    units = {"latency_ms": " ms", "latency_over_dense": "x dense latency", "macs": " MACs", "params": " params"}
    missed = [f"{name.replace('_ms', '')} {last[name]:,.4g}{units[name]} > {target:,.4g}{units[name]} "
              f"({last[name] / target:.2f}x the budget, {last[name] - target:,.4g}{units[name]} over)"
              for name, target in budget.targets().items() if last[name] > target]
    where = ""
    if budget.timed:
        s = budget.latency
        where = f" (ONNX Runtime, {s.threads} thread(s), batch {s.batch})"
    layers = ", ".join(f"{row['layer']} {row['macs_share']:.0%}" + (" (width kept)" if row["fixed_width"] else "")
                       for row in why["largest_layers"])
    return (f"cannot meet the budget{where}: the smallest reachable is {'; '.join(missed)}, with "
            f"{last['ratio']:.0%} of every prunable layer's channels removed (prune.budget_max_ratio = "
            f"{budget.max_ratio}). What stays: {why['fixed_width_macs_share']:.0%} of the remaining MACs are in "
            f"layers whose output width is kept (the classifier and the {why['feature_width']} penultimate "
            f"features the teacher expects); largest layers: {layers}"
            + ("; and ONNX Runtime's fixed cost per run does not shrink with channels" if budget.timed else "")
            + ". Relax the budget, raise prune.budget_max_ratio, or choose a smaller architecture.")
