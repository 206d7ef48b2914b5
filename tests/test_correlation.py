"""The across-run correlation of claim 1 on synthetic grids with known answers."""
import numpy as np
import pytest

from lnpt.lab.paper.correlation import across_runs, spearman


def test_spearman_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)  # with a tie
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_across_runs_separates_a_real_predictor_from_noise():
    rng = np.random.default_rng(3)
    accuracy = rng.uniform(0.6, 0.9, 60)
    runs = [{"test_accuracy": a, "learning_gap": 1 - a + rng.normal(0, 0.01),  # a real (negative) predictor
             "weight_distance_init": rng.normal(), "weight_distance_teacher": None} for a in accuracy]
    result = across_runs(runs, ["learning_gap", "weight_distance_init", "weight_distance_teacher"], resamples=500)
    gap, noise = result["learning_gap"], result["weight_distance_init"]
    assert gap["rho"] < -0.9 and gap["interval"][1] < -0.8 and gap["runs"] == 60
    assert abs(noise["rho"]) < 0.3 and noise["interval"][0] < 0 < noise["interval"][1]
    assert result["weight_distance_teacher"] == {"rho": None, "interval": None, "runs": 0}
