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
from lnpt.shared.objectives import CrossEntropy, LearningGap, Objective, Targets, guided_objective, learning_gap
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
    # Optimizer steps in all; 0 = epochs x batches. A label-scarce arm (few images) sets it so that it
    # trains as long as the arms on all images, cycling over its few images.
    steps: int = 0


def label_fraction(training: str) -> float:
    """The share of the training images that carry labels in an arm: "supervised@0.01" -> 0.01;
    "supervised" -> 1.0; the label-free arm "guided" -> 0.0 (it reads no label)."""
    name, _, share = training.partition("@")
    if name not in TRAININGS or (share and name != "supervised"):
        raise ExperimentError(f"unknown training {training!r}; choose guided, supervised or supervised@FRACTION")
    if name == "guided":
        return 0.0
    try:
        fraction = float(share) if share else 1.0
    except ValueError:
        raise ExperimentError(f"training {training!r}: the label fraction after @ must be a number") from None
    if not 0 < fraction <= 1:
        raise ExperimentError(f"training {training!r}: the label fraction must lie in (0, 1]")
    return fraction


def labeled_subset(labels: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """Indices of a seeded, class-balanced `fraction` of the images (all of them for 1.0)."""
    if fraction >= 1:
        return torch.arange(len(labels))
    from lnpt.shared.labeled import stratified_pick

    return torch.from_numpy(stratified_pick(labels.numpy(), fraction, seed))


def fashion_split(train_samples: int, test_samples: int, seed: int = 0):
    """(train images, train labels, test images, test labels): a seeded random subset of the
    Fashion-MNIST training set (0 = all of it) and the first `test_samples` test images (0 = all)."""
    return subsets(*load_fashion_mnist(True), *load_fashion_mnist(False), train_samples, test_samples, seed)


def load_split(teacher, train_samples: int, test_samples: int, data: str | Path | None = None,
               test_data: str | Path | None = None, seed: int = 0):
    """(train images, train labels, test images, test labels) as uint8 at the teacher's input size.
    Fashion-MNIST by default; or the user's labeled folders or CSV files (`data` for training, `test_data`
    held out), decoded with the teacher's own preprocessing and labeled in its class order. A seeded subset
    of `train_samples` training images (0 = all) and the first `test_samples` test images (0 = all)."""
    if data is None and test_data is None:
        return fashion_split(train_samples, test_samples, seed)
    if data is None or test_data is None:
        raise ExperimentError("own data needs both a training set (--data) and a held-out test set (--test-data)")
    from lnpt.edge.evaluation import labeled_folder

    record = teacher.record
    return subsets(*labeled_folder(data, record.preprocess, record.class_names),
                   *labeled_folder(test_data, record.preprocess, record.class_names), train_samples, test_samples, seed)


def subsets(train_x, train_y, test_x, test_y, train_samples: int, test_samples: int, seed: int):
    """A seeded random `train_samples` of the training images (0 = all), the first `test_samples` test images."""
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


def objective_for(training: str, student_dim: int, teacher_dim: int, settings=None) -> Objective:
    """The only thing that differs between the arms: the guided objective (its terms from `settings`, an
    ObjectiveConfig; the defaults when None) or cross-entropy on labels for every supervised arm."""
    if label_fraction(training) == 0.0:
        from lnpt.shared.config import ObjectiveConfig

        s = settings or ObjectiveConfig()
        return guided_objective(s.gap, s.lambda_kd, s.temperature, student_dim, teacher_dim,
                                lambda_gap=s.lambda_gap, projector=s.projector)
    return CrossEntropy()


def targets_for(training: str, guidance: Targets, labels: torch.Tensor) -> Targets:
    """Label-free arm: the teacher's targets only. Supervised arm: the labels only."""
    if label_fraction(training) == 0.0:
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
    total_steps = recipe.steps or recipe.epochs * steps_per_epoch
    optimizer, schedule = make_optimizer([*model.parameters(), *objective.parameters()], recipe.optimizer,
                                         lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                                         total_steps=total_steps)
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for epoch in range(1, math.ceil(total_steps / steps_per_epoch) + 1):
        model.train()
        total = 0.0
        left = total_steps - (epoch - 1) * steps_per_epoch  # the last pass may stop part way
        for index in torch.randperm(len(images), generator=generator).split(recipe.batch_size)[:left]:
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
        losses.append(total / min(len(images), left * recipe.batch_size))
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return losses


@torch.inference_mode()
def measure(model: ZooNet, spec: InputSpec, images: torch.Tensor, labels: torch.Tensor,
            teacher_test: Targets | None = None, batch_size: int = 1000) -> dict[str, float]:
    """Test accuracy, and with the teacher's test targets: agreement, 1 - CKA, the mse learning gap (equal
    widths only) and the normalized gap (through the fixed seeded projector when the widths differ, the
    same map for every run), which every student of every arm has."""
    features, logits = outputs(model, images, spec, batch_size)
    result = {"accuracy": top1(logits, labels)}
    if teacher_test is not None:
        if features.shape == teacher_test.features.shape:
            result["learning_gap"] = float(learning_gap(features, teacher_test.features, "mse"))
        gap = LearningGap("normalized", features.shape[1], teacher_test.features.shape[1], "fixed")
        result["learning_gap_normalized"] = float(gap.loss(features, None, teacher_test))
        result["teacher_agreement"] = top1(logits, teacher_test.logits)
        result["cka_gap"] = 1.0 - linear_cka(features, teacher_test.features)
    return result


def effective_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The floating-point state as the model computes with it: a pruned weight is its orig x mask."""
    state = model.state_dict()
    weights = {}
    for name, value in state.items():
        if name.endswith("_mask") or not value.is_floating_point():
            continue
        if name.endswith("_orig"):
            name = name.removesuffix("_orig")
            value = value * state[f"{name}_mask"]
        weights[name] = value.detach().cpu().clone()
    return weights


def weight_distance(model: torch.nn.Module, reference: dict[str, torch.Tensor]) -> float | None:
    """||theta - theta_ref|| over all effective weights; None unless both have exactly the same tensors
    (another architecture, or fewer channels: no distance to that teacher; a shared `head.bias` alone
    must not count as one)."""
    weights = effective_weights(model)
    if weights.keys() != reference.keys() or any(reference[n].shape != v.shape for n, v in weights.items()):
        return None
    return math.sqrt(sum(float((weights[n] - reference[n]).double().pow(2).sum()) for n in weights))


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
