"""The objectives: learning gap variants, logit KD, their sum, cross-entropy; usable per batch with gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lnpt.shared.model_file import save_model
from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC, normalize
from lnpt.shared.objectives import (CrossEntropy, LearningGap, LogitKD, ObjectiveError, Targets, WeightedSum,
                                    guided_objective, learning_gap, logit_kd, objective_from_config)
from lnpt.shared.teacher_model import Teacher
from lnpt.shared.models import build_model


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_model(path, build_model("resnet20", 10, FASHION_MNIST_SPEC), kind="teacher",
               input_spec=FASHION_MNIST_SPEC, class_names=list(FASHION_MNIST_CLASSES))
    return Teacher.load(path)


@pytest.fixture(scope="module")
def batch(fashion_train, teacher):
    images = fashion_train[0][:16]
    features, logits = teacher.targets(images)
    return normalize(images, FASHION_MNIST_SPEC), Targets(features, logits, fashion_train[1][:16])


def test_learning_gap_variants_match_their_definitions():
    torch.manual_seed(0)
    s, t = torch.randn(8, 5), torch.randn(8, 5)
    assert torch.allclose(learning_gap(s, t, "mse"), ((s - t) ** 2).mean())
    cos = (s * t).sum(1) / (s.norm(dim=1) * t.norm(dim=1))
    assert torch.allclose(learning_gap(s, t, "cosine"), (1 - cos).mean())
    sn, tn = s / s.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    assert torch.allclose(learning_gap(s, t, "normalized"), ((sn - tn) ** 2).mean())
    # cosine and normalized ignore scale; mse does not
    assert learning_gap(3 * t, t, "cosine") < 1e-6 and learning_gap(3 * t, t, "normalized") < 1e-6
    assert learning_gap(3 * t, t, "mse") > 0.1


def test_learning_gap_refuses_mismatched_widths_and_unknown_kinds():
    with pytest.raises(ObjectiveError, match="projector"):
        learning_gap(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ObjectiveError, match="mse, cosine, normalized"):
        LearningGap("l1")


def test_logit_kd_is_tau_squared_kl_of_softened_distributions():
    torch.manual_seed(0)
    zs, zt = torch.randn(6, 10), torch.randn(6, 10)
    tau = 4.0
    p_t, p_s = F.softmax(zt / tau, 1), F.softmax(zs / tau, 1)
    manual = (p_t * (p_t.log() - p_s.log())).sum(1).mean() * tau ** 2
    assert torch.allclose(logit_kd(zs, zt, tau), manual, atol=1e-6)
    assert logit_kd(zt, zt, tau).abs() < 1e-6
    with pytest.raises(ObjectiveError):
        LogitKD(0)


def test_guided_objective_is_gap_plus_weighted_kd_from_one_forward(batch):
    x, targets = batch
    torch.manual_seed(0)
    student = build_model("resnet20", 10, FASHION_MNIST_SPEC).eval()
    calls = []
    student.body.register_forward_hook(lambda *args: calls.append(1))
    objective = guided_objective("mse", lambda_kd=0.5, temperature=2.0)
    total = objective(student, x, targets)
    assert len(calls) == 1
    features, logits = student.features_and_logits(x)
    expected = F.mse_loss(features, targets.features) + 0.5 * logit_kd(logits, targets.logits, 2.0)
    assert torch.allclose(total, expected, rtol=1e-5)


def test_objective_from_config_reads_the_objective_section():
    from lnpt.shared.config import load_config

    cfg = load_config(overrides=["objective.gap=cosine", "objective.lambda_kd=0", "objective.temperature=2"])
    objective = objective_from_config(cfg.objective)
    assert isinstance(objective, WeightedSum) and len(objective.terms) == 1  # KD weight 0 is dropped
    assert objective.terms[0].kind == "cosine"
    cfg = load_config(overrides=["objective.lambda_gap=0", "objective.temperature=2"])
    assert [type(t) for t in objective_from_config(cfg.objective).terms] == [LogitKD]
    cfg = load_config(overrides=["objective.projector=fixed"])
    assert not objective_from_config(cfg.objective, 84, 64).terms[0].projector.weight.requires_grad


def test_gradients_reach_the_classifier_only_through_the_kd_term(batch):
    """Why the LNPT score includes KD: the learning gap alone gives the final Linear no gradient."""
    x, targets = batch
    torch.manual_seed(0)
    student = build_model("lenet5", 10, FASHION_MNIST_SPEC)
    projector_gap = LearningGap("mse", student.feature_dim, 64)
    projector_gap(student, x, targets).backward()
    assert student.head.weight.grad is None or not student.head.weight.grad.any()
    assert student.body[0].weight.grad.abs().sum() > 0
    student.zero_grad()
    guided_objective(student_dim=student.feature_dim, teacher_dim=64)(student, x, targets).backward()
    assert student.head.weight.grad.abs().sum() > 0


def test_learned_projector_maps_student_width_to_teacher_width_and_trains(batch):
    x, targets = batch
    student = build_model("lenet5", 10, FASHION_MNIST_SPEC)  # 84 features vs the teacher's 64
    objective = guided_objective(student_dim=84, teacher_dim=64, projector="learned")
    projector = objective.terms[0].projector
    assert tuple(projector.weight.shape) == (64, 84)
    assert guided_objective(student_dim=64, teacher_dim=64).terms[0].projector is None
    optimizer = torch.optim.SGD([*student.parameters(), *objective.parameters()], lr=0.05)
    losses = []
    for _ in range(5):  # the per-batch use of guided training: loss, backward, step
        optimizer.zero_grad()
        loss = objective(student, x, targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert projector.weight.grad is not None and losses[-1] < losses[0]


def test_cross_entropy_uses_labels_and_says_when_they_are_missing(batch):
    x, targets = batch
    student = build_model("lenet5", 10, FASHION_MNIST_SPEC)
    loss = CrossEntropy()(student, x, targets)
    assert torch.allclose(loss, F.cross_entropy(student(x), targets.labels))
    assert not CrossEntropy().needs_teacher and guided_objective().needs_teacher
    with pytest.raises(ObjectiveError, match="labels"):
        CrossEntropy()(student, x, Targets(features=targets.features))
    with pytest.raises(ObjectiveError, match="teacher features"):
        LearningGap()(student, x, Targets(labels=targets.labels))


def test_fixed_projector_is_seeded_and_never_trained(batch):
    x, targets = batch
    student = build_model("lenet5", 10, FASHION_MNIST_SPEC)
    objective = guided_objective(student_dim=84, teacher_dim=64, projector="fixed")
    projector = objective.terms[0].projector
    before = projector.weight.detach().clone()
    assert torch.equal(before, guided_objective(student_dim=84, teacher_dim=64, projector="fixed")
                       .terms[0].projector.weight)  # the same map in every run
    optimizer = torch.optim.SGD([*student.parameters(), *objective.parameters()], lr=0.05)
    objective(student, x, targets).backward()
    optimizer.step()
    assert projector.weight.grad is None and torch.equal(projector.weight, before)
    with pytest.raises(ObjectiveError, match="projector"):
        guided_objective(student_dim=84, teacher_dim=64, projector="oracle")


def test_term_weights_select_kd_only_or_gap_only(batch):
    x, targets = batch
    student = build_model("resnet20", 10, FASHION_MNIST_SPEC)
    kd_only = guided_objective(lambda_gap=0.0)
    gap_only = guided_objective(lambda_kd=0.0)
    assert [type(t) for t in kd_only.terms] == [LogitKD] and [type(t) for t in gap_only.terms] == [LearningGap]
    without_labels = Targets(targets.features, targets.logits)
    both = guided_objective()(student, x, without_labels)
    assert torch.allclose(both, kd_only(student, x, without_labels) + gap_only(student, x, without_labels), atol=1e-5)
    with pytest.raises(ObjectiveError):
        guided_objective(lambda_gap=0.0, lambda_kd=0.0)
