"""`lnpt analyze grid`: pruning score x training objective x sparsity, test accuracy over seeds;
and channel pruning: importance x training objective x channel ratio, with the speed it buys.

Experiments 2 and 3 of the method (docs/RESULTS.md):
- every score {lnpt, snip, grasp, synflow, magnitude, random} prunes the same seeded student before
  training (snip and grasp with labels, lnpt with the teacher's targets, the rest data-free);
- each pruned student is trained twice from the very same weights and masks, with the same data order,
  optimizer, schedule and epochs: once label-free (learning gap + KD against a local teacher's
  targets, no label anywhere) and once supervised (cross-entropy on labels);
- references: the dense teacher, and the dense student trained both ways;
- structured rows (profile.channel_ratios): the seeded student loses that ratio of every prunable
  layer's channels (Torch-Pruning) by importance {lnpt: group Taylor of the label-free objective on
  the teacher's targets, magnitude: L1, random}, then trains both ways like the rows above; each
  row also records MACs and the ONNX Runtime latency (batch 1, 1 thread) over the dense student's,
  measured side by side, for the latency-vs-accuracy plot OUT/grid-latency.png (its Pareto front).
Teacher targets are computed once per training set (augmentation is off). Every finished run is
appended to OUT/grid.json (atomic writes), so an interrupted grid continues where it stopped; the
Markdown table OUT/grid.md and the plot OUT/grid.png are rewritten from it at the end.

Profiles: tiny (a smoke test), quick (about half an hour on two CPU cores: LeNet-5 student and
teacher, a 10k-image subset, 5 epochs, Adam; structured rows with --channel-ratios), full (GPU:
ResNet-20 student, ResNet-32 teacher, all data, channel ratios 0.3/0.5/0.7).
"""
from __future__ import annotations

import argparse
import copy
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from lnpt.shared.cli import add_format_option, emit

# The registered pruning scores (edge.pruning.scorers.SCORERS), in the order the grid reports them.
SCORES = ("lnpt", "lnpt-progressive", "snip", "grasp", "synflow", "magnitude", "random")
ONE_SHOT_SCORES = tuple(s for s in SCORES if s != "lnpt-progressive")  # the quick profile's record
TRAININGS = ("guided", "supervised")
DENSE = "dense"
# Channel importance of the structured rows -> Torch-Pruning criterion (edge.pruning.structured).
CHANNEL_IMPORTANCES = {"lnpt": "taylor", "magnitude": "magnitude", "random": "random"}
CHANNELS = "channels:"  # a structured row's score is CHANNELS + importance, e.g. "channels:lnpt"


@dataclass(frozen=True)
class Profile:
    name: str
    student: str
    teacher: str
    teacher_train_samples: int  # 0 = all 60k
    teacher_epochs: int
    train_samples: int  # the student's (edge) training set; 0 = all
    test_samples: int  # 0 = the whole 10k test set
    epochs: int
    batch_size: int = 64
    # One optimizer and learning rate for both arms. Adam, because SGD left sparse LeNet-5s (no batch
    # norm: the signal fades through layers thinned to a few %) stuck at chance for epochs, and
    # because it is indifferent to the guided loss's larger scale (KD carries tau^2 = 16), where SGD
    # needed a different learning rate per arm (docs/RESULTS.md).
    optimizer: str = "adam"
    lr: float = 5e-3
    weight_decay: float = 0.0
    prune_samples: int = 100  # 10 x classes, as in the paper
    scores: tuple[str, ...] = SCORES
    trainings: tuple[str, ...] = TRAININGS
    sparsities: tuple[float, ...] = (0.9, 0.95, 0.98, 0.99)
    seeds: tuple[int, ...] = (0, 1)
    device: str = "cpu"
    channel_ratios: tuple[float, ...] = ()  # structured rows: channel ratio removed; () = none
    channel_importances: tuple[str, ...] = tuple(CHANNEL_IMPORTANCES)
    # The label-scarce arms: supervised on a seeded, class-balanced share of the images only
    # ("supervised@0.01"), trained as many steps as the arms on all images, on the dense student and
    # on the masks of `scarce_scores`.
    label_fractions: tuple[float, ...] = ()
    scarce_scores: tuple[str, ...] = ("lnpt",)
    # Per-arm settings that differ from the profile's (lr, epochs, optimizer; "objective": the guided
    # objective's [objective] keys), e.g. {"guided": {"lr": 0.01}}: each arm gets its own best setting.
    arms: dict = field(default_factory=dict)
    teacher_file: str = ""  # the profile's kept teacher (used when --teacher is not given)
    notes: str = field(default="", compare=False)

    @property
    def scarce_trainings(self) -> tuple[str, ...]:
        return tuple(f"supervised@{f:g}" for f in self.label_fractions)


# Chosen by `lnpt analyze objective` (docs/results/objective-study/study.md); until it has run, today's
# defaults: Adam 5e-3 and 5 epochs for every arm, LG (mse, learned projector) + 1.0 x KD at tau 4.
ARMS_STANDARD: dict = {}

PROFILES = {
    "tiny": Profile("tiny", "lenet5", "lenet5", 1000, 1, train_samples=256, test_samples=256, epochs=1,
                    prune_samples=32, scores=("lnpt", "magnitude"), sparsities=(0.9,), seeds=(0,),
                    channel_ratios=(0.5,), label_fractions=(0.1,), arms={"guided": {"lr": 0.01}},
                    notes="smoke test only: numbers mean nothing"),
    "quick": Profile("quick", "lenet5", "lenet5", 0, 10, train_samples=10000, test_samples=0, epochs=5,
                     scores=ONE_SHOT_SCORES,
                     notes="2-core CPU: LeNet-5 teacher trained on all 60k labelled images for 10 epochs (the cloud), "
                           "LeNet-5 students on a 10k-image subset (the edge), 5 epochs, no augmentation"),
    # The evidence profile (docs/RESULTS.md): the kept mature ResNet-20 teacher, LeNet-5 students (another
    # architecture and width: the projector is used) on all 60k images as unlabeled data, 3 seeds; label-
    # scarce arms; channel rows. ARMS_STANDARD: each arm's settings from `lnpt analyze objective`
    # (docs/results/objective-study/), chosen on a validation split of the training images.
    "standard": Profile("standard", "lenet5", "resnet20", 0, 30, train_samples=0, test_samples=0, epochs=5,
                        sparsities=(0.9, 0.95, 0.98), seeds=(0, 1, 2), channel_ratios=(0.3, 0.5, 0.7),
                        label_fractions=(0.01, 0.1), arms=ARMS_STANDARD,
                        teacher_file="docs/results/mature-teacher/resnet20-fmnist.pt",
                        notes="2-core CPU, two shards of one thread: mature ResNet-20 teacher (kept file), "
                              "LeNet-5 students on all 60k images, 5 epochs, 3 seeds"),
    "full": Profile("full", "resnet20", "resnet32", 0, 60, train_samples=0, test_samples=0, epochs=40,
                    lr=1e-3, seeds=(0, 1, 2), device="cuda", channel_ratios=(0.3, 0.5, 0.7),
                    notes="GPU: ResNet-32 teacher, ResNet-20 students on all 60k images, 40 epochs"),
}


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
    result = run_grid(profile, out, teacher_path=Path(args.teacher) if args.teacher else None, fresh=args.fresh,
                      shard=parse_shard(args.shard), data=Path(args.data) if args.data else None,
                      test_data=Path(args.test_data) if args.test_data else None)
    written = [out / name for name in ("grid.json", "grid.md", "grid.png")] + (
        [out / "grid-latency.png"] if profile.channel_ratios else [])
    emit(args, result, f"{result['markdown']}\nwrote {', '.join(map(str, written))}")
    return 0


# --- the grid --------------------------------------------------------------------------------------

def run_key(score: str, training: str, sparsity: float, seed: int) -> str:
    return f"{score}|{training}|{sparsity:g}|{seed}"


def planned_runs(profile: Profile) -> list[tuple[str, str, float, int]]:
    """Seed by seed (a stopped grid has complete seeds first), dense references first, structured
    rows last; a structured row's third element is its channel ratio."""
    runs = []
    scarce = profile.scarce_trainings
    for seed in profile.seeds:
        runs += [(DENSE, training, 0.0, seed) for training in profile.trainings + scarce]
        runs += [(score, training, sparsity, seed) for sparsity in profile.sparsities for score in profile.scores
                 for training in profile.trainings + (scarce if score in profile.scarce_scores else ())]
        runs += [(CHANNELS + importance, training, ratio, seed) for ratio in profile.channel_ratios
                 for importance in profile.channel_importances for training in profile.trainings]
    return runs


def recipe_of(profile: Profile, teacher_version: str) -> dict[str, Any]:
    """What decides a run's numbers; a stored grid is resumed only under the same recipe."""
    keep = ("student", "teacher", "train_samples", "test_samples", "epochs", "batch_size", "optimizer", "lr",
            "weight_decay", "prune_samples", "arms")
    return {**{k: asdict(profile)[k] for k in keep}, "teacher_version": teacher_version, "augment": False,
            "schedule": "cosine over all steps"}


def arm_settings(profile: Profile, training: str) -> tuple[Any, Any]:
    """(Recipe, ObjectiveConfig or None) of one arm: the profile's settings with the arm's own on top.
    A label-scarce arm ("supervised@F") falls back to "supervised"'s settings."""
    from lnpt.lab.paper import experiment as ex
    from lnpt.shared.config import ObjectiveConfig

    own = profile.arms.get(training, profile.arms.get(training.partition("@")[0], {}))
    recipe = ex.Recipe(own.get("epochs", profile.epochs), profile.batch_size, own.get("lr", profile.lr),
                       weight_decay=own.get("weight_decay", profile.weight_decay),
                       optimizer=own.get("optimizer", profile.optimizer))
    objective = ObjectiveConfig(**own.get("objective", {})) if ex.label_fraction(training) == 0.0 else None
    return recipe, objective


def data_name(store: dict[str, Any], profile: Profile) -> str:
    test = store["recipe"].get("test_data", "fashion-mnist")
    if test == "fashion-mnist":
        return f"{profile.test_samples or 10000} Fashion-MNIST test images"
    return f"the held-out images of {test}"


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


def arm_dict(profile: Profile, training: str) -> dict[str, Any]:
    """An arm's settings written out in full: {"lr", "epochs", "objective" (guided only)}."""
    recipe, objective = arm_settings(profile, training)
    settings: dict[str, Any] = {"lr": recipe.lr, "epochs": recipe.epochs}
    if objective is not None:
        settings["objective"] = asdict(objective)
    return settings


def describe_settings(settings: dict[str, Any]) -> str:
    """A short, readable name of one arm's settings: 'lr 0.005, 5 ep, LG mse/learned + 1 x KD tau 4'."""
    text = f"lr {settings['lr']:g}, {settings['epochs']} ep"
    objective = settings.get("objective")
    if objective:
        terms = []
        if objective["lambda_gap"]:
            terms.append(f"{objective['lambda_gap']:g} x LG {objective['gap']}/{objective['projector']}")
        if objective["lambda_kd"]:
            terms.append(f"{objective['lambda_kd']:g} x KD tau {objective['temperature']:g}")
        text += ", " + " + ".join(terms)
    return text


RECIPE_DEFAULTS = {"arms": {}, "data": "fashion-mnist", "test_data": "fashion-mnist"}


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
    pending = [run for run in plan if run_key(*run) not in store["runs"] and in_shard(run, plan, shard)]
    masks_cache: dict[tuple, tuple[Any, dict]] = {}
    speeds: dict[Any, Any] = {}  # the dense ONNX file, then ORT latency per channel ratio (widths only)
    bar = tqdm(total=len(plan), initial=len(plan) - len(pending), unit="run", desc=f"grid {profile.name}",
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
                masks_cache[key] = prune(profile, student, score, sparsity, seed, teacher, train_x, train_y, spec)
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
    with locked(store_path):
        store = merged_store(store_path, store)  # the reports cover every shard's finished runs
    markdown = markdown_report(store, profile)
    ex.write_text(out / "grid.md", markdown)
    plot(store, profile, out / "grid.png")
    if profile.channel_ratios:
        plot_latency(store, profile, out / "grid-latency.png")
    return {"out": str(out), "profile": store["profile"], "teacher": store["teacher"], "recipe": store["recipe"],
            "machine": store["machine"], "summary": summarise(store, profile), "runs": list(store["runs"].values()),
            "markdown": markdown}


def kept_file(relative: str) -> Path:
    """A file kept in the repository (docs/results/...): found from the current folder, else from the
    checkout this module runs from."""
    here = Path(relative)
    checkout = Path(__file__).resolve().parents[2] / relative
    return checkout if not here.exists() and checkout.exists() else here


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


def in_shard(run: tuple[str, str, float, int], plan: list[tuple[str, str, float, int]],
             shard: tuple[int, int]) -> bool:
    """Whether `run` belongs to shard k of n: its (score, level, seed) group, numbered in plan order."""
    groups = list(dict.fromkeys((r[0], r[2], r[3]) for r in plan))
    return groups.index((run[0], run[2], run[3])) % shard[1] == shard[0]


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


PREDICTORS = {"learning_gap": "final learning gap to the teacher (mse, test images)",
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
    lines += ["", "Accuracy cost of speed (points below the dense student of the same training; the least "
              "pruned ratio that reaches the speed-up):", "",
              "| importance | training | 2x faster | 4x faster |", "|---|---|---|---|"]
    for importance in profile.channel_importances:
        for training in profile.trainings:
            dense = summary.get(f"{DENSE}|{training}|0")
            cells = []
            for speedup in (2, 4):
                fast = [r for r in sorted(ratios) if r in speed and speed[r]["latency"] <= 1 / speedup]
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
    for score in profile.scores:
        for training in profile.trainings:
            points = [(s, summary[f"{score}|{training}|{s:g}"]) for s in profile.sparsities
                      if f"{score}|{training}|{s:g}" in summary]
            if points:
                ax.errorbar([100 * s for s, _ in points], [100 * p["mean"] for _, p in points],
                            yerr=[100 * p["std"] for _, p in points], color=colours[score], capsize=3, marker="o",
                            linestyle="-" if training == "guided" else "--", label=f"{score}, {training}")
    ax.axhline(100 * store["teacher"]["test_accuracy"], color="black", linewidth=1, label="dense teacher")
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
