"""The optimizers lnpt trains with, in one registry, and the cosine schedule over all steps.

Teacher training, guided training on the device, the paper's experiments and the benchmarks all
build their optimizer here, so "SGD" means the same thing (Nesterov momentum when momentum > 0)
everywhere.

    >>> import torch
    >>> net = torch.nn.Linear(4, 2)
    >>> optimizer, schedule = make_optimizer(net.parameters(), "adam", lr=5e-3, total_steps=100)
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from lnpt.shared.errors import LnptError

Params = Iterable[torch.nn.Parameter]


def _sgd(params: Params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)


def _adam(params: Params, lr: float, momentum: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)  # momentum: Adam's own betas


OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {"sgd": _sgd, "adam": _adam}
SCHEDULES = ("cosine", "constant")


def make_optimizer(params: Params, name: str, *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                   schedule: str = "cosine", total_steps: int = 1
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    """The optimizer `name` over `params` and its learning-rate schedule (None when constant):
    cosine annealing from `lr` to 0 over `total_steps` optimizer steps."""
    if name not in OPTIMIZERS:
        raise LnptError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    if schedule not in SCHEDULES:
        raise LnptError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    optimizer = OPTIMIZERS[name](params, lr, momentum, weight_decay)
    if schedule == "constant":
        return optimizer, None
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
