"""Pruning before training, end to end: samples -> teacher targets -> (channels) -> scores -> masks.

`prune_student` is what `lnpt prune` runs and what experiments call directly; the steps are
separate functions so benchmarks can time them one by one.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Sequence

import torch
from tqdm import tqdm

from lnpt.edge.pruning import scorers
from lnpt.edge.pruning.masks import PruneError, prune_loop
from lnpt.edge.pruning.report import density_report
from lnpt.edge.teachers import TargetSource
from lnpt.shared.data import adapt, normalize
from lnpt.shared.objectives import CrossEntropy, Objective, Targets, objective_from_config
from lnpt.shared.models import InputSpec
from lnpt.shared.zoo import ZooNet

def scorer_class(score: str) -> type[scorers.Scorer]:
    """The registered scorer called `score`, or a PruneError listing the registered ones."""
    if score not in scorers.SCORERS:
        raise PruneError(f"unknown score {score!r}; choose one of {', '.join(scorers.SCORERS)}")
    return scorers.SCORERS[score]


def prunes_channels(prune_config) -> bool:
    """Whether a run removes channels: a fixed ratio (prune.structured) or a budget (prune.target_*)."""
    from lnpt.edge.pruning.budget import Budget

    return prune_config.structured > 0 or Budget.from_config(prune_config) is not None


def resolve_objective(score: str, objective: str, structured: bool) -> str | None:
    """Which objective a run needs: `auto` is the score's own (the learning gap for lnpt,
    cross-entropy for the supervised baselines snip/grasp); data-free scores need none unless
    channel pruning does."""
    own = scorer_class(score).objective
    if own == "learning-gap" and objective == "cross-entropy":
        raise PruneError(f"the {score} score is defined by the label-free learning gap; for SNIP with "
                         "cross-entropy use --score snip")
    if own is None:
        return None if not structured else ("learning-gap" if objective == "auto" else objective)
    return own if objective == "auto" else objective


def build_objective(kind: str | None, objective_config, student_dim: int, teacher_dim: int | None) -> Objective | None:
    if kind is None:
        return None
    if kind == "cross-entropy":
        return CrossEntropy()
    return objective_from_config(objective_config, student_dim, teacher_dim)


def pick_samples(count: int, wanted: int, seed: int) -> torch.Tensor:
    """`wanted` distinct indices out of `count`, seeded (all of them when there are fewer)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(count, generator=generator)[: min(wanted, count)]


def make_batches(images: torch.Tensor, spec: InputSpec, batch_size: int, teacher: TargetSource | None = None,
                 labels: torch.Tensor | None = None, progress: bool = False) -> list[tuple[torch.Tensor, Targets]]:
    """Model inputs and targets for uint8 `images`: teacher features/logits when `teacher` is given
    (fetched once, in order, pipelined when remote), labels only for the supervised baselines."""
    images = adapt(images, spec)
    chunks = list(images.split(batch_size))
    label_chunks = list(labels.split(batch_size)) if labels is not None else [None] * len(chunks)
    answers = teacher.stream(chunks) if teacher is not None else iter([(None, None)] * len(chunks))
    batches = []
    for chunk, chunk_labels, (features, logits) in tqdm(zip(chunks, label_chunks, answers), total=len(chunks),
                                                       desc="teacher targets", disable=not progress, leave=False):
        batches.append((normalize(chunk, spec), Targets(features, logits, chunk_labels)))
    return batches


def make_scorer(score: str, objective: Objective | None, input_shape: Sequence[int],
                prune_config=None) -> scorers.Scorer:
    """An instance of the registered scorer `score` for this run (default [prune] settings when None)."""
    from lnpt.shared.config import PruneConfig

    try:
        return scorer_class(score).create(objective, input_shape, prune_config or PruneConfig())
    except ValueError as exc:
        raise PruneError(str(exc)) from exc


def prune_student(model: ZooNet, batches: list[tuple[torch.Tensor, Targets]], prune_config,
                  objective: Objective | None, input_spec: InputSpec, progress: bool = False) -> dict[str, Any]:
    """Channel-prune (to prune.structured, or progressively to the prune.target_* budget), then
    score and mask `model` in place to prune.sparsity. Returns the density report with the
    settings and timings."""
    from lnpt.edge.pruning.budget import Budget, format_step, prune_to_budget

    cfg = prune_config
    details: dict[str, Any] = {"score": cfg.score, "target_sparsity": cfg.sparsity, "scope": cfg.scope,
                               "samples": sum(len(x) for x, _ in batches), "structured": None}
    example = torch.zeros((1, *input_spec.shape), device=next(model.parameters()).device)
    budget = Budget.from_config(cfg)
    if budget is not None:
        if cfg.structured > 0:
            raise PruneError("prune.structured (a fixed channel ratio) and a budget (prune.target_*) exclude "
                             "each other; set one of them")
        show = (lambda row: tqdm.write(format_step(row), file=sys.stderr)) if progress else (lambda row: None)
        details["structured"] = prune_to_budget(model, budget, objective, batches, input_spec, on_step=show)
    elif cfg.structured > 0:
        from lnpt.edge.pruning.structured import prune_channels

        if objective is None:
            raise PruneError("channel pruning needs an objective (teacher targets or labels)")
        started = time.perf_counter()
        details["structured"] = prune_channels(model, cfg.structured, objective, batches, example)
        details["structured"]["seconds"] = time.perf_counter() - started
    if cfg.sparsity > 0:
        scorer = make_scorer(cfg.score, objective, input_spec.shape, cfg)
        rounds = scorer.rounds(cfg)
        started = time.perf_counter()
        prune_loop(model, scorer, batches, cfg.sparsity, scope=cfg.scope, rounds=rounds,
                   min_layer_density=cfg.min_layer_density, keep_classifier_dense=cfg.keep_classifier_dense,
                   progress=progress)
        details.update(rounds=rounds, score_seconds=time.perf_counter() - started)
    return density_report(model, **details)
