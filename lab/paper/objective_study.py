"""`lnpt analyze objective`: each arm's training settings, chosen on a validation split (never the test set).

The study behind the standard grid's per-arm settings (docs/RESULTS.md). The grid profile's student
(seed 0), pruned by the LNPT score at each study sparsity, trains on the training images less a seeded,
class-balanced validation share and is scored on that share; the test set is never read. Candidates are
tried stage by stage (coordinate descent: each stage starts from the best setting so far, and an arm's
score is its mean validation accuracy over the study sparsities):
  guided      1 terms: LG + KD, KD only, LG only       2 gap kind {mse, cosine, normalized} x projector
              {learned, fixed random}                   3 KD temperature {1, 2, 4}, then KD weight {0.5, 1, 2}
              4 learning rate {2e-3, 5e-3, 1e-2}        5 epochs {5, 10}
  supervised  learning rate, then epochs (the same candidates)
  supervised@F (label-scarce) learning rate, then length: as many steps as 1 or 5 epochs on all images
  rounds      the lnpt-progressive score's rounds {3, 10, 30} vs one-shot LNPT, at the guided winner
Every finished candidate is appended to OUT/study.json (atomic writes, under a file lock: two processes
with different --arms share one study), so an interrupted study continues where it stopped. The winners
are written to OUT/study.md and printed as the profile's `arms` setting.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from lnpt.lab.paper.grid import arm_inputs, fresh_student, locked, merged_store, prune
from lnpt.lab.paper.profiles import OBJECTIVE_BEFORE_STUDY, PROFILES, arm_dict, describe_settings, kept_file
from lnpt.shared.cli import add_format_option, emit

SPARSITIES = (0.95, 0.98)  # where the claims are tested
VALIDATION_FRACTION = 0.1
LEARNING_RATES = (2e-3, 5e-3, 1e-2)
EPOCHS = (5, 10)
SCARCE_LENGTHS = (1, 5)  # full-set epochs worth of steps
PROGRESSIVE_ROUNDS = (3, 10, 30)  # lnpt-progressive's rounds, against one-shot LNPT (1 round)

Settings = dict  # one Profile.arms entry: {"lr", "epochs", "objective": {ObjectiveConfig keys}}
Stage = tuple[str, Callable[[Settings], list[Settings]]]


def with_objective(best: Settings, **keys) -> Settings:
    return {**best, "objective": {**best.get("objective", {}), **keys}}


def guided_stages() -> list[Stage]:
    def gap_kinds(best):
        if best.get("objective", {}).get("lambda_gap", 1.0) == 0:
            return []  # KD only won: no gap to shape
        return [with_objective(best, gap=g, projector=p) for g in ("mse", "cosine", "normalized")
                for p in ("learned", "fixed")]

    def temperatures(best):
        if best.get("objective", {}).get("lambda_kd", 1.0) == 0:
            return []
        return [with_objective(best, temperature=t) for t in (1.0, 2.0, 4.0)]

    def kd_weights(best):
        if best.get("objective", {}).get("lambda_kd", 1.0) == 0 or best.get("objective", {}).get("lambda_gap",
                                                                                                  1.0) == 0:
            return []  # with one term its weight is only a learning-rate scale
        return [with_objective(best, lambda_kd=w) for w in (0.5, 1.0, 2.0)]

    return [
        ("terms", lambda best: [with_objective(best, lambda_gap=1.0, lambda_kd=1.0),
                                with_objective(best, lambda_gap=0.0, lambda_kd=1.0),
                                with_objective(best, lambda_gap=1.0, lambda_kd=0.0)]),
        ("gap kind x projector", gap_kinds),
        ("KD temperature", temperatures),
        ("KD weight", kd_weights),
        ("learning rate", learning_rates),
        ("epochs", epochs),
    ]


def learning_rates(best: Settings) -> list[Settings]:
    return [{**best, "lr": lr} for lr in sorted({*LEARNING_RATES, best["lr"]})]


def epochs(best: Settings, choices: tuple[int, ...] = EPOCHS) -> list[Settings]:
    """The epoch choices and the current setting (a profile may train fewer epochs than any choice)."""
    return [{**best, "epochs": e} for e in sorted({*choices, best["epochs"]})]


def supervised_stages() -> list[Stage]:
    return [("learning rate", learning_rates), ("epochs", epochs)]


def scarce_stages() -> list[Stage]:
    return [("learning rate", learning_rates), ("length", lambda best: epochs(best, SCARCE_LENGTHS))]


def winner(tried: list[dict], incumbent: Settings) -> Settings:
    """The best mean validation accuracy; on a tie the setting already chosen stays."""
    return max(tried, key=lambda r: (r["mean"], r["settings"] == incumbent))["settings"]


def stages_for(arm: str) -> list[Stage]:
    if arm == "guided":
        return guided_stages()
    return supervised_stages() if arm == "supervised" else scarce_stages()


def candidate_key(arm: str, settings: Settings) -> str:
    return f"{arm}|{json.dumps(settings, sort_keys=True)}"


def base_settings(profile, arm: str) -> Settings:
    """Where the study of `arm` starts, written out in full: the profile's settings without its arms, and
    for the guided arm the objective before the study (today's defaults are the study's own winner)."""
    settings = arm_dict(replace(profile, arms={}), arm)
    if "objective" in settings:
        settings["objective"] = dict(OBJECTIVE_BEFORE_STUDY)
    return settings


def run_study(profile, arms: tuple[str, ...], out: Path, teacher_path: Path | None = None,
              data: Path | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or continue) the study of `arms` on `profile`'s student and teacher; returns the runs so far,
    each arm's chosen settings and the Markdown report. `data`: the user's labeled training images
    (folder or .csv) instead of Fashion-MNIST's training set."""
    import torch

    from lnpt.edge.student import apply_masks
    from lnpt.edge.teachers import LocalTeacher
    from lnpt.lab.paper import experiment as ex
    from lnpt.shared.data import load_fashion_mnist

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if teacher_path is None and not profile.teacher_file:
        raise ex.ExperimentError(f"profile {profile.name} keeps no teacher file; pass --teacher")
    teacher_path = teacher_path or kept_file(profile.teacher_file)
    if not teacher_path.is_file():
        raise ex.ExperimentError(f"teacher file {teacher_path} does not exist; train it first or pass --teacher")
    out.mkdir(parents=True, exist_ok=True)
    teacher = LocalTeacher.load(teacher_path)
    spec = teacher.input_spec
    if data is None:
        all_x, all_y = load_fashion_mnist(True)  # the training set only: the test set is never read
    else:
        from lnpt.edge.evaluation import labeled_folder

        all_x, all_y = labeled_folder(data, teacher.teacher.record.preprocess, teacher.teacher.record.class_names)
    classes = len(teacher.teacher.record.class_names)
    if profile.train_samples:
        chosen_images = torch.randperm(len(all_x), generator=torch.Generator().manual_seed(0))[:profile.train_samples]
        all_x, all_y = all_x[chosen_images], all_y[chosen_images]
    held_out = ex.labeled_subset(all_y, VALIDATION_FRACTION, seed=0)
    keep = torch.ones(len(all_y), dtype=torch.bool)
    keep[held_out] = False
    train_x, train_y, val_x, val_y = all_x[keep], all_y[keep], all_x[held_out], all_y[held_out]
    log(f"study: {len(train_x)} training and {len(val_x)} validation images (seeded, class-balanced); "
        f"teacher {teacher.arch} {teacher.version}; arms {', '.join(arms)}")
    guidance = ex.teacher_targets(teacher, train_x)
    masks = {s: prune(profile, fresh_student(profile, spec, 0, classes), "lnpt", s, 0, teacher, train_x, train_y, spec)[0]
             for s in SPARSITIES}

    store_path = out / "study.json"
    recipe = {"profile": profile.name, "student": profile.student, "teacher_version": teacher.version,
              "data": str(data or "fashion-mnist"),
              "sparsities": list(SPARSITIES), "validation_fraction": VALIDATION_FRACTION, "seed": 0,
              "train_images": len(train_x), "validation_images": len(val_x)}
    with locked(store_path):
        store = json.loads(store_path.read_text()) if store_path.is_file() else {"recipe": recipe, "runs": {}}
        if store["recipe"] != recipe:
            raise ex.ExperimentError(f"{store_path} was made with a different recipe; use another --out")
        ex.write_json(store_path, store)

    def evaluate(arm: str, settings: Settings, rounds: int | None = None) -> dict[str, Any]:
        """Validation accuracy of `arm` trained with `settings` on the LNPT masks (one-shot, or
        lnpt-progressive over `rounds` rounds scored with the settings' objective)."""
        key = candidate_key(arm if rounds is None else f"{arm}|rounds {rounds}", settings)
        nonlocal store
        if key in store["runs"]:
            return store["runs"][key]
        started = time.perf_counter()
        accuracies = {}
        studied = replace(profile, arms={arm: settings})
        for sparsity in SPARSITIES:
            student = fresh_student(profile, spec, 0, classes)
            apply_masks(student, masks[sparsity] if rounds is None else
                        prune(studied, fresh_student(profile, spec, 0, classes), "lnpt-progressive", sparsity, 0, teacher,
                              train_x, train_y, spec, rounds=rounds)[0])
            objective, images, targets, recipe = arm_inputs(studied, arm, student, teacher, train_x, train_y,
                                                            guidance, seed=0)
            try:
                ex.train(student, spec, images, targets, objective, recipe, seed=0)
                accuracies[f"{sparsity:g}"] = ex.measure(student, spec, val_x, val_y)["accuracy"]
            except ex.ExperimentError:  # diverged: the candidate loses
                accuracies[f"{sparsity:g}"] = 0.0
        record = {"arm": arm, "settings": settings, "rounds": rounds, "validation_accuracy": accuracies,
                  "mean": sum(accuracies.values()) / len(accuracies), "seconds": time.perf_counter() - started}
        with locked(store_path):
            store = merged_store(store_path, store)
            store["runs"][key] = record
            ex.write_json(store_path, store)
        log(f"  {arm:>16} {describe_settings(settings):<60} validation {100 * record['mean']:.2f} %")
        return record

    for arm in arms:
        best = base_settings(profile, arm)
        for stage, candidates in stages_for(arm):
            tried = [evaluate(arm, c) for c in candidates(best)]
            if tried:
                best = winner(tried, best)
            log(f"{arm}: after '{stage}': {describe_settings(best)}")
        if arm == "guided":  # the progressive score's rounds, at the guided arm's chosen settings
            for rounds in PROGRESSIVE_ROUNDS:
                evaluate(arm, best, rounds)
    with locked(store_path):
        store = merged_store(store_path, store)
    markdown = study_report(store, profile)
    ex.write_text(out / "study.md", markdown)
    return {"out": str(out), "recipe": store["recipe"], "chosen": chosen(store, profile),
            "progressive_rounds": chosen_rounds(store, profile),
            "runs": list(store["runs"].values()), "markdown": markdown}


def replay(store: dict[str, Any], profile, arm: str) -> Iterator[tuple[str, list[dict], Settings]]:
    """The stages of `arm` as run: (stage, finished candidates, best after the stage), from the store."""
    best = base_settings(profile, arm)
    for stage, candidates in stages_for(arm):
        tried = [store["runs"].get(candidate_key(arm, c)) for c in candidates(best)]
        if not tried:
            continue
        if None in tried:  # this stage has not finished: stop here
            yield stage, [r for r in tried if r], best
            return
        best = winner(tried, best)
        yield stage, tried, best


def chosen(store: dict[str, Any], profile) -> dict[str, Settings]:
    """Each studied arm's winner (its best setting after the last finished stage)."""
    arms = dict.fromkeys(r["arm"] for r in store["runs"].values())
    result = {}
    for arm in arms:
        best = None
        for _, _, best in replay(store, profile, arm):
            pass
        if best is not None:
            result[arm] = best
    return result


def rounds_results(store: dict[str, Any], profile) -> list[tuple[int, dict]]:
    """(rounds, record) of the progressive score at the guided arm's chosen settings; 1 = one-shot LNPT."""
    best = chosen(store, profile).get("guided")
    if best is None:
        return []
    found = [(1, store["runs"].get(candidate_key("guided", best)))]
    found += [(r, store["runs"].get(candidate_key(f"guided|rounds {r}", best))) for r in PROGRESSIVE_ROUNDS]
    return [(r, record) for r, record in found if record is not None]


def chosen_rounds(store: dict[str, Any], profile) -> int | None:
    """The best number of rounds (ties: the fewest, the cheapest), once all have run."""
    found = rounds_results(store, profile)
    if len(found) < 1 + len(PROGRESSIVE_ROUNDS):
        return None
    return max(found, key=lambda pair: (pair[1]["mean"], -pair[0]))[0]


def study_report(store: dict[str, Any], profile) -> str:
    recipe = store["recipe"]
    lines = ["### Objective and training study (validation split, never the test set)", "",
             f"Student {recipe['student']} (seed 0) pruned by the LNPT score; {recipe['train_images']} training "
             f"images, {recipe['validation_images']} validation images (a seeded, class-balanced "
             f"{recipe['validation_fraction']:.0%} of the training set); teacher {recipe['teacher_version']}. "
             f"Validation accuracy (%) at each sparsity and their mean; stages run in order, each from the best "
             f"setting so far (bold: the stage's winner).", "",
             "| arm | stage | candidate | " + " | ".join(f"{float(s):.0%}" for s in recipe["sparsities"])
             + " | mean |", "|---|---|---|" + "---|" * (len(recipe["sparsities"]) + 1)]
    winners = chosen(store, profile)
    for arm in winners:
        for stage, tried, best in replay(store, profile, arm):
            for record in tried:
                mark = "**" if record["settings"] == best else ""
                cells = [f"{100 * record['validation_accuracy'][f'{float(s):g}']:.2f}" for s in recipe["sparsities"]]
                lines.append(f"| {arm} | {stage} | {mark}{describe_settings(record['settings'])}{mark} | "
                             + " | ".join(cells) + f" | {mark}{100 * record['mean']:.2f}{mark} |")
    found = rounds_results(store, profile)
    if found:
        lines += ["", "Rounds of the lnpt-progressive score (exponential schedule) at the guided arm's chosen "
                  "settings; 1 round = one-shot LNPT:", "",
                  "| rounds | " + " | ".join(f"{float(s):.0%}" for s in recipe["sparsities"]) + " | mean |",
                  "|---|" + "---|" * (len(recipe["sparsities"]) + 1)]
        for rounds, record in found:
            cells = [f"{100 * record['validation_accuracy'][f'{float(s):g}']:.2f}" for s in recipe["sparsities"]]
            lines.append(f"| {rounds} | " + " | ".join(cells) + f" | {100 * record['mean']:.2f} |")
        lines += ["", f"Chosen rounds: {chosen_rounds(store, profile) or 'not all run yet'}."]
    lines += ["", "Chosen (the standard profile's `arms`):", "", "```python",
              json.dumps(winners, indent=1, sort_keys=True), "```"]
    return "\n".join(lines) + "\n"


def register(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser("objective", help="choose each arm's objective and training settings on a "
                                                  "validation split", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=tuple(PROFILES), default="standard",
                        help="the grid profile whose student, teacher and data are studied (default standard)")
    parser.add_argument("--arms", default="guided,supervised,supervised@0.01,supervised@0.1",
                        help="comma-separated arms to study (default: all four)")
    parser.add_argument("--teacher", help="teacher file (default: the profile's kept teacher)")
    parser.add_argument("--data", help="your labeled training images (class sub-folders or a .csv of path,label) "
                                       "instead of Fashion-MNIST's; needs --teacher trained on them")
    parser.add_argument("--out", default="docs/results/objective-study", help="output folder (default %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default 0 = torch's choice)")
    add_format_option(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from lnpt.lab.paper import experiment as ex

    if args.threads:
        torch.set_num_threads(args.threads)
    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    for arm in arms:
        ex.label_fraction(arm)  # names a bad arm before any work
    result = run_study(PROFILES[args.profile], arms, Path(args.out),
                       teacher_path=Path(args.teacher) if args.teacher else None,
                       data=Path(args.data) if args.data else None)
    emit(args, result, f"{result['markdown']}\nwrote {Path(args.out) / 'study.json'}, {Path(args.out) / 'study.md'}")
    return 0
