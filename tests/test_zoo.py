import pytest
import torch

from lnpt.shared.models import InputSpec, build_model
from lnpt.shared.zoo import MODEL_NAMES

GREY = InputSpec(1, 28, (0.5,), (0.5,))
RGB = InputSpec(3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
FEATURE_WIDTH = {"lenet5": 84, "resnet20": 64, "resnet32": 64, "resnet56": 64, "vgg11_bn": 512,
                 "vgg16_bn": 512, "vgg19_bn": 512, "resnet18": 512, "mobilenet_v2": 1280}


@pytest.mark.parametrize("spec", [GREY, RGB], ids=["grey28", "rgb32"])
@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_features_and_logits_have_documented_widths(arch, spec):
    model = build_model(arch, num_classes=7, input_spec=spec).eval()
    assert model.feature_dim == FEATURE_WIDTH[arch] and model.num_classes == 7
    x = torch.randn(3, *spec.shape)
    with torch.no_grad():
        features, logits = model.features_and_logits(x)
        assert features.shape == (3, FEATURE_WIDTH[arch]) and logits.shape == (3, 7)
        # features are exactly what enters the final Linear
        assert torch.allclose(model.head(features), logits)
        assert torch.allclose(model(x), logits)


def test_resnet_depth_follows_6n_plus_2():
    convs = lambda m: sum(isinstance(x, torch.nn.Conv2d) and x.kernel_size == (3, 3) for x in m.modules())
    assert convs(build_model("resnet20")) == 19 and convs(build_model("resnet56")) == 55


def test_unknown_model_and_bad_spec_are_refused():
    with pytest.raises(ValueError, match="unknown model 'resnet7'; choose one of: lenet5"):
        build_model("resnet7")
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        InputSpec(3, 32, (0.5,), (0.5,))
