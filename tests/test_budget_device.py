"""`lnpt bench device --student s.pt --format json` on a small real student: one JSON object with
the keys its module documents, every variant exported, verified and timed in ONNX Runtime.
(The figures are the benchmark's business; the test checks what could break: keys, shapes,
that the structured variant really is narrower and the sparse one really holds sparse zeros.)"""
from __future__ import annotations

import json

import torch

from lnpt.shared.cli import main


def test_bench_device_reports_its_documented_keys(tmp_path, capsys):
    from lnpt.edge.pruning.masks import prune_loop
    from lnpt.edge.pruning.pipeline import make_scorer
    from lnpt.edge.student import save_student
    from lnpt.lab.bench import device
    from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC
    from lnpt.shared.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet5", 10, FASHION_MNIST_SPEC)
    prune_loop(model, make_scorer("magnitude", None, FASHION_MNIST_SPEC.shape), [], 0.8)  # a masked student
    path = tmp_path / "s.pt"
    save_student(path, model, input_spec=FASHION_MNIST_SPEC, class_names=list(FASHION_MNIST_CLASSES))

    code = main(["bench", "device", "--student", str(path), "--rounds", "1", "--seconds", "0.01",
                 "--format", "json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    documented = {"student", "model", "input", "threads", "batches", "rounds", "clock", "runtime", "onnxruntime_version",
                  "cpu", "variants", "int8_top1_agreement", "notes"}
    for batch in (1, 8):
        documented |= {f"{name}_over_dense_latency_b{batch}" for name in ("sparse", "structured", "structured_int8")}
        documented.add(f"structured_int8_over_structured_latency_b{batch}")
    assert set(result) == documented
    assert all(key in device.__doc__ for key in ("onnxruntime_version", "avx512_vnni", "asimddp", "latency_ms",
                                                 "structured_int8_over_structured_latency_bN"))
    assert set(result["cpu"]["flags"]) == set(device.CPU_FLAGS) and result["input"] == [1, 28, 28]
    variants = result["variants"]
    assert list(variants) == list(device.VARIANTS)
    for name, v in variants.items():
        assert set(v["latency_ms"]) == {"1", "8"} and all(ms > 0 for ms in v["latency_ms"].values()), name
    assert variants["structured"]["macs"] < 0.6 * variants["dense"]["macs"]
    assert "own zeros (80.0%)" in variants["sparse"]["what"]
    assert variants["sparse"]["bytes"] < variants["dense"]["bytes"]
    assert variants["structured_int8"]["bytes"] < variants["structured"]["bytes"]
    assert result["int8_top1_agreement"] >= 0.9 and variants["dense"]["max_abs_diff"] < 1e-3
