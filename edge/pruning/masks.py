"""From scores to masks: global or per-layer top-k, a per-layer floor, an optional dense classifier.

Masks are computed here (exact top-k counts, so the achieved sparsity equals the target up to what
the floor forces) and attached with `torch.nn.utils.prune.custom_from_mask` through
`edge.student.apply_masks`; pruned weights then stay exactly zero through training, and
`edge.student.make_permanent` (`prune.remove`) bakes them in before saving or export.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn
from tqdm import tqdm

from lnpt.edge.student import apply_masks, current_masks, prunable_modules
from lnpt.edge.pruning.scorers import Batches, Scorer
from lnpt.shared.errors import LnptError

SCOPES = ("global", "local")


class PruneError(LnptError, ValueError):
    """Pruning settings that cannot be satisfied; the message says which and why."""


def floor_count(numel: int, min_density: float) -> int:
    """Weights a layer keeps at least: ceil(min_density * numel), and at least one when > 0."""
    return min(numel, max(1 if min_density > 0 else 0, math.ceil(min_density * numel)))


def select_masks(scores: dict[str, torch.Tensor], sparsity: float, scope: str = "global",
                 min_layer_density: float = 0.0, dense: Iterable[str] = ()) -> dict[str, torch.Tensor]:
    """Boolean keep-masks from scores (higher = keep).

    global: keep the top (1 - sparsity) of all weights together; each layer first keeps its own
    top `floor_count` and every weight of a `dense` layer is kept, and those count towards the
    budget, so the overall sparsity is exact unless the forced weights alone exceed the budget.
    local: each layer keeps its own top (1 - sparsity), at least its floor; `dense` layers keep all.
    """
    if not 0 <= sparsity < 1:
        raise PruneError(f"sparsity must be in [0, 1), got {sparsity}")
    if scope not in SCOPES:
        raise PruneError(f"unknown scope {scope!r}; choose global or local")
    dense = set(dense)
    unknown = dense - set(scores)
    if unknown:
        raise PruneError(f"dense layers not among the scored layers: {sorted(unknown)}")
    names = list(scores)
    flat = {name: scores[name].detach().flatten().double().cpu() for name in names}
    forced = {}
    for name in names:
        n = flat[name].numel()
        keep = n if name in dense else (floor_count(n, min_layer_density) if scope == "global"
                                        else max(floor_count(n, min_layer_density), round((1 - sparsity) * n)))
        forced[name] = torch.zeros(n, dtype=torch.bool)
        forced[name][top_indices(flat[name], keep)] = True
    if scope == "global":
        total = sum(t.numel() for t in flat.values())
        budget = round((1 - sparsity) * total) - sum(int(f.sum()) for f in forced.values())
        if budget > 0:
            rest = torch.cat([flat[n].masked_fill(forced[n], -math.inf) for n in names])
            chosen = torch.zeros(total, dtype=torch.bool)
            chosen[top_indices(rest, budget)] = True
            offset = 0
            for n in names:
                forced[n] |= chosen[offset: offset + flat[n].numel()]
                offset += flat[n].numel()
    return {n: forced[n].view_as(scores[n]) for n in names}


def top_indices(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest values; NaN counts as the lowest score; ties broken by index."""
    if k <= 0:
        return torch.empty(0, dtype=torch.long)
    values = torch.nan_to_num(values, nan=-math.inf)
    return torch.topk(values, min(k, values.numel()), sorted=False).indices


def prune_loop(model: nn.Module, scorer: Scorer, batches: Batches, sparsity: float, *, scope: str = "global",
               rounds: int = 1, min_layer_density: float = 0.0, keep_classifier_dense: bool = False,
               classifier: str = "head", progress: bool = False) -> dict[str, torch.Tensor]:
    """Score, mask, repeat: round r of R keeps density (1 - sparsity) ** (r / R) (Synaptic-Flow's
    exponential schedule; one round = one-shot). Leaves the final masks applied to `model`
    (`torch.nn.utils.prune`) and returns them."""
    if rounds < 1:
        raise PruneError(f"rounds must be at least 1, got {rounds}")
    modules = prunable_modules(model)
    dense = [classifier] if keep_classifier_dense else []
    if keep_classifier_dense and classifier not in modules:
        raise PruneError(f"keep_classifier_dense: the model has no prunable layer named {classifier!r}")
    density = 1.0 - sparsity
    masks = {}
    for r in tqdm(range(1, rounds + 1), desc=f"{scorer.name} rounds", disable=not progress or rounds == 1,
                  leave=False):
        scores = scorer.score(model, batches)
        alive = current_masks(model)
        # Weights pruned in an earlier round stay pruned, whatever their new score.
        scores = {n: s.masked_fill(~alive[n], -math.inf) if n in alive else s for n, s in scores.items()}
        masks = select_masks(scores, 1.0 - density ** (r / rounds), scope, min_layer_density, dense)
        apply_masks(model, masks)
    return masks
