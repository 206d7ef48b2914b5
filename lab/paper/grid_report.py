"""The accuracy grid's reports, from its store (OUT/grid.json): summaries over seeds, the Markdown
tables (grid, guided minus supervised with t-intervals, label-scarce, score ranks, claim 1 across runs,
channel rows with the accuracy cost of speed) and the two plots."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from lnpt.lab.paper.profiles import (CHANNEL_IMPORTANCES, CHANNELS, DENSE, SCORES, TRAININGS, Profile, arm_dict,
                                     describe_settings, run_key)


def stats(values: list[float]) -> dict[str, float]:
    import statistics

    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def summarise(store: dict[str, Any], profile: Profile) -> dict[str, dict[str, Any]]:
    """Accuracy over seeds per (score, training, sparsity or channel ratio):
    {"score|training|level": stats}; structured rows as "channels:IMPORTANCE|training|ratio"."""
    groups: dict[str, list[float]] = {}
    for run in store["runs"].values():
        level = run.get("channel_ratio", run["sparsity"])
        groups.setdefault(f"{run['score']}|{run['training']}|{level:g}", []).append(run["accuracy"])
    return {key: stats(values) for key, values in sorted(groups.items())}


def channel_speed(store: dict[str, Any]) -> dict[float, dict[str, float]]:
    """MACs and ORT latency over dense per channel ratio (the same for every importance and seed)."""
    return {run["channel_ratio"]: {"macs": run["macs_over_dense"], "latency": run["latency_over_dense"]}
            for run in store["runs"].values() if "channel_ratio" in run}


def cell(summary: dict[str, Any], key: str) -> str:
    s = summary.get(key)
    if s is None:
        return "–"
    return f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}" + (f" (n={s['n']})" if s["n"] != 1 else " (n=1)")


def data_name(store: dict[str, Any], profile: Profile) -> str:
    test = store["recipe"].get("test_data", "fashion-mnist")
    if test == "fashion-mnist":
        return f"{profile.test_samples or 10000} Fashion-MNIST test images"
    return f"the held-out images of {test}"


def markdown_report(store: dict[str, Any], profile: Profile) -> str:
    summary = summarise(store, profile)
    seeds = len(profile.seeds)
    lines = [f"### Accuracy grid, profile `{profile.name}`", "",
             f"Test accuracy (%) on {data_name(store, profile)}, mean ± std over "
             f"{seeds} seed(s) (n = runs finished). Student {profile.student}, teacher {profile.teacher} "
             f"({100 * store['teacher']['test_accuracy']:.2f} %), {profile.train_samples or 'all'} training "
             f"images, prune samples {profile.prune_samples}, {profile.optimizer}, cosine schedule; per arm: "
             + "; ".join(f"{t}: {describe_settings(arm_dict(profile, t))}"
                         for t in profile.trainings + profile.scarce_trainings) + ". "
             f"guided = label-free (learning gap + KD on teacher targets); supervised = cross-entropy on labels.",
             "", "| score | training | " + " | ".join(f"{s:.0%}" if s < 0.99 else f"{s:.1%}"
                                                      for s in profile.sparsities) + " |",
             "|---|---|" + "---|" * len(profile.sparsities)]
    for score in profile.scores:
        for training in profile.trainings:
            cells = [cell(summary, f"{score}|{training}|{s:g}") for s in profile.sparsities]
            lines.append(f"| {score} | {training} | " + " | ".join(cells) + " |")
    lines += ["", "| dense reference | accuracy (%) |", "|---|---|",
              f"| teacher ({profile.teacher}) | {100 * store['teacher']['test_accuracy']:.2f} |"]
    for training in profile.trainings:
        lines.append(f"| student ({profile.student}), {training} | {cell(summary, f'{DENSE}|{training}|0')} |")
    if set(TRAININGS) <= set(profile.trainings):
        lines += ["", "Guided minus supervised (percentage points): mean of the per-seed differences (same "
                  "student, masks and data order) and its 95 % t-interval over seeds:", "",
                  "| score | " + " | ".join(f"{s:g}" for s in profile.sparsities) + " |",
                  "|---|" + "---|" * len(profile.sparsities)]
        for score in profile.scores:
            cells = [difference_cell(store, score, "guided", "supervised", s) for s in profile.sparsities]
            lines.append(f"| {score} | " + " | ".join(cells) + " |")
    if profile.label_fractions:
        lines += [""] + scarce_report(store, profile, summary)
    if "guided" in profile.trainings:
        lines += [""] + rank_report(profile, summary)
    lines += [""] + correlation_report(store)
    if profile.channel_ratios:
        lines += [""] + channel_report(store, profile, summary)
    return "\n".join(lines) + "\n"


def paired_differences(store: dict[str, Any], score: str, a: str, b: str, sparsity: float) -> list[float]:
    """Accuracy of arm `a` minus arm `b` per seed where both finished (the same student and masks)."""
    runs = store["runs"]
    seeds = sorted({r["seed"] for r in runs.values()})
    level = 0.0 if score == DENSE else sparsity
    keys = [(run_key(score, a, level, seed), run_key(score, b, level, seed)) for seed in seeds]
    return [runs[x]["accuracy"] - runs[y]["accuracy"] for x, y in keys if x in runs and y in runs]


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean (None with fewer than two values)."""
    import statistics

    from scipy.stats import t

    if len(values) < 2:
        return None
    half = t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    mean = statistics.fmean(values)
    return mean - half, mean + half


def difference_cell(store: dict[str, Any], score: str, a: str, b: str, sparsity: float) -> str:
    diffs = paired_differences(store, score, a, b, sparsity)
    if not diffs:
        return "–"
    interval = t_interval(diffs)
    mean = 100 * sum(diffs) / len(diffs)
    return f"{mean:+.2f}" + (f" [{100 * interval[0]:+.2f}, {100 * interval[1]:+.2f}]" if interval else " (n=1)")


def scarce_report(store: dict[str, Any], profile: Profile, summary: dict[str, Any]) -> list[str]:
    """What an edge user decides: label-free on all images, or supervised on the few they can label."""
    arms = ("guided", *profile.scarce_trainings, "supervised")
    names = {"guided": "label-free, all images", "supervised": "supervised, all images labeled"}
    names.update({t: f"supervised, {float(t.split('@')[1]):.0%} labeled" for t in profile.scarce_trainings})
    lines = ["### Label-scarce comparison", "",
             "Label-free training on all images vs supervised training on only a seeded, class-balanced share "
             "of them with labels (trained as many steps as the arms on all images, each arm with its own "
             "settings). Test accuracy (%), mean ± std over seeds; then label-free minus each scarce arm with "
             "its 95 % t-interval.", "",
             "| student | sparsity | " + " | ".join(names[a] for a in arms) + " | "
             + " | ".join(f"label-free − {float(t.split('@')[1]):.0%} labeled" for t in profile.scarce_trainings)
             + " |", "|---|---|" + "---|" * (len(arms) + len(profile.scarce_trainings))]
    for score in (DENSE, *profile.scarce_scores):
        for sparsity in ((0.0,) if score == DENSE else profile.sparsities):
            cells = [cell(summary, f"{score}|{arm}|{sparsity:g}") for arm in arms]
            cells += [difference_cell(store, score, "guided", t, sparsity) for t in profile.scarce_trainings]
            lines.append(f"| {score} | {sparsity:g} | " + " | ".join(cells) + " |")
    return lines


def rank_report(profile: Profile, summary: dict[str, Any]) -> list[str]:
    """Under guided training: where the LNPT scores rank, and whether they are within one standard
    error (over seeds) of the best score's mean."""
    ours = [s for s in ("lnpt", "lnpt-progressive") if s in profile.scores]
    lines = ["Under guided training, the rank of the LNPT scores among the scores (1 = best mean accuracy) "
             "and whether each is within one standard error of the best:", "",
             "| sparsity | " + " | ".join(ours) + " | best score | best accuracy (%) |",
             "|---|" + "---|" * (len(ours) + 2)]
    for s in profile.sparsities:
        found = {score: summary[f"{score}|guided|{s:g}"] for score in profile.scores
                 if f"{score}|guided|{s:g}" in summary}
        if not found:
            continue
        ranked = sorted(found, key=lambda k: found[k]["mean"], reverse=True)
        best = found[ranked[0]]
        error = best["std"] / math.sqrt(best["n"])
        cells = [("–" if score not in found else f"{ranked.index(score) + 1} of {len(ranked)}"
                  + (" (within 1 SE)" if best["mean"] - found[score]["mean"] <= error else "")) for score in ours]
        lines.append(f"| {s:g} | " + " | ".join(cells) + f" | {ranked[0]} | {100 * best['mean']:.2f} |")
    return lines


PREDICTORS = {"learning_gap_normalized": "final learning gap to the teacher (normalized, fixed projector when "
                                         "widths differ; test images)",
              "learning_gap": "final learning gap to the teacher (mse, equal widths only; test images)",
              "cka_gap": "1 − linear CKA to the teacher (test images)",
              "distance_to_init": "‖θ − θ0‖", "distance_to_teacher": "‖θ − θ_T‖ (same architecture only)"}


def correlation_report(store: dict[str, Any]) -> list[str]:
    """Claim 1 across runs: Spearman's rho of each predictor with test accuracy over all pruned students."""
    from lnpt.lab.paper.correlation import across_runs

    pruned = [r for r in store["runs"].values() if r["score"] not in (DENSE,) and "channel_ratio" not in r
              and not r.get("diverged")]
    found = across_runs(pruned, tuple(PREDICTORS), target="accuracy")
    lines = ["Claim 1 across runs: Spearman's rank correlation with test accuracy over all finished pruned "
             "students (every score, sparsity, arm and seed), with a 95 % bootstrap interval. The claim holds "
             "when the learning gap correlates negatively and more strongly than the weight distances.", "",
             "| predictor | rho | 95 % interval | runs |", "|---|---|---|---|"]
    for name, text in PREDICTORS.items():
        r = found[name]
        if r["rho"] is None:
            lines.append(f"| {text} | – | – | {r['runs']} |")
        else:
            lines.append(f"| {text} | {r['rho']:+.3f} | [{r['interval'][0]:+.3f}, {r['interval'][1]:+.3f}] | "
                         f"{r['runs']} |")
    return lines


def channel_report(store: dict[str, Any], profile: Profile, summary: dict[str, Any]) -> list[str]:
    """The structured rows: accuracy per importance x training x channel ratio, the speed each ratio
    buys, and the accuracy given up for a 2x and a 4x faster student."""
    speed = channel_speed(store)
    ratios = profile.channel_ratios
    lines = ["### Channel pruning (structured rows)", "",
             "Same students, seeds and training as above; channels removed from every prunable layer before "
             "training (Torch-Pruning), by importance: lnpt = group Taylor of the label-free objective "
             "(learning gap + KD on the teacher's targets), magnitude = L1, random. Speed: MACs and ONNX Runtime "
             "latency (batch 1, 1 thread, this machine) over the dense student's.", "",
             "| importance | training | " + " | ".join(f"{r:.0%} channels" for r in ratios) + " |",
             "|---|---|" + "---|" * len(ratios)]
    for importance in profile.channel_importances:
        for training in profile.trainings:
            cells = [cell(summary, f"{CHANNELS}{importance}|{training}|{r:g}") for r in ratios]
            lines.append(f"| {importance} | {training} | " + " | ".join(cells) + " |")
    for label, key in (("MACs / dense", "macs"), ("latency / dense", "latency")):
        lines.append(f"| {label} | | " + " | ".join(f"{speed[r][key]:.2f}" if r in speed else "–" for r in ratios)
                     + " |")
    lines += ["", "Accuracy cost of speed (points below the dense student of the same training, at the least "
              "pruned ratio that reaches the speed-up in measured latency, or in MACs: a small model's latency "
              "is bounded by the runtime's fixed cost per call, its MACs are what a slower device pays for):", "",
              "| importance | training | 2x faster | 4x faster | 2x fewer MACs | 4x fewer MACs |",
              "|---|---|---|---|---|---|"]
    for importance in profile.channel_importances:
        for training in profile.trainings:
            dense = summary.get(f"{DENSE}|{training}|0")
            cells = []
            for key, speedup in (("latency", 2), ("latency", 4), ("macs", 2), ("macs", 4)):
                fast = [r for r in sorted(ratios) if r in speed and speed[r][key] <= 1 / speedup]
                got = summary.get(f"{CHANNELS}{importance}|{training}|{fast[0]:g}") if fast else None
                cells.append("not reached" if not fast else "–" if got is None or dense is None else
                             f"{100 * (got['mean'] - dense['mean']):+.2f} at {fast[0]:.0%}")
            lines.append(f"| {importance} | {training} | " + " | ".join(cells) + " |")
    return lines


def plot(store: dict[str, Any], profile: Profile, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(store, profile)
    colours = dict(zip(SCORES, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(8, 5))
    plotted = []  # (accuracy %, what) of every point, to scale the axis to where the scores differ
    for score in profile.scores:
        for training in profile.trainings:
            points = [(s, summary[f"{score}|{training}|{s:g}"]) for s in profile.sparsities
                      if f"{score}|{training}|{s:g}" in summary]
            if points:
                ax.errorbar([100 * s for s, _ in points], [100 * p["mean"] for _, p in points],
                            yerr=[100 * p["std"] for _, p in points], color=colours[score], capsize=3, marker="o",
                            linestyle="-" if training == "guided" else "--", label=f"{score}, {training}")
                plotted += [(100 * p["mean"], f"{score} {training} {100 * s:g} %") for s, p in points]
    teacher = 100 * store["teacher"]["test_accuracy"]
    ax.axhline(teacher, color="black", linewidth=1, label="dense teacher")
    if plotted:  # a collapsed cell (e.g. random at 98 %, at chance) would squash every other line together
        floor = min(value for value, _ in plotted if value >= teacher / 2) - 2
        ax.set_ylim(floor, teacher + 1)
        off = [f"{what} ({value:.1f} %)" for value, what in plotted if value < floor]
        if off:
            ax.text(0.99, 0.99, "below the axis: " + ", ".join(off), transform=ax.transAxes, ha="right", va="top",
                    fontsize=7)
    for training in profile.trainings:
        dense = summary.get(f"{DENSE}|{training}|0")
        if dense:
            ax.axhline(100 * dense["mean"], color="grey", linewidth=1,
                       linestyle="-" if training == "guided" else "--", label=f"dense student, {training}")
    save_accuracy_plot(fig, ax, path, "sparsity (%)", f"lnpt accuracy grid ({profile.name})", "lower left")


def plot_latency(store: dict[str, Any], profile: Profile, path: Path) -> None:
    """Accuracy against ORT latency over dense for the structured rows (means over seeds), the dense
    students at 1.0, and the Pareto front: the best accuracy reached at or below each latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, speed = summarise(store, profile), channel_speed(store)
    colours = dict(zip(CHANNEL_IMPORTANCES, plt.get_cmap("tab10").colors))
    fig, ax = plt.subplots(figsize=(8, 5))
    points = []
    for importance in profile.channel_importances:
        for training in profile.trainings:
            row = [(speed[r]["latency"], summary[f"{CHANNELS}{importance}|{training}|{r:g}"]) for r in
                   profile.channel_ratios if r in speed and f"{CHANNELS}{importance}|{training}|{r:g}" in summary]
            if row:
                ax.errorbar([x for x, _ in row], [100 * p["mean"] for _, p in row],
                            yerr=[100 * p["std"] for _, p in row], color=colours[importance], capsize=3, marker="o",
                            linestyle="-" if training == "guided" else "--", label=f"{importance}, {training}")
                points += [(x, 100 * p["mean"]) for x, p in row]
    for training in profile.trainings:
        dense = summary.get(f"{DENSE}|{training}|0")
        if dense:
            ax.plot([1.0], [100 * dense["mean"]], marker="s", color="grey", linestyle="none",
                    label=f"dense student, {training}")
            points.append((1.0, 100 * dense["mean"]))
    front, best = [], float("-inf")
    for x, y in sorted(points):
        if y > best:
            front.append((x, y))
            best = y
    if front:
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="black", linewidth=1,
                label="Pareto front")
    save_accuracy_plot(fig, ax, path, "ONNX Runtime latency / dense (batch 1, 1 thread)",
                       f"lnpt channel pruning ({profile.name})", "lower right")


def save_accuracy_plot(fig, ax, path: Path, xlabel: str, title: str, legend_at: str) -> None:
    """Label, legend and write (atomically) a test-accuracy plot of the grid, then close it."""
    import matplotlib.pyplot as plt

    from lnpt.shared.files import atomic_write

    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title}: solid = guided label-free, dashed = supervised")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc=legend_at)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
