"""Smoke test of `lnpt bench reliability --quick --format json`: the keys exist, nothing was lost."""
from __future__ import annotations

import json
import subprocess
import sys


def test_bench_reliability_json_reports_no_loss_and_no_crash():
    done = subprocess.run([sys.executable, "-m", "lnpt.shared.cli", "bench", "reliability", "--quick", "--clients", "8",
                           "--format", "json"], capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    for key in ("samples_lost", "server_crashes", "bad_inputs_tried", "faults_survived", "errors_by_code", "load"):
        assert key in result
    assert result["samples_lost"] == 0 and result["server_crashes"] == 0
    assert result["faults_survived"] == result["faults_injected"] > 0
    assert result["bad_inputs_tried"] > 300
    assert result["hostile_input"]["undefined_status"] == 0
    assert result["security"]["as_expected"] == "8/8"
    flood = result["connection_flood"]
    assert flood["served_within_1s"] and result["connections_held_off"] == flood["idle_connections"] - 64
    assert result["oversized_flood"]["within_budget"] and result["peak_rss_mb"] > 0
    assert result["health_latency_under_flood_ms"] < 1000
    assert result["watch_flood"]["watches_open"] == 64 and result["watch_flood"]["new_stream_ok"]
