"""Training and pruning objectives: `objective(model, batch, targets) -> scalar loss`.

The label-free objective of LNPT compares the student's penultimate features with the teacher's
(the learning gap, LG) and adds a logit distillation term (KD):

    loss = LG(phi_S, phi_T) + lambda_kd * tau^2 * KL(softmax(z_T / tau) || softmax(z_S / tau))

Cross-entropy on labels is here too, for the supervised baselines. Every objective runs the
student once (`model.features_and_logits`) and is differentiable, so the same object serves
pruning scores (one backward at initialisation) and guided training (one backward per batch).
Objectives are `nn.Module`s because the learning gap may own a projector (trainable, moves with
`.to(device)`, and its parameters must reach the optimizer: `objective.parameters()`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lnpt.shared.config import ObjectiveConfig
from lnpt.shared.errors import LnptError

GAP_KINDS = ("mse", "cosine", "normalized")
# How a student's features reach the teacher's width when the two differ: a linear map trained with the
# student ("learned"), or a fixed seeded random one ("fixed": the gap cannot be closed by the map alone).
PROJECTORS = ("learned", "fixed")


class ObjectiveError(LnptError, ValueError):
    """An objective was asked for something its targets or settings cannot give."""


@dataclass
class Targets:
    """What the teacher (or the labels) says about one batch; any field may be absent."""

    features: torch.Tensor | None = None  # (N, teacher feature width) penultimate features
    logits: torch.Tensor | None = None  # (N, classes)
    labels: torch.Tensor | None = None  # (N,) int64, supervised baselines only

    def __post_init__(self) -> None:
        # Targets computed under torch.inference_mode (shared.teacher) cannot enter autograd; copy once.
        for name in ("features", "logits", "labels"):
            tensor = getattr(self, name)
            if tensor is not None and tensor.is_inference():
                setattr(self, name, tensor.clone())

    def to(self, device: torch.device | str) -> "Targets":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Targets(move(self.features), move(self.logits), move(self.labels))

    def __len__(self) -> int:
        for tensor in (self.features, self.logits, self.labels):
            if tensor is not None:
                return len(tensor)
        return 0


def learning_gap(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Distance between feature batches (N, D): `mse` (squared L2 averaged over batch and width),
    `cosine` (mean of 1 - cosine similarity), `normalized` (MSE of L2-normalised features)."""
    if student.shape != teacher.shape:
        raise ObjectiveError(f"student features {tuple(student.shape)} and teacher features "
                             f"{tuple(teacher.shape)} differ; use a projector when widths differ")
    teacher = teacher.to(student.dtype)
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        return (1 - F.cosine_similarity(student, teacher, dim=1)).mean()
    if kind == "normalized":
        return F.mse_loss(F.normalize(student, dim=1), F.normalize(teacher, dim=1))
    raise ObjectiveError(f"unknown learning-gap kind {kind!r}; choose one of {', '.join(GAP_KINDS)}")


def logit_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """tau^2 * KL(softmax(z_T/tau) || softmax(z_S/tau)), averaged over the batch (Hinton et al.);
    the tau^2 keeps its gradient scale independent of the temperature."""
    tau = float(temperature)
    log_p_student = F.log_softmax(student_logits / tau, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.to(student_logits.dtype) / tau, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * tau * tau


class Objective(nn.Module):
    """Base: run the student once, then `loss(features, logits, targets)`."""

    def forward(self, model: nn.Module, batch: torch.Tensor, targets: Targets) -> torch.Tensor:
        features, logits = model.features_and_logits(batch)
        return self.loss(features, logits, targets.to(features.device))

    def loss(self, features: torch.Tensor, logits: torch.Tensor, targets: Targets) -> torch.Tensor:
        raise NotImplementedError

    @property
    def needs_teacher(self) -> bool:
        """True when the targets must come from the teacher (features/logits), not from labels."""
        return True


class LearningGap(Objective):
    """LG between student and teacher features; a linear projector maps the student's width to
    the teacher's when they differ (a smaller student, or channel pruning of the last block)."""

    def __init__(self, kind: str = "mse", student_dim: int | None = None, teacher_dim: int | None = None,
                 projector: str = "learned"):
        super().__init__()
        if kind not in GAP_KINDS:
            raise ObjectiveError(f"unknown learning-gap kind {kind!r}; choose one of {', '.join(GAP_KINDS)}")
        if projector not in PROJECTORS:
            raise ObjectiveError(f"unknown projector {projector!r}; choose one of {', '.join(PROJECTORS)}")
        self.kind = kind
        needs_projector = student_dim is not None and teacher_dim is not None and student_dim != teacher_dim
        self.projector = nn.Linear(student_dim, teacher_dim, bias=False) if needs_projector else None
        if self.projector is not None and projector == "fixed":
            # Seeded, so every run (and the pruning score) compares through the same map; frozen.
            generator = torch.Generator().manual_seed(0)
            weight = torch.randn(teacher_dim, student_dim, generator=generator) / student_dim ** 0.5
            self.projector.weight = nn.Parameter(weight, requires_grad=False)

    def loss(self, features, logits, targets):
        if targets.features is None:
            raise ObjectiveError("the learning gap needs teacher features in the targets")
        if self.projector is not None:
            features = self.projector(features)
        return learning_gap(features, targets.features, self.kind)


class LogitKD(Objective):
    def __init__(self, temperature: float = 4.0):
        super().__init__()
        if temperature <= 0:
            raise ObjectiveError(f"KD temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def loss(self, features, logits, targets):
        if targets.logits is None:
            raise ObjectiveError("logit distillation needs teacher logits in the targets")
        return logit_kd(logits, targets.logits, self.temperature)


class CrossEntropy(Objective):
    """Supervised baseline: cross-entropy on labels (never used by the label-free method)."""

    def loss(self, features, logits, targets):
        if targets.labels is None:
            raise ObjectiveError("cross-entropy needs labels; the label-free objectives do not")
        return F.cross_entropy(logits, targets.labels)

    @property
    def needs_teacher(self) -> bool:
        return False


class WeightedSum(Objective):
    """sum_i weight_i * term_i, with one student forward shared by all terms; zero weights are dropped."""

    def __init__(self, terms: Sequence[tuple[float, Objective]]):
        super().__init__()
        kept = [(float(w), term) for w, term in terms if w != 0]
        if not kept:
            raise ObjectiveError("a weighted sum of objectives needs at least one non-zero weight")
        self.weights = [w for w, _ in kept]
        self.terms = nn.ModuleList([term for _, term in kept])

    def loss(self, features, logits, targets):
        return sum(w * term.loss(features, logits, targets) for w, term in zip(self.weights, self.terms))

    @property
    def needs_teacher(self) -> bool:
        return any(term.needs_teacher for term in self.terms)


DEFAULTS = ObjectiveConfig()  # the one source of the objective's defaults: [objective]


def guided_objective(gap: str = DEFAULTS.gap, lambda_kd: float = DEFAULTS.lambda_kd,
                     temperature: float = DEFAULTS.temperature, student_dim: int | None = None,
                     teacher_dim: int | None = None, *, lambda_gap: float = DEFAULTS.lambda_gap,
                     projector: str = DEFAULTS.projector) -> Objective:
    """lambda_gap * LG + lambda_kd * KD, the label-free objective for the LNPT score and for guided
    training (lambda_gap = 0: KD only; lambda_kd = 0: the learning gap only). The defaults are
    [objective]'s (ObjectiveConfig), chosen on a validation split."""
    return WeightedSum([(lambda_gap, LearningGap(gap, student_dim, teacher_dim, projector)),
                        (lambda_kd, LogitKD(temperature))])


def objective_from_config(section, student_dim: int | None = None, teacher_dim: int | None = None) -> Objective:
    """The guided objective described by a config [objective] section (ObjectiveConfig)."""
    return guided_objective(section.gap, section.lambda_kd, section.temperature, student_dim, teacher_dim,
                            lambda_gap=section.lambda_gap, projector=section.projector)
