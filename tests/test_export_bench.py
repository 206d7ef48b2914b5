"""Smoke test of `lnpt bench export` on a small model: one JSON object with the reported keys.
(The figures themselves are the benchmark's business, not a test's.)"""
from __future__ import annotations

import json

from lnpt.shared.cli import main


def test_bench_export_prints_one_json_object_with_its_keys(capsys):
    code = main(["bench", "export", "--model", "lenet5", "--rounds", "1", "--seconds", "0.01",
                 "--budget-models", "lenet5@28", "--budget-step", "0.45", "--format", "json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("sparse_over_dense_size", "sparse_gzip_over_dense_size", "structured_over_dense_latency_b32",
                "max_abs_diff", "targets_met", "budget_latency_over_target", "structured_int8_over_dense_latency_b1",
                "structured_int8_top1_agreement"):
        assert key in result
    assert 0 < result["sparse_over_dense_size"] < 1  # 90% zeros: sparse storage wins for LeNet's big layers
    assert result["exported_sparsity"] > 0.89
    assert 0 < result["max_abs_diff"] < 1e-3
    assert result["structured_int8_over_dense_latency_b1"] > 0 and result["structured_int8_top1_agreement"] >= 0.9
    (budget,) = result["budgets"]
    assert budget["model"] == "lenet5" and budget["size"] == 28 and 0 < budget["steps"] <= 2
    # Met or not (LeNet's runs are dominated by ONNX Runtime's fixed cost), the figure is reported.
    assert result["budget_latency_over_target"] == budget["remeasured_over_target"] > 0
    assert result["targets_met"]["budget_latency_over_target"] == (budget["remeasured_over_target"] <= 1)


def test_bench_export_refuses_bad_budget_models(capsys):
    code = main(["bench", "export", "--budget-models", "resnet18@big", "--format", "json"])
    assert code == 2 and "SPEC@SIZE" in capsys.readouterr().err
