"""Pruning scores, one small class each behind one interface (after Synaptic-Flow's pruners).

`scorer.score(model, batches)` returns `{layer name: score tensor shaped like its weight}` for every
prunable layer (`edge.student.prunable_modules`); higher means keep. `batches` is a sequence of
`(float input on any device, Targets)`. Scorers work on a copy of the model: the student's weights,
masks and batch-norm statistics are never touched. Weights already masked count as zero, so an
iterative loop (SynFlow) scores only what is still alive.

The objective is injected: SNIP with the learning-gap objective *is* the LNPT score; SNIP and GraSP
with cross-entropy are the supervised baselines.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from lnpt.edge.student import make_permanent, prunable_modules
from lnpt.shared.objectives import Objective, Targets

Batches = Sequence[tuple[torch.Tensor, Targets]]


def working_copy(model: nn.Module) -> nn.Module:
    """A deep copy with masks baked in as plain zero weights and gradients cleared."""
    # A masked layer's `weight` is computed (weight_orig * weight_mask), which deepcopy refuses;
    # hand deepcopy a detached stand-in (prune.remove recomputes it in the copy anyway).
    memo = {id(m.weight): m.weight.detach().clone() for m in prunable_modules(model).values()
            if hasattr(m, "weight_mask")}
    work = make_permanent(copy.deepcopy(model, memo))
    work.zero_grad(set_to_none=True)
    return work


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: module.weight for name, module in prunable_modules(model).items()}


def sensitivity(w: torch.Tensor) -> torch.Tensor:
    """w * dL/dw on CPU; a layer the objective never reaches (grad None) scores zero."""
    grad = w.grad if w.grad is not None else torch.zeros_like(w)
    return (grad * w).detach().cpu()


SCORERS: dict[str, type["Scorer"]] = {}  # the registry: score name -> scorer class


def register_scorer(cls: type["Scorer"]) -> type["Scorer"]:
    """Class decorator adding a scorer to SCORERS under its `name`."""
    SCORERS[cls.name] = cls
    return cls


class Scorer:
    """Base class. Each subclass states its facts, which config checks, the CLI, the grid and the
    docs read from the registry instead of keeping their own lists:

    - `objective`: the objective it scores with by default: "learning-gap" (label-free, needs the
      teacher), "cross-entropy" (needs labels) or None (data-free: never reads the batches);
    - `iterative`: scored over rounds with an exponential sparsity schedule by default;
    - `summary`: one line for help texts.
    """

    name = ""
    summary = ""
    objective: str | None = "learning-gap"
    iterative = False

    @property
    def needs_data(self) -> bool:
        return self.objective is not None

    @classmethod
    def rounds(cls, prune_config) -> int:
        """Scoring rounds of the exponential schedule (`masks.prune_loop`); 1 = one shot."""
        return 1

    @classmethod
    def create(cls, objective: Objective | None, input_shape: Sequence[int], prune_config) -> "Scorer":
        """An instance for one pruning run ([prune] config, the student's input shape)."""
        return cls()

    def score(self, model: nn.Module, batches: Batches) -> dict[str, torch.Tensor]:
        raise NotImplementedError


@register_scorer
class Magnitude(Scorer):
    """|w|: the classic baseline, data-free."""

    name, objective, summary = "magnitude", None, "|w|, data-free baseline"

    def score(self, model, batches=()):
        return {name: w.detach().abs().cpu() for name, w in weights(working_copy(model)).items()}


@register_scorer
class Random(Scorer):
    """Uniform random scores (seeded): what any score must beat."""

    name, objective, summary = "random", None, "seeded random scores, what any score must beat"

    def __init__(self, seed: int = 0):
        self.seed = seed

    @classmethod
    def create(cls, objective, input_shape, prune_config):
        return cls(prune_config.seed)

    def score(self, model, batches=()):
        generator = torch.Generator().manual_seed(self.seed)
        scores = {}
        for name, w in weights(working_copy(model)).items():
            scores[name] = torch.rand(w.shape, generator=generator) * (w.detach().cpu() != 0)
        return scores


class GradientScorer(Scorer):
    """A score from gradients of an injected objective over the batches (SNIP, LNPT, GraSP)."""

    def __init__(self, objective: Objective):
        self.objective = objective

    @classmethod
    def create(cls, objective, input_shape, prune_config):
        if objective is None:
            raise ValueError(f"the {cls.name} score needs an objective")
        return cls(objective)


@register_scorer
class SNIP(GradientScorer):
    """Connection sensitivity |w * dL/dw| (Lee et al. 2019) with gradients of `objective`
    accumulated over all batches, model in train mode (as at the start of training)."""

    name, objective, summary = "snip", "cross-entropy", "SNIP connection sensitivity (supervised baseline)"

    def score(self, model, batches):
        work = working_copy(model).train()
        objective = self.objective.to(model_device(work))
        for inputs, targets in batches:
            objective(work, inputs.to(model_device(work)), targets).backward()
        return {name: sensitivity(w).abs() for name, w in weights(work).items()}


@register_scorer
class LNPT(SNIP):
    """The LNPT score: SNIP of the label-free objective LG + lambda_kd * KD (method.md). The KD
    term is what gives the final classifier non-zero scores (LG alone never reaches it)."""

    name, objective, summary = "lnpt", "learning-gap", "LNPT: sensitivity of the label-free learning gap + KD"

    def __init__(self, objective: Objective):
        if not objective.needs_teacher:
            raise ValueError("the LNPT score needs the label-free (teacher-guided) objective")
        super().__init__(objective)


@register_scorer
class ProgressiveLNPT(LNPT):
    """The LNPT sensitivity recomputed over `prune.progressive_rounds` rounds with an exponential
    sparsity schedule (as SynFlow iterates, and as the same authors' TED prunes progressively):
    each round scores the student with the weights pruned so far removed, so the gradient flow a
    weight carries is measured in the network that will actually be trained."""

    name, iterative = "lnpt-progressive", True
    summary = "LNPT recomputed over rounds with an exponential sparsity schedule"

    @classmethod
    def rounds(cls, prune_config) -> int:
        return prune_config.progressive_rounds


@register_scorer
class GraSP(GradientScorer):
    """Gradient Signal Preservation (Wang et al. 2020): score = w * (H g), H the Hessian and g the
    gradient of the objective over all batches, normalised by |sum of scores| as in Synaptic-Flow.
    Keeping the highest scores removes the weights whose removal reduces gradient flow least."""

    name, objective, summary = "grasp", "cross-entropy", "GraSP gradient-flow preservation (supervised baseline)"

    def score(self, model, batches):
        work = working_copy(model).train()
        device = model_device(work)
        objective = self.objective.to(device)
        params = list(weights(work).values())
        stopped = [torch.zeros_like(p) for p in params]
        for inputs, targets in batches:  # g, without a graph
            grads = torch.autograd.grad(objective(work, inputs.to(device), targets), params, allow_unused=True,
                                        materialize_grads=True)
            stopped = [s + g for s, g in zip(stopped, grads)]
        for inputs, targets in batches:  # d(g . grad L)/dw = H g, by double backward
            grads = torch.autograd.grad(objective(work, inputs.to(device), targets), params, create_graph=True,
                                        allow_unused=True)
            flow = sum((s * g).sum() for s, g in zip(stopped, grads) if g is not None)
            if flow.requires_grad:
                flow.backward()
        scores = {name: sensitivity(w) for name, w in weights(work).items()}
        norm = torch.cat([s.flatten() for s in scores.values()]).sum().abs() + 1e-10  # an all-zero score stays finite
        return {name: s / norm for name, s in scores.items()}


@register_scorer
class SynFlow(Scorer):
    """Iterative Synaptic Flow (Tanaka et al. 2020), data-free: with all parameters and buffers
    replaced by their absolute values, score = |w * dR/dw| where R = sum of the network's output
    on an all-ones input. Run it in rounds with an exponential schedule (`masks.prune_loop`).
    float64 keeps the products of many layers from overflowing or flushing to zero."""

    name, objective, iterative = "synflow", None, True
    summary = "iterative Synaptic Flow, data-free"

    def __init__(self, input_shape: Sequence[int], float64: bool = False):
        self.input_shape = tuple(input_shape)
        self.dtype = torch.float64 if float64 else torch.float32

    @classmethod
    def create(cls, objective, input_shape, prune_config):
        return cls(input_shape, prune_config.synflow_float64)

    @classmethod
    def rounds(cls, prune_config) -> int:
        return prune_config.synflow_rounds

    def score(self, model, batches=()):
        work = working_copy(model).to(self.dtype).eval()  # eval: batch norm uses its (abs) statistics
        with torch.no_grad():
            for tensor in work.state_dict().values():
                if tensor.is_floating_point():
                    tensor.abs_()
        ones = torch.ones((1, *self.input_shape), dtype=self.dtype, device=model_device(work))
        work(ones).sum().backward()
        return {name: sensitivity(w).abs() for name, w in weights(work).items()}
