"""Channel pruning with Torch-Pruning, driven by the label-free objective (beyond the paper).

Taylor importance (|w * dL/dw| summed over each coupled channel group, Molchanov et al. 2019) is
computed from the gradients of the same objective as the LNPT score; Torch-Pruning's dependency
graph then removes whole channels, so the network gets physically smaller and faster, which is
what speeds up ONNX Runtime (unstructured zeros do not). The channels that make up the
penultimate features are left alone, so the student still yields features of the teacher's width.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lnpt.edge.pruning.scorers import Batches, model_device
from lnpt.shared.objectives import Objective
from lnpt.shared.zoo import ZooNet


def count_macs_and_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def feature_producers(model: ZooNet, example: torch.Tensor) -> list[nn.Module]:
    """The layers whose output channels become the penultimate features: everything coupled to the
    head's input (in a ResNet, the whole last stage's residual width)."""
    import torch_pruning as tp

    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    group = graph.get_pruning_group(model.head, tp.prune_linear_in_channels,
                                    idxs=list(range(model.head.in_features)))
    return [dep.target.module for dep, _ in group
            if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Module)]


def prune_channels(model: ZooNet, ratio: float, objective: Objective, batches: Batches,
                   example: torch.Tensor) -> dict[str, Any]:
    """Remove `ratio` of the channels of every prunable group in place (Torch-Pruning MetaPruner,
    GroupTaylorImportance from the objective's gradients); the head and the feature width stay.
    Batch-norm statistics are restored after the gradient pass, so only the widths change.
    Returns MACs and parameters before and after, for one `example` input."""
    import torch_pruning as tp

    if not 0 < ratio < 1:
        raise ValueError(f"channel pruning ratio must be in (0, 1), got {ratio}")
    example = example.to(model_device(model))
    macs_before, params_before = count_macs_and_params(model, example)
    ignored = [model.head, *feature_producers(model, example)]
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupTaylorImportance(),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    was_training = model.training
    model.train().zero_grad(set_to_none=True)
    objective = objective.to(model_device(model))
    for inputs, targets in batches:
        objective(model, inputs.to(model_device(model)), targets).backward()
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(buffers[name])
    pruner.step()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    macs_after, params_after = count_macs_and_params(model, example)
    return {"ratio": ratio, "macs_before": macs_before, "macs_after": macs_after,
            "params_before": params_before, "params_after": params_after}
