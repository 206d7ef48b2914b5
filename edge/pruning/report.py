"""What pruning did: density per layer and overall, as a dict (JSON), a table and a bar chart."""
from __future__ import annotations

import json
import os
from typing import Any

from torch import nn

from lnpt.edge.student import prunable_modules
from lnpt.shared.files import atomic_write


def layer_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(non-zero weights, all weights) per prunable layer; masked or permanently zero alike."""
    return {name: (int((m.weight != 0).sum()), m.weight.numel()) for name, m in prunable_modules(model).items()}


def density_report(model: nn.Module, **details: Any) -> dict[str, Any]:
    """The report: `sparsity` (overall, over prunable weights), `density_per_layer`, counts, plus
    whatever `details` the caller adds (score, target, structured MACs, ...)."""
    counts = layer_counts(model)
    kept = sum(k for k, _ in counts.values())
    total = sum(n for _, n in counts.values())
    return {
        **details,
        "sparsity": 1 - kept / max(total, 1),
        "kept_weights": kept,
        "prunable_weights": total,
        "density_per_layer": {name: k / n for name, (k, n) in counts.items()},
        "weights_per_layer": {name: n for name, (_, n) in counts.items()},
    }


def format_table(report: dict[str, Any]) -> str:
    width = max([len("layer"), *map(len, report["density_per_layer"])])
    lines = [f"{'layer':<{width}}  {'weights':>9}  {'kept':>9}  density"]
    for name, density in report["density_per_layer"].items():
        n = report["weights_per_layer"][name]
        lines.append(f"{name:<{width}}  {n:>9}  {round(density * n):>9}  {density:7.2%}")
    lines.append(f"{'total':<{width}}  {report['prunable_weights']:>9}  {report['kept_weights']:>9}  "
                 f"{1 - report['sparsity']:7.2%}")
    summary = [f"sparsity {report['sparsity']:.4f} over prunable weights"]
    if "target_sparsity" in report:
        summary.append(f"(target {report['target_sparsity']:.4f})")
    if "score" in report:
        summary.append(f"score {report['score']}")
    lines.append(" ".join(summary))
    if report.get("structured"):
        s = report["structured"]
        lines.append(f"channels pruned {s['ratio']:.0%}: MACs {s['macs_before']:,} -> {s['macs_after']:,} "
                     f"({s['macs_after'] / max(s['macs_before'], 1):.1%}), parameters {s['params_before']:,} -> "
                     f"{s['params_after']:,} ({s['params_after'] / max(s['params_before'], 1):.1%})")
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(report, indent=2, default=str).encode()))


def write_chart(report: dict[str, Any], path: str | os.PathLike) -> None:
    """A PNG bar chart of kept fraction per layer (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names = list(report["density_per_layer"])
    values = [report["density_per_layer"][n] for n in names]
    figure = Figure(figsize=(max(6.0, 0.28 * len(names) + 2), 4.0), layout="constrained")
    axes = figure.subplots()
    axes.bar(range(len(names)), values, color="tab:blue")
    axes.axhline(1 - report["sparsity"], color="tab:red", linestyle="--",
                 label=f"overall {1 - report['sparsity']:.2%}")
    axes.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    axes.set_ylabel("kept fraction of weights")
    axes.set_ylim(0, 1.05)
    axes.set_title(f"density per layer ({report.get('score', 'pruned')}, sparsity {report['sparsity']:.2%})")
    axes.legend()
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=110))
