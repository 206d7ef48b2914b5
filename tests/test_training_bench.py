"""Smoke test of `lnpt bench train --format json` (tiny settings; the figures are not checked)."""
from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_train_prints_one_json_object_with_the_ratio_and_peak_rss():
    done = subprocess.run([sys.executable, "-m", "lnpt.shared.cli", "bench", "train", "--model", "lenet5",
                           "--steps", "3", "--warmup", "2", "--rounds", "1", "--format", "json"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for key in ("guided_over_supervised", "cpu_guided_over_supervised", "peak_rss_mb", "guided_steps_per_s",
                "supervised_steps_per_s"):
        assert result[key] > 0, (key, result)
    for key in ("target_wait_fraction", "loop_wait_fraction"):
        assert 0 <= result[key] < 1, (key, result)
    assert result["reconnects"] == 0


def test_bench_train_sizes_its_rounds_from_the_measured_step_time():
    """Without --steps a round lasts about ROUND_SECONDS of supervised training: a LeNet-5 step takes a
    few ms, so well over the 60-step floor (60 steps were 0.3 s, too short for a stable ratio)."""
    from lnpt.lab.bench.train import MIN_STEPS

    done = subprocess.run([sys.executable, "-m", "lnpt.shared.cli", "bench", "train", "--model", "lenet5",
                           "--warmup", "2", "--rounds", "1", "--format", "json"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["steps"] > MIN_STEPS
