"""`lnpt analyze grid`: pruning score x training arm x sparsity, test accuracy over seeds; and channel
pruning: importance x training arm x channel ratio, with the speed it buys.

Experiments 2 and 3 of the method (docs/RESULTS.md):
- every score {lnpt, lnpt-progressive, snip, grasp, synflow, magnitude, random} prunes the same seeded
  student before training (snip and grasp with labels, the LNPT scores with the teacher's targets, the
  rest data-free);
- each pruned student is trained in every arm from the very same weights and masks and data order:
  label-free ("guided": learning gap + KD against a local teacher's targets, no label anywhere),
  supervised (cross-entropy on labels), and label-scarce ("supervised@0.01": labels on a seeded,
  class-balanced share of the images only, for as many steps); each arm with its own settings
  (profile.arms, chosen by `lnpt analyze objective` on a validation split);
- references: the dense teacher, and the dense student trained in every arm;
- structured rows (profile.channel_ratios): the seeded student loses that ratio of every prunable
  layer's channels (Torch-Pruning) by importance {lnpt: group Taylor of the label-free objective on
  the teacher's targets, magnitude: L1, random}, then trains like the rows above; each row also
  records MACs and the ONNX Runtime latency (batch 1, 1 thread) over the dense student's, measured
  side by side, for the latency-vs-accuracy plot OUT/grid-latency.png (its Pareto front).
Teacher targets are computed once per training set (augmentation is off). Every finished run is
appended to OUT/grid.json (atomic writes under a file lock), so an interrupted grid continues where it
stopped and N processes (--shard K/N) share one store; the tables OUT/grid.md and the plots are
rewritten from it at the end (lab/paper/grid_report.py).

Profiles (lab/paper/profiles.py): tiny (a smoke test), quick (about half an hour on two CPU cores:
LeNet-5 student and teacher, a 10k-image subset, 5 epochs, Adam), standard (the kept mature ResNet-20
teacher, LeNet-5 students on all 60k images, 3 seeds, label-scarce arms and channel rows: two
one-thread shards), full (GPU: ResNet-20 students, ResNet-32 teacher, all data, channel ratios).
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator

from lnpt.lab.paper.profiles import (CHANNEL_IMPORTANCES, CHANNELS, DENSE, PROFILES, SCORES, Profile, arm_settings,
                                     kept_file, planned_runs, run_key)
from lnpt.shared.cli import add_format_option, emit


def register(actions: argparse._SubParsersAction, deprecated_alias: bool = False) -> None:
    summary = "accuracy grid: score x guided/supervised training x sparsity"
    parser = actions.add_parser("grid", help="(alias of `lnpt analyze grid`)" if deprecated_alias else summary,
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=tuple(PROFILES), default="quick",
                        help="size of the grid (default quick: ~30 min on 2 CPU cores)")
    parser.add_argument("--out", help="output folder for grid.json/.md/.png and the cached teacher "
                                      "(default results/grid-PROFILE)")
    parser.add_argument("--teacher", help="an existing teacher file (default: OUT/teacher.pt, trained once "
                                          "with the cloud recipe when missing)")
    parser.add_argument("--device", help="cpu or cuda (default: the profile's)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0 = torch's choice)")
    parser.add_argument("--scores", help="comma-separated subset of the scores (default: the profile's)")
    parser.add_argument("--sparsities", help="comma-separated sparsities, e.g. 0.9,0.95 (default: the profile's)")
    parser.add_argument("--channel-ratios", help="comma-separated channel ratios removed for the structured rows, "
                                                 "e.g. 0.3,0.5,0.7; 0 = none (default: the profile's)")
    parser.add_argument("--channel-importances",
                        help=f"comma-separated subset of {','.join(CHANNEL_IMPORTANCES)} (default: all)")
    parser.add_argument("--seeds", type=int, help="number of seeds 0..N-1 (default: the profile's)")
    parser.add_argument("--epochs", type=int, help="student epochs (default: the profile's)")
    parser.add_argument("--train-samples", type=int, help="student training images (default: the profile's)")
    parser.add_argument("--data", help="your labeled training images (class sub-folders or a .csv of path,label) "
                                       "instead of Fashion-MNIST; needs --test-data and --teacher")
    parser.add_argument("--test-data", help="your held-out labeled test images (folder or .csv)")
    parser.add_argument("--shard", default="0/1", help="K/N: train only the K-th of N interleaved parts; run N "
                                                       "processes with the same --out (e.g. 0/2 and 1/2, one "
                                                       "thread each) to use N cores (default 0/1: all)")
    parser.add_argument("--fresh", action="store_true", help="discard OUT/grid.json instead of resuming it")
    parser.add_argument("--report-only", action="store_true",
                        help="train nothing: write grid.md and the plots from the runs finished so far "
                             "(safe while shards are running)")
    add_format_option(parser)
    parser.set_defaults(handler=run)


def profile_from_args(args: argparse.Namespace) -> Profile:
    from lnpt.lab.paper.experiment import ExperimentError

    profile = PROFILES[args.profile]
    changes: dict[str, Any] = {}
    if args.scores:
        scores = tuple(s.strip() for s in args.scores.split(",") if s.strip())
        unknown = [s for s in scores if s not in SCORES]
        if unknown or not scores:
            raise ExperimentError(f"--scores {args.scores!r}: choose from {', '.join(SCORES)}")
        changes["scores"] = scores
    if args.sparsities:
        changes["sparsities"] = fractions("--sparsities", args.sparsities)
    if args.channel_ratios:
        changes["channel_ratios"] = () if args.channel_ratios.strip() == "0" else fractions("--channel-ratios",
                                                                                            args.channel_ratios)
    if args.channel_importances:
        importances = tuple(s.strip() for s in args.channel_importances.split(",") if s.strip())
        if not importances or any(s not in CHANNEL_IMPORTANCES for s in importances):
            raise ExperimentError(f"--channel-importances {args.channel_importances!r}: choose from "
                                  f"{', '.join(CHANNEL_IMPORTANCES)}")
        changes["channel_importances"] = importances
    for name in ("seeds", "epochs", "train_samples"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "train_samples" else 1):
            raise ExperimentError(f"--{name.replace('_', '-')} must be positive, got {value}")
    if args.seeds:
        changes["seeds"] = tuple(range(args.seeds))
    if args.epochs:
        changes["epochs"] = args.epochs
    if args.train_samples is not None:
        changes["train_samples"] = args.train_samples
    if args.device:
        changes["device"] = args.device
    return replace(profile, **changes)


def parse_shard(text: str) -> tuple[int, int]:
    """"K/N" -> (K, N) with 0 <= K < N, or an ExperimentError naming --shard."""
    from lnpt.lab.paper.experiment import ExperimentError

    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ExperimentError(f"--shard {text!r}: give K/N, e.g. 0/2") from None
    if not 0 <= k < n:
        raise ExperimentError(f"--shard {text!r}: K must lie in 0..N-1")
    return k, n


def fractions(flag: str, text: str) -> tuple[float, ...]:
    """Comma-separated numbers strictly between 0 and 1, or an ExperimentError naming `flag`."""
    from lnpt.lab.paper.experiment import ExperimentError

    try:
        values = tuple(float(s) for s in text.split(","))
    except ValueError:
        raise ExperimentError(f"{flag} {text!r}: give numbers like 0.3,0.5") from None
    if not values or any(not 0 < v < 1 for v in values):
        raise ExperimentError(f"{flag} {text!r}: each must lie strictly between 0 and 1")
    return values


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    profile = profile_from_args(args)
    out = Path(args.out or f"results/grid-{profile.name}")
    if args.report_only:
        result = write_grid_report(profile, out)
    else:
        result = run_grid(profile, out, teacher_path=Path(args.teacher) if args.teacher else None, fresh=args.fresh,
                          shard=parse_shard(args.shard), data=Path(args.data) if args.data else None,
                          test_data=Path(args.test_data) if args.test_data else None)
    written = [out / name for name in ("grid.json", "grid.md", "grid.png")] + (
        [out / "grid-latency.png"] if profile.channel_ratios else [])
    emit(args, result, f"{result['markdown']}\nwrote {', '.join(map(str, written))}")
    return 0


# --- the grid --------------------------------------------------------------------------------------


def recipe_of(profile: Profile, teacher_version: str) -> dict[str, Any]:
    """What decides a run's numbers; a stored grid is resumed only under the same recipe."""
    keep = ("student", "teacher", "train_samples", "test_samples", "epochs", "batch_size", "optimizer", "lr",
            "weight_decay", "prune_samples", "arms", "progressive_rounds")
    return {**{k: asdict(profile)[k] for k in keep}, "teacher_version": teacher_version, "augment": False,
            "schedule": "cosine over all steps"}


def arm_inputs(profile: Profile, training: str, student, teacher, train_x, train_y, guidance, seed: int):
    """(objective, images, targets, recipe) that train `student` in arm `training`: the label-free arm
    gets the teacher's targets only, a supervised arm the labels only; a label-scarce arm a seeded,
    class-balanced share of the images with their labels, for as many steps as the arms on all images."""
    from lnpt.lab.paper import experiment as ex

    recipe, settings = arm_settings(profile, training)
    objective = ex.objective_for(training, student.feature_dim, teacher.feature_dim, settings)
    images, targets = train_x, ex.targets_for(training, guidance, train_y)
    fraction = ex.label_fraction(training)
    if 0 < fraction < 1:
        subset = ex.labeled_subset(train_y, fraction, seed)
        images, targets = train_x[subset], ex.take(targets, subset)
        recipe = replace(recipe, steps=recipe.epochs * math.ceil(len(train_x) / recipe.batch_size))
    return objective, images, targets, recipe


RECIPE_DEFAULTS = {"arms": {}, "data": "fashion-mnist", "test_data": "fashion-mnist", "progressive_rounds": 3}


def load_store(path: Path, recipe: dict[str, Any], fresh: bool) -> dict[str, Any]:
    import json

    from lnpt.lab.paper.experiment import ExperimentError

    if fresh or not path.is_file():
        return {"recipe": recipe, "references": {}, "runs": {}}
    try:
        store = json.loads(path.read_text())
        stored = {**RECIPE_DEFAULTS, **store["recipe"]}  # keys added since that grid ran, at their defaults
        store["runs"], store["references"]  # noqa: B018 - both must be there
    except (ValueError, KeyError, TypeError) as exc:
        raise ExperimentError(f"{path} is not a grid result file ({exc}); move it away or pass --fresh") from None
    if stored != recipe:
        differing = sorted(k for k in set(stored) | set(recipe) if stored.get(k) != recipe.get(k))
        raise ExperimentError(f"{path} was made with a different recipe ({', '.join(differing)} differ); "
                              f"use another --out, or --fresh to start over")
    return store


def run_grid(profile: Profile, out: Path, teacher_path: Path | None = None, fresh: bool = False,
             progress: bool = True, shard: tuple[int, int] = (0, 1), data: Path | None = None,
             test_data: Path | None = None) -> dict[str, Any]:
    """Run (or continue) the grid of `profile` into OUT/grid.json and write OUT/grid.md and the plots.
    `shard=(k, n)`: this process trains only the k-th of n interleaved parts (whole seeds x scores x
    sparsities, so both arms of one mask stay together); n processes with the same OUT share the store
    under a file lock, and each writes the reports from all runs finished so far. `data`, `test_data`:
    the user's labeled folders or CSV files instead of Fashion-MNIST (with a teacher trained on them)."""
    import sys

    import torch
    from tqdm import tqdm

    from lnpt.lab.paper import experiment as ex
    from lnpt.edge.teachers import LocalTeacher
    from lnpt.shared.inference import top1

    device = torch.device(profile.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ex.ExperimentError(f"profile {profile.name} asks for cuda but no GPU is visible; pass --device cpu")
    out.mkdir(parents=True, exist_ok=True)
    kept = kept_file(profile.teacher_file) if profile.teacher_file else None
    teacher_path = teacher_path or kept or out / "teacher.pt"
    if not teacher_path.is_file() and teacher_path == kept:
        raise ex.ExperimentError(f"profile {profile.name} uses the kept teacher {kept}, which does not exist yet: "
                                 f"train it with the recipe in {kept.parent / 'README.md'}, or pass --teacher")
    if not teacher_path.is_file() and teacher_path != out / "teacher.pt":
        raise ex.ExperimentError(f"teacher file {teacher_path} does not exist; omit --teacher to train one")
    if data is not None and not teacher_path.is_file():
        raise ex.ExperimentError("a grid on your own data needs --teacher: a teacher trained on it "
                                 "(`lnpt teacher train --data DIR`)")
    trained = ex.ensure_teacher(teacher_path, profile.teacher, profile.teacher_train_samples,
                                profile.teacher_epochs, profile.device)
    teacher = LocalTeacher.load(teacher_path)
    spec = teacher.input_spec
    train_x, train_y, test_x, test_y = ex.load_split(teacher.teacher, profile.train_samples, profile.test_samples,
                                                     data, test_data)
    classes = len(teacher.teacher.record.class_names)
    guidance = ex.teacher_targets(teacher, train_x)  # once: the label-free arm reads only these
    teacher_test = ex.teacher_targets(teacher, test_x)

    store_path = out / "grid.json"
    teacher_weights = ex.effective_weights(teacher.teacher.model)  # for ||theta - theta_T|| (same arch only)
    with locked(store_path):
        recipe = {**recipe_of(profile, teacher.version), "data": str(data or "fashion-mnist"),
                  "test_data": str(test_data or "fashion-mnist")}
        store = load_store(store_path, recipe, fresh and shard[0] == 0)
        store["profile"] = {**asdict(profile), "name": profile.name}
        store["teacher"] = {"path": str(teacher_path), "arch": teacher.arch, "version": teacher.version,
                            "test_accuracy": top1(teacher_test.logits, test_y),
                            "trained_now": trained is not None}
        store["machine"] = machine()
        ex.write_json(store_path, store)

    plan = planned_runs(profile)
    mine = shard_runs(plan, shard)
    pending = [run for run in mine if run_key(*run) not in store["runs"]]
    masks_cache: dict[tuple, tuple[Any, dict]] = {}
    speeds: dict[Any, Any] = {}  # the dense ONNX file, then ORT latency per channel ratio (widths only)
    part = f" shard {shard[0]}/{shard[1]}" if shard[1] > 1 else ""
    bar = tqdm(total=len(mine), initial=len(mine) - len(pending), unit="run", desc=f"grid {profile.name}{part}",
               disable=not progress, file=sys.stderr)
    for score, training, sparsity, seed in pending:
        bar.set_postfix_str(f"{score} {training} {sparsity:g} seed {seed}")
        started = time.perf_counter()
        student = fresh_student(profile, spec, seed, classes)
        prune_info: dict[str, Any] = {}
        if score.startswith(CHANNELS):
            key = (score, sparsity, seed)
            if key not in masks_cache:  # both arms train the same channel-pruned student
                masks_cache.clear()
                masks_cache[key] = prune_structured(profile, student, score[len(CHANNELS):], sparsity, seed,
                                                    teacher, train_x, spec, speeds, classes)
            pruned, prune_info = masks_cache[key]
            student = copy.deepcopy(pruned)
        elif score != DENSE:
            key = (score, sparsity, seed)
            if key not in masks_cache:  # both arms train the same pruned student
                masks_cache.clear()
                masks_cache[key] = prune(profile, student, score, sparsity, seed, teacher, train_x, train_y, spec,
                                         rounds=profile.progressive_rounds)
            masks, prune_info = masks_cache[key]
            from lnpt.edge.student import apply_masks

            apply_masks(student, masks)
        student.to(device)
        initial_weights = ex.effective_weights(student)
        objective, images, targets, recipe = arm_inputs(profile, training, student, teacher, train_x, train_y,
                                                        guidance, seed)
        fraction = ex.label_fraction(training)
        try:
            losses = ex.train(student, spec, images, targets, objective, recipe, seed=seed, device=device)
            diverged = False
        except ex.ExperimentError:  # a failed run is a result too: recorded with what the model now scores
            losses, diverged = [float("nan")], True
        from lnpt.edge.student import sparsity as measured_sparsity

        metrics = ex.measure(student, spec, test_x, test_y, teacher_test)
        structured = {k: v for k, v in prune_info.items() if k != "seconds"} if score.startswith(CHANNELS) else {}
        record = {
            "score": score, "training": training, "sparsity": 0.0 if structured else sparsity, "seed": seed,
            **structured, "actual_sparsity": measured_sparsity(student), **metrics, "final_train_loss": losses[-1],
            "labeled_images": len(images) if fraction else 0, "steps": recipe.steps or None,
            "distance_to_init": ex.weight_distance(student, initial_weights),
            "distance_to_teacher": ex.weight_distance(student, teacher_weights),
            "diverged": diverged, "prune_seconds": prune_info.get("score_seconds", prune_info.get("seconds", 0.0)),
            "seconds": time.perf_counter() - started,
        }
        with locked(store_path):  # after every run: an interrupted grid resumes here
            store = merged_store(store_path, store)
            store["runs"][run_key(score, training, sparsity, seed)] = record
            ex.write_json(store_path, store)
        bar.update(1)
        bar.write(f"{score:>9} {training:>10} {sparsity:5.3g} seed {seed}: accuracy {metrics['accuracy']:.4f}",
                  file=sys.stderr)
    bar.close()
    return write_grid_report(profile, out)


def write_grid_report(profile: Profile, out: Path) -> dict[str, Any]:
    """OUT/grid.md and the plots from every run in OUT/grid.json that has finished (any shard's), training
    nothing: what a grid says so far while its shards still run (`lnpt analyze grid --report-only`)."""
    import json

    from lnpt.lab.paper import experiment as ex
    from lnpt.lab.paper.grid_report import markdown_report, plot, plot_latency, summarise

    store_path = out / "grid.json"
    if not store_path.is_file():
        raise ex.ExperimentError(f"{store_path} does not exist: run the grid first")
    with locked(store_path):
        store = json.loads(store_path.read_text())
    markdown = markdown_report(store, profile)
    ex.write_text(out / "grid.md", markdown)
    plot(store, profile, out / "grid.png")
    if profile.channel_ratios:
        plot_latency(store, profile, out / "grid-latency.png")
    return {"out": str(out), "profile": store["profile"], "teacher": store["teacher"], "recipe": store["recipe"],
            "machine": store["machine"], "summary": summarise(store, profile), "runs": list(store["runs"].values()),
            "markdown": markdown}


@contextmanager
def locked(store_path: Path) -> Iterator[None]:
    """An exclusive lock beside the store: shards of one grid never write over each other's runs."""
    import fcntl

    with open(store_path.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def merged_store(store_path: Path, store: dict[str, Any]) -> dict[str, Any]:
    """This process's store with the runs other shards wrote since it last looked (call under `locked`)."""
    import json

    if store_path.is_file():
        on_disk = json.loads(store_path.read_text())
        store["runs"] = {**on_disk.get("runs", {}), **store["runs"]}
    return store


def shard_runs(plan: list[tuple[str, str, float, int]], shard: tuple[int, int]) -> list[tuple[str, str, float, int]]:
    """The runs of shard k of n, in plan order: whole (score, level, seed) groups, numbered in plan order,
    so both arms of one mask stay in one process."""
    groups = {group: number for number, group in enumerate(dict.fromkeys((r[0], r[2], r[3]) for r in plan))}
    return [run for run in plan if groups[(run[0], run[2], run[3])] % shard[1] == shard[0]]


def fresh_student(profile: Profile, spec, seed: int, classes: int = 10):
    """The seed alone decides the initial weights: every score and both arms start from them."""
    import torch

    from lnpt.shared.models import build_model

    torch.manual_seed(seed)
    return build_model(profile.student, classes, spec)


def prune(profile: Profile, student, score: str, sparsity: float, seed: int, teacher, train_x, train_y, spec,
          rounds: int | None = None):
    """Masks of `score` at `sparsity` on the seeded student, scored with `prune_samples` training images:
    the LNPT scores see the teacher's targets through the guided arm's objective (the one the student is
    trained with), snip/grasp the labels, the rest no data. `rounds`: lnpt-progressive's (default: prune's)."""
    from lnpt.edge.pruning.pipeline import (build_objective, make_batches, pick_samples, prune_student,
                                            resolve_objective)
    from lnpt.edge.student import current_masks
    from lnpt.shared.config import PruneConfig

    config = PruneConfig(score=score, sparsity=sparsity, seed=seed)
    if rounds is not None:
        config = replace(config, progressive_rounds=rounds)
    kind = resolve_objective(score, "auto", structured=False)
    objective = build_objective(kind, arm_settings(profile, "guided")[1], student.feature_dim, teacher.feature_dim)
    batches = []
    if kind is not None:
        chosen = pick_samples(len(train_x), profile.prune_samples, seed)
        batches = (make_batches(train_x[chosen], spec, config.batch_size, teacher) if kind == "learning-gap"
                   else make_batches(train_x[chosen], spec, config.batch_size, labels=train_y[chosen]))
    report = prune_student(student, batches, config, objective, spec)
    return current_masks(student), report


def prune_structured(profile: Profile, student, importance: str, ratio: float, seed: int, teacher, train_x, spec,
                     speeds: dict, classes: int = 10) -> tuple[Any, dict[str, Any]]:
    """The seeded student with `ratio` of its channels removed by `importance` (lnpt: group Taylor of
    the learning gap + KD on the teacher's targets for `prune_samples` images; magnitude, random: no
    data), and the speed that buys: MACs, params and ORT latency (batch 1, 1 thread) over dense."""
    import torch

    from lnpt.edge.onnx.latency import LatencySettings, model_onnx, side_by_side
    from lnpt.edge.pruning.pipeline import make_batches, pick_samples
    from lnpt.edge.pruning.structured import count_macs_and_params, prune_channels
    from lnpt.shared.objectives import objective_from_config

    objective, batches = None, []
    if importance == "lnpt":
        # the objective the student is trained with
        objective = objective_from_config(arm_settings(profile, "guided")[1], student.feature_dim, teacher.feature_dim)
        batches = make_batches(train_x[pick_samples(len(train_x), profile.prune_samples, seed)], spec, 64, teacher)
    started = time.perf_counter()
    info = prune_channels(student, ratio, objective, batches, torch.zeros(1, *spec.shape),
                          importance=CHANNEL_IMPORTANCES[importance], seed=seed)
    seconds = time.perf_counter() - started
    student.eval()
    if "dense" not in speeds:
        speeds["dense"] = model_onnx(fresh_student(profile, spec, 0, classes).eval(), spec)
    if ratio not in speeds:  # the widths, not the weights, decide the speed: once per ratio
        timed = side_by_side({"dense": speeds["dense"], "pruned": model_onnx(student, spec)}, spec.shape,
                             LatencySettings(threads=1, batch=1), rounds=3)
        speeds[ratio] = {"latency_ms": timed["pruned"]["median_ms"], "dense_latency_ms": timed["dense"]["median_ms"],
                         "latency_over_dense": timed["pruned"]["median_ms"] / timed["dense"]["median_ms"]}
    macs, params = count_macs_and_params(student, torch.zeros(1, *spec.shape))
    return student, {"importance": importance, "channel_ratio": ratio, "macs": macs, "params": params,
                     "macs_over_dense": macs / info["macs_before"], "params_over_dense": params / info["params_before"],
                     **speeds[ratio], "seconds": seconds}


def machine() -> dict[str, Any]:
    import os
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": gpu,
            "torch": torch.__version__, "platform": platform.platform()}


# --- reports ---------------------------------------------------------------------------------------


