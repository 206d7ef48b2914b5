"""Smoke test of `lnpt bench serve --format json` (not a speed test: tiny teacher, sub-second windows)."""
from __future__ import annotations

import json
import subprocess
import sys

from support.servers import make_teacher


def test_bench_serve_json_has_the_ratios(tmp_path):
    teacher = make_teacher(tmp_path / "T.pt")
    done = subprocess.run([sys.executable, "-m", "lnpt.shared.cli", "bench", "serve", "--checkpoint", str(teacher),
                           "--batch", "8", "--seconds", "0.6", "--warmup", "0.2", "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for key in ("raw_samples_per_s", "ratio_1_stream", "ratio_4_streams", "ratio_16_streams", "wire_bytes_per_sample"):
        assert key in result
    assert set(result["served"]) == {"1", "4", "16"}
    for setting in result["served"].values():
        assert setting["samples_per_s"] > 0 and setting["p99_ms"] >= setting["p50_ms"] > 0
    wire = result["wire_bytes_per_sample"]
    assert 3.9 < wire["request_float32_over_uint8"] <= 4.0  # float32 pixels cost 4x uint8 on the wire
    assert wire["response_float16"] < wire["response_float32"]
