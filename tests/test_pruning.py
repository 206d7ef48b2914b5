"""Scorers, masks, structured pruning and the report, on real Fashion-MNIST samples and a real teacher file."""
from __future__ import annotations

import json

import pytest
import torch
from torch.nn.utils import prune

from lnpt.edge.pruning import scorers
from lnpt.edge.pruning.masks import PruneError, floor_count, prune_loop, select_masks
from lnpt.edge.pruning.pipeline import make_batches, make_scorer
from lnpt.edge.pruning.report import density_report, format_table, write_chart, write_json
from lnpt.edge.teachers import LocalTeacher
from lnpt.edge.student import current_masks, load_student, make_permanent, prunable_modules, save_student, sparsity
from lnpt.shared.model_file import save_model
from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC, adapt, normalize
from lnpt.shared.objectives import CrossEntropy, LearningGap, Targets, guided_objective
from lnpt.shared.models import InputSpec, build_model

SPEC = FASHION_MNIST_SPEC


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_model(path, build_model("resnet20", 10, SPEC), kind="teacher", input_spec=SPEC,
               class_names=list(FASHION_MNIST_CLASSES))
    return LocalTeacher.load(path)


@pytest.fixture(scope="module")
def batches(fashion_train, teacher):
    """40 real images in batches of 20, with the teacher's targets and (for the baselines) labels."""
    images, labels = fashion_train
    return make_batches(images[:40], SPEC, 20, teacher, labels[:40])


def student(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(arch, 10, SPEC)


def all_scorers(teacher_dim: int, student_dim: int) -> dict[str, scorers.Scorer]:
    gap = guided_objective(student_dim=student_dim, teacher_dim=teacher_dim)
    return {name: make_scorer(name, CrossEntropy() if name in ("snip", "grasp") else gap, SPEC.shape)
            for name in scorers.SCORERS}


@pytest.mark.parametrize("arch", ["lenet5", "resnet20"])
def test_every_scorer_gives_finite_scores_shaped_like_the_weights(arch, batches, teacher):
    model = student(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for name, scorer in all_scorers(teacher.feature_dim, model.feature_dim).items():
        scores = scorer.score(model, batches)
        assert set(scores) == set(prunable_modules(model)), name
        for layer, module in prunable_modules(model).items():
            assert scores[layer].shape == module.weight.shape, (name, layer)
            assert torch.isfinite(scores[layer]).all(), (name, layer)
        assert any(s.abs().sum() > 0 for s in scores.values()), name
    # Scoring works on a copy: weights and batch-norm statistics of the student are untouched.
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_global_sparsity_is_exact_and_local_is_per_layer(batches, teacher):
    model = student("resnet20")
    scores = make_scorer("lnpt", guided_objective(), SPEC.shape).score(model, batches)
    total = sum(s.numel() for s in scores.values())
    for target in (0.5, 0.9, 0.98):
        masks = select_masks(scores, target, "global")
        assert sum(int(m.sum()) for m in masks.values()) == round((1 - target) * total)
        local = select_masks(scores, target, "local")
        for name, mask in local.items():
            assert int(mask.sum()) == round((1 - target) * mask.numel()), name
    # Global top-k lets layers differ; it is the same set torch's own global_unstructured keeps.
    masks = select_masks(scores, 0.9, "global")
    densities = {n: m.float().mean().item() for n, m in masks.items()}
    assert max(densities.values()) - min(densities.values()) > 0.2
    reference = student("resnet20")
    modules = prunable_modules(reference)
    prune.global_unstructured([(m, "weight") for m in modules.values()], prune.L1Unstructured, amount=0.9,
                              importance_scores={(modules[n], "weight"): scores[n] for n in modules})
    assert all(torch.equal(modules[n].weight_mask.bool(), masks[n]) for n in modules)


def test_per_layer_floor_and_dense_classifier(batches):
    model = student("resnet20")
    scores = make_scorer("magnitude", None, SPEC.shape).score(model, batches)
    total = sum(s.numel() for s in scores.values())
    masks = select_masks(scores, 0.98, "global", min_layer_density=0.01)
    for name, mask in masks.items():
        assert mask.sum() >= floor_count(mask.numel(), 0.01), name
    assert sum(int(m.sum()) > floor_count(m.numel(), 0.01) for m in masks.values()) >= 3  # not all at the floor
    assert sum(int(m.sum()) for m in masks.values()) == round(0.02 * total)  # floor counts towards the budget
    # When the floors alone exceed the budget, each layer keeps exactly its floor.
    masks = select_masks(scores, 0.999, "global", min_layer_density=0.01)
    assert all(int(m.sum()) == floor_count(m.numel(), 0.01) for m in masks.values())
    dense = select_masks(scores, 0.98, "global", dense=["head"])
    assert dense["head"].all() and sum(int(m.sum()) for m in dense.values()) == round(0.02 * total)
    with pytest.raises(PruneError, match="sparsity"):
        select_masks(scores, 1.0)


def test_classifier_survives_99_percent_thanks_to_the_kd_term(batches):
    model = student("resnet20")
    prune_loop(model, make_scorer("lnpt", guided_objective(), SPEC.shape), batches, 0.99, min_layer_density=0)
    head = model.head.weight_mask
    assert 0 < head.float().mean() and (head.sum(1) > 0).sum() >= 5  # most classes keep some weights
    assert abs(sparsity(model) - 0.99) < 1e-4
    # The learning gap alone never reaches the classifier: all its scores are zero.
    gap_only = scorers.SNIP(LearningGap()).score(student("resnet20"), batches)
    assert not gap_only["head"].any()


def test_synflow_needs_no_data_and_ignores_batch_content(batches, fashion_train):
    synflow = make_scorer("synflow", None, SPEC.shape)
    assert not synflow.needs_data
    other = make_batches(fashion_train[0][1000:1040], SPEC, 20)
    masks = []
    for data in ([], batches, other):
        model = student("resnet20")
        masks.append(prune_loop(model, synflow, data, 0.95, rounds=5, min_layer_density=0.01))
    assert all(torch.equal(masks[0][n], m[n]) for m in masks[1:] for n in masks[0])


def test_synflow_rounds_follow_the_exponential_schedule_and_never_revive_weights():
    model = student("lenet5")
    seen = []
    synflow = scorers.SynFlow(SPEC.shape, float64=True)
    original = synflow.score

    def recording(model_, batches_):
        seen.append(current_masks(model_))
        return original(model_, batches_)

    synflow.score = recording
    prune_loop(model, synflow, [], 0.99, rounds=4)
    total = sum(m.weight.numel() for m in prunable_modules(model).values())
    kept = [sum(int(m.sum()) for m in masks.values()) for masks in seen[1:]]
    assert kept == [round(0.01 ** (r / 4) * total) for r in (1, 2, 3)]
    for earlier, later in zip(seen[1:], seen[2:]):
        assert all(not (later[n] & ~earlier[n]).any() for n in earlier)


def test_lnpt_is_not_a_relabelled_magnitude_or_random_score(batches):
    masks = {}
    for name in ("lnpt", "magnitude", "random", "snip"):
        objective = CrossEntropy() if name == "snip" else guided_objective()
        masks[name] = prune_loop(student("resnet20"), make_scorer(name, objective, SPEC.shape), batches, 0.9)
    for other in ("magnitude", "random", "snip"):
        overlap = sum(int((masks["lnpt"][n] & masks[other][n]).sum()) for n in masks["lnpt"])
        kept = sum(int(m.sum()) for m in masks["lnpt"].values())
        assert overlap / kept < 0.8, other  # a relabelled copy would overlap 100%


def test_masks_survive_optimizer_steps_and_prune_remove_keeps_the_zeros(batches):
    model = student("resnet20")
    masks = prune_loop(model, make_scorer("lnpt", guided_objective(), SPEC.shape), batches, 0.9)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    objective = guided_objective()
    for x, targets in batches * 2:
        optimizer.zero_grad()
        objective(model, x, targets).backward()
        optimizer.step()
    for name, module in prunable_modules(model).items():
        assert not module.weight[~masks[name]].any(), name
    make_permanent(model)
    for name, module in prunable_modules(model).items():
        assert isinstance(module.weight, torch.nn.Parameter) and not hasattr(module, "weight_mask")
        assert not module.weight[~masks[name]].any(), name
    assert abs(sparsity(model) - 0.9) < 1e-3


@pytest.mark.parametrize("arch", ["lenet5", "resnet20", "vgg11_bn", "mobilenet_v2"])
def test_structured_pruning_shrinks_the_model_keeps_feature_width_and_reloads(arch, tmp_path, fashion_train):
    from lnpt.edge.pruning.structured import prune_channels

    spec = SPEC if arch != "mobilenet_v2" else InputSpec(3, 32, (0.5,) * 3, (0.25,) * 3)
    model = build_model(arch, 10, spec)
    width = model.feature_dim
    torch.manual_seed(2)
    teacher_net = build_model(arch, 10, spec).eval()
    x = normalize(adapt(fashion_train[0][:8], spec), spec)
    with torch.no_grad():
        data = [(x, Targets(*teacher_net.features_and_logits(x)))]
    info = prune_channels(model, 0.5, guided_objective(), data, torch.zeros(1, *spec.shape))
    assert info["macs_after"] < 0.6 * info["macs_before"] and info["params_after"] < info["params_before"]
    model.eval()
    features, logits = model.features_and_logits(x)
    assert features.shape == (8, width) and logits.shape == (8, 10)
    prune_loop(model, make_scorer("magnitude", None, spec.shape), [], 0.5)  # unstructured on top
    path = tmp_path / "student.pt"
    save_student(path, model, input_spec=spec, class_names=list(FASHION_MNIST_CLASSES), structured=True)
    reloaded, record = load_student(path)
    reloaded.eval()
    assert record.extra["structured"] and torch.allclose(reloaded(x), model(x), atol=1e-5)
    assert abs(sparsity(reloaded) - 0.5) < 1e-3


def test_report_has_overall_and_per_layer_density_and_writes_json_and_png(batches, tmp_path):
    model = student("lenet5")
    prune_loop(model, make_scorer("lnpt", guided_objective(student_dim=84, teacher_dim=64), SPEC.shape),
               batches, 0.9, min_layer_density=0.02)
    report = density_report(model, score="lnpt", target_sparsity=0.9)
    assert set(report["density_per_layer"]) == set(prunable_modules(model))
    assert report["sparsity"] == pytest.approx(sparsity(model))
    assert all(d >= 0.02 for d in report["density_per_layer"].values())
    table = format_table(report)
    assert "body.0" in table and "total" in table and "target 0.9000" in table
    write_json(report, tmp_path / "r.json")
    write_chart(report, tmp_path / "r.png")
    assert json.loads((tmp_path / "r.json").read_text())["sparsity"] == report["sparsity"]
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scores_come_from_one_registry_with_their_facts():
    """Every score is a registered class; the pipeline reads its facts (objective, iterative) from it."""
    from lnpt.edge.pruning.masks import PruneError
    from lnpt.edge.pruning.pipeline import resolve_objective

    assert {"lnpt", "snip", "grasp", "synflow", "magnitude", "random"} <= set(scorers.SCORERS)
    assert resolve_objective("lnpt", "auto", structured=False) == "learning-gap"
    assert resolve_objective("grasp", "auto", structured=False) == "cross-entropy"
    assert resolve_objective("magnitude", "auto", structured=False) is None
    assert scorers.SCORERS["synflow"].iterative and not scorers.SCORERS["lnpt"].iterative
    with pytest.raises(PruneError, match="unknown score 'best'; choose one of .*lnpt"):
        make_scorer("best", None, SPEC.shape)


def test_each_score_name_builds_its_own_class_and_grasp_is_w_times_hessian_gradient(batches, teacher):
    """A name must build its own scorer: GraSP once inherited SNIP's factory and scored as SNIP."""
    for name, scorer in all_scorers(teacher.feature_dim, 84).items():
        assert type(scorer) is scorers.SCORERS[name], name
    model = student("lenet5")
    grasp = make_scorer("grasp", CrossEntropy(), SPEC.shape).score(model, batches)
    # w * Hg by hand: H g as the gradient of g . grad L, g held constant
    params = [m.weight for m in prunable_modules(model).values()]
    loss = lambda: sum(CrossEntropy()(model, x, t) for x, t in batches)
    g = [x.detach() for x in torch.autograd.grad(loss(), params)]
    grads = torch.autograd.grad(loss(), params, create_graph=True)
    hg = torch.autograd.grad(sum((a * b).sum() for a, b in zip(g, grads)), params)
    expected = {name: (w * h).detach() for name, w, h in zip(prunable_modules(model), params, hg)}
    norm = torch.cat([e.flatten() for e in expected.values()]).sum().abs()
    for name in expected:
        torch.testing.assert_close(grasp[name], expected[name] / norm, rtol=1e-3, atol=1e-7)
    snip = make_scorer("snip", CrossEntropy(), SPEC.shape).score(model, batches)
    assert any((grasp[n] < 0).any() for n in grasp) and not any((snip[n] < 0).any() for n in snip)


def test_progressive_lnpt_reaches_the_target_with_nested_masks_and_differs_from_one_shot(batches):
    """lnpt-progressive: rounds of the LNPT sensitivity on the network pruned so far."""
    from lnpt.shared.config import PruneConfig

    config = PruneConfig(score="lnpt-progressive", sparsity=0.95, progressive_rounds=4)
    scorer = make_scorer("lnpt-progressive", guided_objective(student_dim=84, teacher_dim=64), SPEC.shape, config)
    assert scorer.iterative and scorer.rounds(config) == 4
    seen = []

    class Recording(type(scorer)):  # the same scorer, remembering the masks each round started from
        def score(self, model, batch_list):
            seen.append({n: m.clone() for n, m in current_masks(model).items()})
            return super().score(model, batch_list)

    model = student("lenet5")
    final = prune_loop(model, Recording(guided_objective(student_dim=84, teacher_dim=64)), batches, 0.95, rounds=4)
    assert sparsity(model) == pytest.approx(0.95, abs=1e-3)
    rounds = [*seen[1:], final]  # the masks after rounds 1..4
    for earlier, later in zip(rounds, rounds[1:]):
        assert all(not (later[n] & ~earlier[n]).any() for n in later)  # a weight pruned stays pruned
    one_shot = prune_loop(student("lenet5"), make_scorer("lnpt", guided_objective(student_dim=84, teacher_dim=64), SPEC.shape), batches, 0.95)
    assert any(not torch.equal(final[n], one_shot[n]) for n in final)
