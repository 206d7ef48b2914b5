"""Smoke test of `lnpt bench serve --format json` (not a speed test: tiny teacher, sub-second windows)."""
from __future__ import annotations

import json
import subprocess
import sys

STAGES = ("decode", "queue", "forward", "encode", "reply_wait", "send")


def test_bench_serve_json_has_the_scale_curve_memory_and_profile():
    # --model: the teacher is built without a checkpoint (the demo's 28x28 grey LeNet-5)
    done = subprocess.run([sys.executable, "-m", "lnpt.shared.cli", "bench", "serve", "--model", "lenet5",
                           "--batch", "32", "--seconds", "0.6", "--warmup", "0.3", "--profile", "--format", "json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["teacher"] == "lenet5" and result["input_shape"] == [1, 28, 28]
    for key in ("raw_samples_per_s", "ratio_1_stream", "ratio_4_streams", "ratio_16_streams", "ratio_64_streams",
                "wire_bytes_per_sample"):
        assert key in result
    assert set(result["served"]) == {"1", "4", "16", "64"}
    for streams, setting in result["served"].items():
        assert setting["samples_per_s"] > 0 and setting["p99_ms"] >= setting["p50_ms"] > 0
        assert setting["window"] >= 2 and "rss_per_stream_kb" in setting and setting["server_rss_mb"] > 0
        p = setting["profile"]
        stages = sum(p[f"{stage}_ms"] for stage in STAGES)
        assert all(p[f"{stage}_ms"] >= 0 for stage in STAGES), p
        assert abs(stages - p["server_ms"]) <= 0.05 * p["server_ms"], p  # the stages span the server's time
        assert p["profiled_requests"] > 0 and p["mean_batch"] >= 1
        # The server's share of a request cannot exceed what the client measured around it ...
        assert p["server_ms"] <= 1.05 * p["request_ms"], (streams, p)
        if streams in ("16", "64"):  # ... and under load the stages account for nearly all of it
            assert p["server_ms"] >= 0.8 * p["request_ms"], (streams, p)
    floor = result["grpc_floor"]  # gRPC alone on the server core: the cost any Python gRPC server pays
    assert floor["cpu_ms_per_request"] > 0 and floor["requests_per_s"] > 0 and 0 < floor["ceiling_ratio"] < 1
    wire = result["wire_bytes_per_sample"]
    assert 3.9 < wire["request_float32_over_uint8"] <= 4.0  # float32 pixels cost 4x uint8 on the wire
    assert wire["response_float16"] < wire["response_float32"]
