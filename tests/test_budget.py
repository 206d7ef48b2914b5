"""Channel pruning to a budget (edge.pruning.budget) on real Fashion-MNIST images with a real
teacher file: MAC and parameter targets land within one step, an unreachable budget fails with
the smallest reachable figure, and a latency target is met in ONNX Runtime and the file verifies.
MACs are exact, so the exactness tests use them; latency is measured, so its test compares the
pruned and the dense graph side by side and allows the documented measurement tolerance."""
from __future__ import annotations

import pytest
import torch

from lnpt.edge.onnx.latency import LatencySettings, model_onnx, side_by_side
from lnpt.edge.pruning.budget import LATENCY_TOLERANCE, Budget, BudgetError, prune_to_budget
from lnpt.edge.pruning.masks import PruneError
from lnpt.edge.pruning.pipeline import make_batches
from lnpt.edge.pruning.structured import count_macs_and_params
from lnpt.edge.teachers import LocalTeacher
from lnpt.shared.config import PruneConfig
from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC
from lnpt.shared.model_file import save_model
from lnpt.shared.models import build_model
from lnpt.shared.objectives import guided_objective

SPEC = FASHION_MNIST_SPEC


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_model(path, build_model("resnet20", 10, SPEC), kind="teacher", input_spec=SPEC,
               class_names=list(FASHION_MNIST_CLASSES))
    return path


@pytest.fixture(scope="module")
def teacher(teacher_file):
    return LocalTeacher.load(teacher_file)


@pytest.fixture(scope="module")
def batches(fashion_train, teacher):
    """32 real unlabeled images with the teacher's features and logits (no labels)."""
    return make_batches(fashion_train[0][:32], SPEC, 16, teacher)


def student(arch: str = "resnet20"):
    torch.manual_seed(0)
    return build_model(arch, 10, SPEC)


def example():
    return torch.zeros(1, *SPEC.shape)


def test_target_macs_lands_within_one_step_and_reports_every_step(batches):
    model = student()
    dense_macs, dense_params = count_macs_and_params(model, example())
    target = int(0.45 * dense_macs)
    seen = []
    report = prune_to_budget(model, Budget(macs=target, step=0.1), guided_objective(), batches, SPEC,
                             on_step=seen.append)
    steps = report["steps"]
    assert seen == steps and steps[0] == {"step": 0, "ratio": 0.0, "macs": dense_macs, "params": dense_params,
                                          "latency_ms": None, "latency_over_dense": None, "met": False}
    # The first step that meets the target is where it stops: one step earlier it was still above.
    assert report["met"] and steps[-1]["macs"] <= target < steps[-2]["macs"]
    assert not any(row["met"] for row in steps[:-1])
    assert [row["ratio"] for row in steps] == pytest.approx([0.1 * k for k in range(len(steps))])
    assert all(a["macs"] > b["macs"] and a["params"] > b["params"] for a, b in zip(steps, steps[1:]))
    assert count_macs_and_params(model, example()) == (steps[-1]["macs"], steps[-1]["params"])
    assert report["over_target"]["macs"] == pytest.approx(steps[-1]["macs"] / target)
    assert report["over_target"]["macs"] <= 1
    features, logits = model.features_and_logits(torch.randn(2, *SPEC.shape))
    assert features.shape == (2, 64) and logits.shape == (2, 10)  # the teacher's feature width is kept


def test_target_params_and_label_free_taylor_differs_from_random(batches):
    target = int(0.5 * count_macs_and_params(student(), example())[1])
    taylor, random = student(), student()
    a = prune_to_budget(taylor, Budget(params=target, step=0.25), guided_objective(), batches, SPEC)
    b = prune_to_budget(random, Budget(params=target, step=0.25), None, batches, SPEC, importance="random")
    assert a["met"] and b["met"] and a["params_after"] <= target and a["steps"][-2]["params"] > target
    # Same widths, different channels kept: the objective's gradients chose them, not chance.
    assert a["params_after"] == b["params_after"]
    assert not torch.equal(taylor.body[0].weight, random.body[0].weight)


def test_budget_below_what_the_model_can_reach_fails_with_the_smallest_reachable_figure(batches):
    model = student()
    with pytest.raises(BudgetError) as failure:
        prune_to_budget(model, Budget(macs=1000, step=0.3, max_ratio=0.9), guided_objective(), batches, SPEC)
    report = failure.value.report
    smallest = report["steps"][-1]
    assert not report["met"] and smallest["ratio"] == pytest.approx(0.9) and len(report["steps"]) == 4
    assert count_macs_and_params(model, example())[0] == smallest["macs"] > 1000
    message = str(failure.value)
    assert f"{smallest['macs']:,.4g} MACs > 1,000 MACs" in message
    assert f"{smallest['macs'] / 1000:.2f}x the budget" in message and "prune.budget_max_ratio" in message
    assert "penultimate features" in message and report["why"]["fixed_width_macs_share"] > 0
    assert isinstance(failure.value, PruneError)  # the CLI prints it as one line and exits with 2


def test_target_latency_meets_60_percent_of_dense_and_the_file_verifies(tmp_path, batches):
    from lnpt.edge.onnx.pipeline import ExportOptions, export_student
    from lnpt.edge.student import save_student

    model = student()
    settings = LatencySettings(threads=1, batch=1)
    dense = {"dense": model_onnx(model, SPEC)}
    dense_ms = side_by_side(dense, SPEC.shape, settings)["dense"]["median_ms"]
    # Both forms of the target: 60 % of the dense ms measured now, and 0.6x dense timed side by side.
    budget = Budget(latency_ms=0.6 * dense_ms, latency_over_dense=0.6, latency=settings, step=0.25)
    report = prune_to_budget(model, budget, guided_objective(), batches, SPEC)
    last = report["steps"][-1]
    assert report["met"] and last["latency_ms"] <= budget.latency_ms and last["latency_over_dense"] <= 0.6
    assert 0.5 < report["steps"][0]["latency_over_dense"] < 2  # the dense graph timed beside itself
    assert report["latency_settings"]["threads"] == 1 and all(row["latency_ms"] for row in report["steps"])

    path = tmp_path / "student.pt"
    save_student(path, model, input_spec=SPEC, class_names=list(FASHION_MNIST_CLASSES), structured=True)
    result = export_student(path, tmp_path / "student.onnx", ExportOptions(verify_samples=16))
    assert result["verification"]["dense"]["passed"] and result["structured"]
    # The written file, re-measured beside the dense graph (the same load on a shared machine),
    # is within the measurement tolerance of the budget.
    again = side_by_side({**dense, "pruned": result["output"]}, SPEC.shape, settings, rounds=3)
    assert again["pruned"]["median_ms"] / again["dense"]["median_ms"] <= 0.6 * (1 + LATENCY_TOLERANCE)


def test_budget_from_config_and_bad_budgets():
    assert Budget.from_config(PruneConfig()) is None  # no target: a fixed-ratio run
    budget = Budget.from_config(PruneConfig(target_latency_ms=5.0, latency_threads=4, latency_batch=8,
                                            budget_step=0.1))
    assert budget.targets() == {"latency_ms": 5.0} and budget.latency.threads == 4 and budget.latency.batch == 8
    with pytest.raises(PruneError, match="at least one target"):
        Budget()
    with pytest.raises(PruneError, match="step"):
        Budget(macs=10, step=0.0)
    with pytest.raises(PruneError, match="needs an objective"):
        prune_to_budget(student(), Budget(macs=10), None, [], SPEC)


def test_cpu_clock_times_the_calling_thread_and_needs_one_thread():
    from lnpt.edge.onnx.onnx_export import ExportError

    onnx_bytes = model_onnx(student("lenet5"), SPEC)
    timed = side_by_side({"a": onnx_bytes}, SPEC.shape, LatencySettings(clock="cpu", seconds=0.05), rounds=1)
    assert timed["a"]["median_ms"] > 0 and timed["a"]["clock"] == "cpu"
    with pytest.raises(ExportError, match="one thread"):
        LatencySettings(clock="cpu", threads=2)


def test_a_budget_pruned_student_exports_to_static_int8_and_verifies(tmp_path, batches):
    """int8 after channels: static int8 (calibrated on unlabeled images) of a narrower graph."""
    import onnx

    from lnpt.edge.onnx.pipeline import ExportOptions, export_student
    from lnpt.edge.student import save_student

    model = student()
    dense_macs = count_macs_and_params(model, example())[0]
    prune_to_budget(model, Budget(macs=int(0.5 * dense_macs), step=0.25), guided_objective(), batches, SPEC)
    path = tmp_path / "student.pt"
    save_student(path, model, input_spec=SPEC, class_names=list(FASHION_MNIST_CLASSES), structured=True)
    result = export_student(path, tmp_path / "int8.onnx", ExportOptions(quantize="int8-static", verify_samples=32,
                                                                        calibration_samples=64))
    check = result["verification"]["int8"]
    assert check["passed"] and check["top1_agreement"] >= 0.9 and result["structured"]
    graph = onnx.load(tmp_path / "int8.onnx").graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    widths = {init.name: init.dims[0] for init in graph.initializer
              if "conv1.weight" in init.name and len(init.dims) == 4}
    assert widths and min(widths.values()) < 16  # the first stage's 16 channels were pruned


def test_lnpt_prune_target_macs_then_masks_saves_a_student_that_reloads(tmp_path, teacher_file, capsys):
    """`lnpt prune --target-macs N`: the budget, then unstructured masks on the narrower network."""
    import json

    from lnpt.edge.student import load_student, make_permanent, sparsity
    from lnpt.shared.cli import main

    dense_macs = count_macs_and_params(student(), example())[0]
    out = tmp_path / "s.pt"
    code = main(["prune", "--model", "resnet20", "--teacher", str(teacher_file), "--samples", "32",
                 "--sparsity", "0.5", "--target-macs", str(dense_macs // 2), "--set", "prune.budget_step=0.25",
                 "--out", str(out), "--format", "json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    budget = report["structured"]
    assert budget["met"] and budget["budget"] == {"macs": dense_macs // 2} and budget["macs_after"] <= dense_macs // 2
    assert report["objective"] == "learning-gap" and abs(report["sparsity"] - 0.5) < 1e-3
    model, record = load_student(out)
    assert record.extra["structured"] and abs(sparsity(model) - 0.5) < 1e-3
    assert count_macs_and_params(make_permanent(model), example())[0] == budget["macs_after"]

    code = main(["prune", "--model", "resnet20", "--teacher", str(teacher_file), "--samples", "32", "--sparsity", "0",
                 "--target-params", "10", "--set", "prune.budget_step=0.3", "--out", str(tmp_path / "never.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot meet the budget" in err and "params > 10 params" in err
    assert not (tmp_path / "never.pt").exists()
