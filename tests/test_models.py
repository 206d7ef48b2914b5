"""Model specs (zoo | torchvision:NAME[:WEIGHTS] | package.module:factory), penultimate features
found without editing model code, weights, re-heading, sizes, model files and their failures.

The user modules below are real user code: this file is importable as `test_models` (pytest puts
tests/ on sys.path), so `test_models:tiny_cnn` is an ordinary `package.module:factory` spec."""
from __future__ import annotations

import socket
import sys

import pytest
import torch
from torch import nn

from lnpt.shared.model_file import ModelFileError, load_model, save_model
from lnpt.shared.models import InputSpec, ModelError, ModelSpec, build_model, parse_size

RGB64 = InputSpec(3, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


# --- user code, as a user would write it -------------------------------------------------------

def tiny_cnn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A user CNN whose factory takes both arguments."""
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, num_classes))


def fixed_cnn() -> nn.Module:
    """A factory without arguments: 3 channels in, 1000 classes out (like a pretrained model)."""
    return tiny_cnn(1000, 3)


def strided_cnn() -> nn.Module:
    """Three unpadded stride-2 3x3 convolutions: needs at least 15 px per side."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, 2), nn.Conv2d(4, 4, 3, 2), nn.Conv2d(4, 8, 3, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def conv_head_cnn(num_classes: int = 10) -> nn.Module:
    """Logits from a 1x1 convolution (SqueezeNet style): no final Linear to find."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, num_classes, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


# --- tests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, width, head", [
    ("torchvision:mobilenet_v3_small", 1024, "net.classifier.3"),
    ("torchvision:resnet18", 512, "net.fc"),
    ("torchvision:shufflenet_v2_x0_5", 1024, "net.fc"),
    ("test_models:tiny_cnn", 24, "net.9"),
    ("resnet20", 64, "head"),
])
def test_features_are_the_input_of_the_final_linear(spec, width, head):
    torch.manual_seed(0)
    model = build_model(spec, 7, RGB64).eval()
    assert (model.feature_dim, model.num_classes, model.head_name) == (width, 7, head)
    x = torch.randn(3, *RGB64.shape)
    with torch.no_grad():
        features, logits = model.features_and_logits(x)
        assert features.shape == (3, width) and logits.shape == (3, 7)
        assert torch.allclose(model.head(features), logits, atol=1e-5)  # exactly what enters the head
        assert torch.allclose(model(x), logits)


def test_spec_syntax_and_sizes():
    assert ModelSpec.parse("torchvision:resnet50:IMAGENET1K_V2") == ModelSpec("torchvision", "resnet50", "IMAGENET1K_V2")
    assert str(ModelSpec.parse("my.pkg:make").without_weights()) == "my.pkg:make"
    assert str(ModelSpec.parse("torchvision:resnet50:DEFAULT").without_weights()) == "torchvision:resnet50"
    assert parse_size("96") == 96 and parse_size("96x128") == (96, 128)
    spec = InputSpec(3, (48, 64), (0.5,) * 3, (0.5,) * 3)
    assert spec.shape == (3, 48, 64) and InputSpec.from_dict(spec.to_dict()) == spec
    model = build_model("torchvision:mobilenet_v3_small", 5, spec)
    assert model(torch.zeros(2, 3, 48, 64)).shape == (2, 5)
    with pytest.raises(ModelError, match="did you mean resnet18"):
        build_model("torchvision:resnet81")
    with pytest.raises(ModelError, match="HEIGHTxWIDTH"):
        parse_size("96 by 128")


def test_grey_input_and_pretrained_style_factory_are_adapted_and_said(caplog):
    grey = InputSpec(1, 64, (0.5,), (0.5,))
    with caplog.at_level("WARNING", logger="lnpt.shared.models"):
        model = build_model("test_models:fixed_cnn", 4, grey)
    assert model.num_classes == 4 and model.net[0].in_channels == 1
    assert any("re-headed" in note and "4 classes (it had 1000)" in note for note in model.notes)
    assert "re-headed" in caplog.text and "takes 1 channel(s) instead of 3" in caplog.text


def test_too_small_input_fails_at_build_time_with_the_minimum():
    small = InputSpec(3, 12, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ModelError, match=r"input size 12x12 is too small .* at least 15x15\); use --input-size 15 or larger"):
        build_model("test_models:strided_cnn", 10, small)
    assert build_model("test_models:strided_cnn", 10, small.resized(15)).feature_dim == 8


def test_undetectable_feature_node_lists_candidates_and_can_be_named():
    with pytest.raises(ModelError, match=r"no final nn.Linear .* --feature-node .* candidates: 0, 1, 2, 3, 4"):
        build_model("test_models:conv_head_cnn", 10, RGB64)
    model = build_model("test_models:conv_head_cnn", 10, RGB64, feature_node="1")
    features, logits = model.features_and_logits(torch.zeros(2, *RGB64.shape))
    assert features.shape == (2, 8 * 32 * 32) and logits.shape == (2, 10) and model.head is None
    with pytest.raises(ModelError, match="feature node '9' is not a module"):
        build_model("test_models:conv_head_cnn", 10, RGB64, feature_node="9")


def test_unimportable_user_module_names_the_module_and_the_fix(tmp_path):
    with pytest.raises(ModelError, match=r"cannot import module 'no_such_pkg.nets'.*PYTHONPATH"):
        build_model("no_such_pkg.nets:make", 10, RGB64)
    # A model file whose module is gone says the same when loaded.
    (tmp_path / "my_nets.py").write_text("from test_models import tiny_cnn as make\n")
    sys.path.insert(0, str(tmp_path))
    try:
        save_model(tmp_path / "T.pt", build_model("my_nets:make", 10, RGB64), kind="teacher",
                   input_spec=RGB64, class_names=[str(i) for i in range(10)])
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("my_nets")
    record = load_model(tmp_path / "T.pt")
    with pytest.raises(ModelFileError, match=r"cannot import module 'my_nets'.*PYTHONPATH"):
        record.build()


def test_model_file_records_spec_input_and_feature_node(tmp_path):
    spec = InputSpec(3, (40, 56), (0.5,) * 3, (0.25,) * 3)
    model = build_model("torchvision:shufflenet_v2_x0_5", 6, spec, feature_node="conv5")
    save_model(tmp_path / "T.pt", model, kind="teacher", input_spec=spec, class_names=list("abcdef"))
    record = load_model(tmp_path / "T.pt", kind="teacher")
    assert (record.arch, record.feature_node, record.input_spec) == ("torchvision:shufflenet_v2_x0_5", "conv5", spec)
    rebuilt = record.build().eval()
    x = torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(rebuilt.features_and_logits(x), model.eval().features_and_logits(x)))


def test_weights_file_loads_and_reheads(tmp_path):
    torch.manual_seed(1)
    source = build_model("torchvision:resnet18", 1000, RGB64)
    torch.save(source.net.state_dict(), tmp_path / "plain.pth")  # a torchvision-style state dict
    torch.save({"state_dict": source.state_dict()}, tmp_path / "checkpoint.pt")  # a training checkpoint
    for file in ("plain.pth", "checkpoint.pt"):
        model = build_model("torchvision:resnet18", 10, RGB64, weights=tmp_path / file)
        assert torch.equal(model.net.layer4[1].conv2.weight, source.net.layer4[1].conv2.weight)
        assert model.head.out_features == 10 and any("re-headed" in n for n in model.notes)
        assert any("the final Linear fc is new, with 10 classes (the weights file's has 1000)" in n for n in model.notes)
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")  # a pickled module is refused safely
    with pytest.raises(ModelError, match="whole pickled module"):
        build_model("torchvision:resnet18", 10, RGB64, weights=tmp_path / "module.pt")
    with pytest.raises(ModelError, match="does not fit"):
        build_model("torchvision:mobilenet_v3_small", 10, RGB64, weights=tmp_path / "plain.pth")


def download_host_reachable() -> bool:
    try:
        socket.getaddrinfo("download.pytorch.org", 443)
        return True
    except OSError:
        return False


def test_torchvision_weights_offline_name_the_file_and_folder_and_load_from_there(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    if not download_host_reachable():
        with pytest.raises(ModelError, match=rf"resnet18-f37072fd.pth .*put it at {folder}/resnet18-f37072fd.pth"):
            build_model("torchvision:resnet18:IMAGENET1K_V1", 10, RGB64)
    # The file placed where the message says is used (here: real ResNet-18 weights of our own).
    torch.manual_seed(2)
    weights = build_model("torchvision:resnet18", 1000, RGB64).net.state_dict()
    folder.mkdir(parents=True, exist_ok=True)  # the failed download may have made it
    torch.save(weights, folder / "resnet18-f37072fd.pth")
    model = build_model("torchvision:resnet18:IMAGENET1K_V1", 10, RGB64)
    assert torch.equal(model.net.conv1.weight, weights["conv1.weight"])
    assert model.spec == "torchvision:resnet18:IMAGENET1K_V1" and model.head.out_features == 10


def test_features_are_captured_per_thread():
    """The server's batcher threads share one teacher: concurrent passes never mix their features."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from lnpt.shared.models import InputSpec, build_model

    torch.manual_seed(0)
    model = build_model("lenet5", 10, InputSpec(1, 28, (0.5,), (0.5,))).eval()
    inputs = [torch.randn(3 + i, 1, 28, 28) for i in range(8)]
    with torch.no_grad():
        expected = [model.features_and_logits(x)[0] for x in inputs]
        with ThreadPoolExecutor(8) as pool:
            for _ in range(5):
                got = list(pool.map(lambda x: model.features_and_logits(x)[0], inputs))
                assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("spec", ["torchvision:mobilenet_v3_small", "torchvision:resnet18", "torchvision:efficientnet_b0"])
def test_channel_pruning_on_torchvision_families_keeps_the_feature_width(spec):
    from lnpt.edge.pruning.structured import prune_channels

    torch.manual_seed(0)
    model = build_model(spec, 10, RGB64)
    report = prune_channels(model, 0.5, None, [], torch.zeros(1, *RGB64.shape), importance="magnitude")
    assert report["macs_after"] < 0.6 * report["macs_before"]
    features, logits = model.features_and_logits(torch.zeros(2, *RGB64.shape))
    assert features.shape == (2, build_model(spec, 10, RGB64).feature_dim) and logits.shape == (2, 10)


def test_channel_pruning_refuses_what_torch_pruning_cannot_trace():
    """ShuffleNetV2's channel shuffle (view/transpose across groups) breaks Torch-Pruning 1.6's
    index mapping; the user gets one clear line instead of a ZeroDivisionError from its internals."""
    from lnpt.edge.pruning.structured import prune_channels

    model = build_model("torchvision:shufflenet_v2_x0_5", 10, RGB64)
    with pytest.raises(ValueError, match=r"cannot trace the channel dependencies of torchvision:shufflenet_v2_x0_5"
                                         r".*use unstructured pruning \(prune.structured = 0\)"):
        prune_channels(model, 0.5, None, [], torch.zeros(1, *RGB64.shape), importance="magnitude")


def test_class_count_mismatch_fails_at_start_unless_features_only(tmp_path, real_photo_folder):
    from lnpt.edge import prune
    from lnpt.shared.config import load_config
    from lnpt.shared.data import FASHION_MNIST_SPEC
    from support.servers import make_teacher

    teacher = make_teacher(tmp_path / "T.pt", "lenet5", FASHION_MNIST_SPEC)  # 10 classes
    settings = ["model.num_classes=5", "prune.samples=6", "prune.batch_size=6"]
    with pytest.raises(ModelError, match="the student has 5 classes and the teacher 10.*objective.lambda_kd = 0"):
        prune("lenet5", teacher, real_photo_folder, config=load_config(None, settings))
    result = prune("lenet5", teacher, real_photo_folder, config=load_config(None, [*settings, "objective.lambda_kd=0"]))
    assert result.student.model.num_classes == 5 and result.sparsity == pytest.approx(0.9, abs=2e-3)
