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


def test_weight_distance_needs_the_same_architecture_and_the_normalized_gap_does_not(fashion_test):
    """LeNet-5 and ResNet-20 share only `head.bias` by name and shape: that is no distance between them.
    The normalized gap through the fixed projector is defined for any pair of widths."""
    import torch

    from lnpt.lab.paper.experiment import effective_weights, measure, weight_distance
    from lnpt.shared.data import FASHION_MNIST_SPEC
    from lnpt.shared.inference import outputs
    from lnpt.shared.models import build_model
    from lnpt.shared.objectives import Targets

    torch.manual_seed(0)
    lenet, resnet = build_model("lenet5", 10, FASHION_MNIST_SPEC), build_model("resnet20", 10, FASHION_MNIST_SPEC)
    assert weight_distance(lenet, effective_weights(resnet)) is None
    assert weight_distance(lenet, effective_weights(lenet)) == 0.0
    torch.manual_seed(1)
    other = build_model("lenet5", 10, FASHION_MNIST_SPEC)
    assert weight_distance(other, effective_weights(lenet)) > 0
    images, labels = fashion_test
    images, labels = images[:64], labels[:64]
    features, logits = outputs(resnet, images, FASHION_MNIST_SPEC, 64)
    metrics = measure(lenet, FASHION_MNIST_SPEC, images, labels, Targets(features=features, logits=logits))
    assert "learning_gap" not in metrics and 0 <= metrics["learning_gap_normalized"] <= 4


def test_a_constant_side_has_no_correlation_rather_than_a_crash():
    runs = [{"gap": float(i), "accuracy": 0.1} for i in range(5)]  # every student at chance
    assert across_runs(runs, ["gap"], target="accuracy") == {"gap": {"rho": None, "interval": None, "runs": 5}}
