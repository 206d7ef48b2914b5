"""`lnpt bench data --format json` (tiny settings): one JSON object with the documented keys."""
import json

import pytest

from lnpt.shared.cli import main


@pytest.mark.slow
def test_bench_data_reports_loader_student_and_memory(capsys):
    assert main(["bench", "data", "--images", "48", "--steps", "2", "--memory-counts", "40,80", "--size", "32",
                 "--batch-size", "16", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["loader_images_per_s"]) == {"0", "1", "2"}
    assert all(rate > 0 for rate in result["loader_images_per_s"].values())
    assert result["student_steps_per_s"] > 0 and 0 <= result["trainer_wait_fraction_2_workers"] <= 1
    assert set(result["memory"]) == {"40", "80"} and result["rss_ratio"] > 0
