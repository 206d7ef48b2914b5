"""Smoke test of `lnpt bench export` on a small model: one JSON object with the reported keys.
(The figures themselves are the benchmark's business, not a test's.)"""
from __future__ import annotations

import json

from lnpt.shared.cli import main


def test_bench_export_prints_one_json_object_with_its_keys(capsys):
    code = main(["bench", "export", "--model", "lenet5", "--rounds", "1", "--seconds", "0.01", "--format", "json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("sparse_over_dense_size", "sparse_gzip_over_dense_size", "structured_over_dense_latency_b32",
                "max_abs_diff", "targets_met"):
        assert key in result
    assert 0 < result["sparse_over_dense_size"] < 1  # 90% zeros: sparse storage wins for LeNet's big layers
    assert result["exported_sparsity"] > 0.89
    assert 0 < result["max_abs_diff"] < 1e-3
