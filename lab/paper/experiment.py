"""Pieces shared by the paper's experiments (`lnpt analyze learning-gap`, `lnpt analyze grid`).

One compact training loop serves every arm: the objective is injected (cross-entropy on labels for
the supervised baseline, learning gap + KD on teacher targets for the label-free arm), and so are
the targets. Everything else — student, initialisation, data order, optimizer, schedule, epochs —
is the same, so two arms differ in the objective only. The label-free arm is handed `Targets`
without labels, so it cannot read one. Augmentation is off: teacher targets are computed once per
training set and indexed, exactly like the edge's offline target cache.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from lnpt.shared.files import atomic_write
from lnpt.shared.data import adapt, load_fashion_mnist, normalize
from lnpt.shared.errors import LnptError
from lnpt.shared.inference import outputs, top1
from lnpt.shared.objectives import CrossEntropy, Objective, Targets, guided_objective, learning_gap
from lnpt.shared.optim import make_optimizer
from lnpt.shared.models import InputSpec
from lnpt.shared.zoo import ZooNet

TRAININGS = ("guided", "supervised")


class ExperimentError(LnptError, RuntimeError):
    """An experiment cannot run with what it was given; the message says what to change."""


@dataclass(frozen=True)
class Recipe:
    """How every student of one experiment is trained (identical for both arms)."""

    epochs: int
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9  # sgd only
    weight_decay: float = 5e-4
    optimizer: str = "sgd"  # sgd (Nesterov momentum) or adam


def fashion_split(train_samples: int, test_samples: int, seed: int = 0):
    """(train images, train labels, test images, test labels): a seeded random subset of the
    Fashion-MNIST training set (0 = all of it) and the first `test_samples` test images (0 = all)."""
    train_x, train_y = load_fashion_mnist(True)
    test_x, test_y = load_fashion_mnist(False)
    if train_samples and train_samples < len(train_x):
        chosen = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed))[:train_samples]
        train_x, train_y = train_x[chosen], train_y[chosen]
    if test_samples:
        test_x, test_y = test_x[:test_samples], test_y[:test_samples]
    return train_x, train_y, test_x, test_y


def ensure_teacher(path: Path, arch: str, train_samples: int, epochs: int, device: str | None,
                   seed: int = 0) -> dict[str, Any] | None:
    """Train a mature teacher into `path` with the cloud's recipe unless the file exists.
    Returns the training summary, or None when an existing file was reused."""
    if path.is_file():
        return None
    from lnpt.cloud.teacher_training import train_teacher
    from lnpt.shared.config import load_config

    print(f"no teacher at {path}: training {arch} on {train_samples or 'all'} Fashion-MNIST images "
          f"for {epochs} epoch(s) (cloud recipe: SGD, cosine, crop+flip)", file=sys.stderr, flush=True)
    config = load_config(None, [f"teacher.model={arch}", f"teacher.epochs={epochs}",
                                f"teacher.train_samples={train_samples}", f"teacher.seed={seed}"])
    summary = train_teacher(config, str(path), device=device,
                            resume=Path(str(path) + ".ckpt").exists())  # an interrupted teacher continues
    summary.pop("history", None)
    return summary


def teacher_targets(teacher, images: torch.Tensor, batch_size: int = 512) -> Targets:
    """Teacher features and logits for every image, in order, and nothing else (no labels).
    `teacher` is anything with `.targets(uint8 batch)` and `.input_spec` (shared.teacher.Teacher,
    or a pruning TeacherSource)."""
    pairs = [teacher.targets(chunk) for chunk in adapt(images, teacher.input_spec).split(batch_size)]
    return Targets(torch.cat([f for f, _ in pairs]), torch.cat([z for _, z in pairs]))


def objective_for(training: str, student_dim: int, teacher_dim: int) -> Objective:
    """The only thing that differs between the two arms."""
    if training == "guided":
        return guided_objective(student_dim=student_dim, teacher_dim=teacher_dim)
    if training == "supervised":
        return CrossEntropy()
    raise ExperimentError(f"unknown training {training!r}; choose one of {', '.join(TRAININGS)}")


def targets_for(training: str, guidance: Targets, labels: torch.Tensor) -> Targets:
    """Label-free arm: the teacher's targets only. Supervised arm: the labels only."""
    if training == "guided":
        return Targets(guidance.features, guidance.logits)
    return Targets(labels=labels)


def take(targets: Targets, index: torch.Tensor) -> Targets:
    pick = lambda t: None if t is None else t[index]  # noqa: E731
    return Targets(pick(targets.features), pick(targets.logits), pick(targets.labels))


def train(model: ZooNet, spec: InputSpec, images: torch.Tensor, targets: Targets, objective: Objective,
          recipe: Recipe, *, seed: int, device: torch.device | str = "cpu",
          on_epoch: Callable[[int, float], None] | None = None) -> list[float]:
    """Train `model` on uint8 `images` against `targets` (one row per image) minimising `objective`:
    SGD with Nesterov momentum or Adam, cosine schedule over all steps, the batch order seeded by `seed`.
    Masks applied with torch.nn.utils.prune stay fixed. Returns the mean loss of each epoch."""
    device = torch.device(device)
    model.to(device)
    objective.to(device)
    inputs = normalize(adapt(images, spec), spec).to(device)
    targets = targets.to(device)
    steps_per_epoch = math.ceil(len(images) / recipe.batch_size)
    optimizer, schedule = make_optimizer([*model.parameters(), *objective.parameters()], recipe.optimizer,
                                         lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                                         total_steps=recipe.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(1, recipe.epochs + 1):
        model.train()
        total = 0.0
        for index in torch.randperm(len(images), generator=generator).split(recipe.batch_size):
            index = index.to(device)
            loss = objective(model, inputs[index], take(targets, index))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise ExperimentError(f"training diverged (loss {value}) in epoch {epoch}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += value * len(index)
        losses.append(total / len(images))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return losses


@torch.inference_mode()
def measure(model: ZooNet, spec: InputSpec, images: torch.Tensor, labels: torch.Tensor,
            teacher_test: Targets | None = None, batch_size: int = 1000) -> dict[str, float]:
    """Test accuracy, and with the teacher's test targets the learning gap (mse) and agreement."""
    features, logits = outputs(model, images, spec, batch_size)
    result = {"accuracy": top1(logits, labels)}
    if teacher_test is not None:
        if features.shape == teacher_test.features.shape:
            result["learning_gap"] = float(learning_gap(features, teacher_test.features, "mse"))
        result["teacher_agreement"] = top1(logits, teacher_test.logits)
        result["cka_gap"] = 1.0 - linear_cka(features, teacher_test.features)
    return result


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear centred kernel alignment of two feature batches (N, D1), (N, D2) (Kornblith et al. 2019):
    1 for representations equal up to rotation and scale. Unlike the mse gap it does not need the
    two networks' neurons in the same order, so it also compares independently trained networks."""
    x = (x - x.mean(0)).double()
    y = (y - y.mean(0)).double()
    cross = (x.T @ y).pow(2).sum()
    norms = (x.T @ x).norm() * (y.T @ y).norm()
    return float(cross / norms) if norms > 0 else 0.0


def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    import numpy as np

    def ranks(values) -> np.ndarray:
        values = np.asarray(values, dtype=float)
        order = np.argsort(values, kind="mergesort")
        sorted_values = values[order]
        rank = np.empty(len(values))
        start = 0
        while start < len(values):  # tied runs share the mean of their positions
            end = start
            while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
                end += 1
            rank[order[start:end + 1]] = (start + end) / 2 + 1
            start = end + 1
        return rank

    if len(x) != len(y) or len(x) < 2:
        raise ExperimentError(f"spearman needs two sequences of equal length >= 2, got {len(x)} and {len(y)}")
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else math.nan


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1, default=str, allow_nan=True)
    atomic_write(path, lambda f: f.write(text.encode()))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    return asdict(recipe)
