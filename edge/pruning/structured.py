"""Channel pruning with Torch-Pruning, driven by the label-free objective (beyond the paper).

Taylor importance (|w * dL/dw| summed over each coupled channel group, Molchanov et al. 2019) is
computed from the gradients of the same objective as the LNPT score; Torch-Pruning's dependency
graph then removes whole channels, so the network gets physically smaller and faster, which is
what speeds up ONNX Runtime (unstructured zeros do not). The channels that make up the
penultimate features are left alone, so the student still yields features of the teacher's width.
L1 magnitude and random channel importance are the data-free baselines.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lnpt.edge.pruning.scorers import Batches, model_device
from lnpt.shared.objectives import Objective
from lnpt.shared.models import Classifier

# Torch-Pruning's criterion per name; only taylor reads gradients (of the objective).
CHANNEL_IMPORTANCES = ("taylor", "magnitude", "random")


def count_macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def feature_producers(model: Classifier, example: torch.Tensor) -> list[nn.Module]:
    """The layers whose output channels become the penultimate features: everything coupled to the
    head's input (in a ResNet, the whole last stage's residual width)."""
    import torch_pruning as tp

    if model.head is None:
        raise ValueError(f"channel pruning keeps the input width of the final Linear, and {model.spec} has "
                         "none (its features come from --feature-node); use unstructured pruning")
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    except Exception as exc:  # tracing failures surface as arbitrary types from deep inside Torch-Pruning
        raise ValueError(f"Torch-Pruning {tp.__version__} cannot trace the channel dependencies of {model.spec} "
                         f"({type(exc).__name__}: {exc}); use unstructured pruning (prune.structured = 0)") from exc
    group = graph.get_pruning_group(model.head, tp.prune_linear_in_channels,
                                    idxs=list(range(model.head.in_features)))
    return [dep.target.module for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Module)]


def kept_width_layers(model: Classifier, example: torch.Tensor) -> list[nn.Module]:
    """The layers whose output width channel pruning leaves alone: the head and the feature producers."""
    return [model.head, *feature_producers(model, example)]


def channel_pruner(model: Classifier, example: torch.Tensor, ratio: float, importance: str = "taylor",
                   steps: int = 1):
    """A Torch-Pruning MetaPruner removing `ratio` of every prunable group's channels in `steps`
    equal steps (each `step()` prunes to the next fraction of the original widths)."""
    import torch_pruning as tp

    criteria = {"taylor": tp.importance.GroupTaylorImportance,
                "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=1),
                "random": tp.importance.RandomImportance}
    if importance not in criteria:
        raise ValueError(f"unknown channel importance {importance!r}; choose one of {', '.join(CHANNEL_IMPORTANCES)}")
    return tp.pruner.MetaPruner(model, example, importance=criteria[importance](), pruning_ratio=ratio,
                                iterative_steps=steps, ignored_layers=kept_width_layers(model, example))


def taylor_gradients(model: Classifier, objective: Objective, batches: Batches) -> None:
    """Accumulate the objective's gradients over `batches` (what Taylor importance reads), in train
    mode; batch-norm statistics are restored afterwards, so only the widths change when pruning."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train().zero_grad(set_to_none=True)
    objective = objective.to(model_device(model))
    for inputs, targets in batches:
        objective(model, inputs.to(model_device(model)), targets).backward()
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    model.train(was_training)


def prune_channels(model: Classifier, ratio: float, objective: Objective | None, batches: Batches,
                   example: torch.Tensor, importance: str = "taylor", seed: int = 0) -> dict[str, Any]:
    """Remove `ratio` of the channels of every prunable group in place (Torch-Pruning MetaPruner;
    `importance` taylor: GroupTaylorImportance from the objective's gradients, magnitude: L1 norm,
    random: seeded); the head and the feature width stay.
    Returns MACs and parameters before and after, for one `example` input."""
    if not 0 < ratio < 1:
        raise ValueError(f"channel pruning ratio must be in (0, 1), got {ratio}")
    example = example.to(model_device(model))
    macs_before, params_before = count_macs_and_params(model, example)
    pruner = channel_pruner(model, example, ratio, importance)
    if importance == "taylor":
        if objective is None:
            raise ValueError("taylor channel importance needs an objective")
        taylor_gradients(model, objective, batches)
    with torch.random.fork_rng():  # random importance draws from torch's generator
        torch.manual_seed(seed)
        pruner.step()
    model.zero_grad(set_to_none=True)
    macs_after, params_after = count_macs_and_params(model, example)
    return {"ratio": ratio, "importance": importance, "macs_before": macs_before, "macs_after": macs_after,
            "params_before": params_before, "params_after": params_after}
