"""Own models end to end: torchvision families and a user module pruned with the LNPT score,
trained a few guided steps through a real loopback server and exported to a verified ONNX file;
a teacher of another family and resolution; an ONNX teacher served like a PyTorch one.

Small on purpose (64 px, a handful of real photos, 2 training steps, threads=1)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from lnpt.shared.config import load_config
from lnpt.shared.models import InputSpec, build_model
from support.servers import make_teacher, running_server

RGB64 = InputSpec(3, 64, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def user_cnn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A user-defined network (spec `test_models_e2e:user_cnn`)."""
    return nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return make_teacher(tmp_path_factory.mktemp("teacher") / "T.pt", "resnet20", RGB64)


@pytest.fixture(scope="module")
def server(teacher_file):
    with running_server(teacher_file) as srv:
        yield srv


def photos(folder, spec: InputSpec) -> torch.Tensor:
    """Every photo in `folder` as uint8 pixels shaped for `spec`."""
    from lnpt.shared.data import UnlabeledImageFolder

    images = UnlabeledImageFolder(folder, spec)
    return images.take(range(len(images)))


def edge_config(photos, *extra):
    return load_config(None, ["client.insecure=true", "client.target_wire=\"float32\"", "train.threads=1",
                              "train.batch_size=4", "train.augment=false", "prune.samples=6", "prune.batch_size=6",
                              f"export.samples={str(photos)!r}".replace("'", '"'), "export.verify_samples=6", *extra])


@pytest.mark.parametrize("spec, width", [
    ("torchvision:mobilenet_v3_small", 1024),
    ("torchvision:resnet18", 512),
    ("torchvision:shufflenet_v2_x0_5", 1024),
    ("test_models_e2e:user_cnn", 32),
])
def test_family_prunes_trains_through_a_server_and_exports(spec, width, server, real_photo_folder, tmp_path):
    from lnpt.edge import export, prune, train

    config = edge_config(real_photo_folder)
    torch.manual_seed(0)
    model = build_model(spec, 10, RGB64)
    assert model.feature_dim == width  # found automatically: the input of the final Linear

    pruned = prune(model, server.address, real_photo_folder, config=config, sparsity=0.9, out=tmp_path / "S.pt")
    assert pruned.sparsity == pytest.approx(0.9, abs=2e-3)
    before = {k: v.clone() for k, v in pruned.student.model.state_dict().items()}

    trained = train(tmp_path / "S.pt", server.address, real_photo_folder, config=config, max_steps=2,
                    out=tmp_path / "S-trained.pt")
    assert trained.steps == 2
    from lnpt.edge.student import load_student, sparsity

    after, record = load_student(tmp_path / "S-trained.pt")
    assert record.arch == spec and sparsity(after) == pytest.approx(0.9, abs=2e-3)  # masks held
    changed = [k for k, v in after.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert changed, "two guided steps changed no weight"

    exported = export(tmp_path / "S-trained.pt", tmp_path / "S.onnx", config=config)
    assert exported.details["verification"]["dense"]["passed"] and exported.max_abs_diff <= 1e-4
    assert exported.details["outputs"]["features"] == ["batch", width]


def test_teacher_of_another_family_and_resolution_guides_a_student(tmp_path, real_photo_folder):
    """ResNet-18 teacher at 64 px (512 features) -> MobileNetV3-small student at 48 px (1024 features):
    the teacher resizes the student's pixels to its own input, a projector maps the widths."""
    from lnpt.edge.pruning import pipeline
    from lnpt.edge.teachers import LocalTeacher
    from lnpt.edge.training.image_source import ImageSource
    from lnpt.edge.training.trainer import GuidedTrainer
    from lnpt.shared.config import TrainConfig
    from lnpt.shared.data import adapt
    from lnpt.shared.teacher_model import Teacher

    teacher_path = make_teacher(tmp_path / "T.pt", "torchvision:resnet18", RGB64)
    small = InputSpec(3, 48, RGB64.mean, RGB64.std)
    config = edge_config(real_photo_folder)
    pixels = photos(real_photo_folder, small)
    assert pixels.shape[1:] == (3, 48, 48)
    source = LocalTeacher(Teacher.load(teacher_path))
    features, logits = source.targets(pixels)  # 48 px in: the teacher resizes to its own 64 px
    assert features.shape == (len(pixels), 512) and logits.shape == (len(pixels), 10)
    torch.testing.assert_close((features, logits), source.targets(adapt(pixels, RGB64)))

    torch.manual_seed(0)
    student = build_model("torchvision:mobilenet_v3_small", 10, small)
    objective = pipeline.build_objective("learning-gap", config.objective, student.feature_dim, 512)
    report = pipeline.prune_student(student, pipeline.make_batches(pixels, small, 6, source), config.prune,
                                    objective, small)
    assert report["sparsity"] == pytest.approx(0.9, abs=2e-3)
    trainer = GuidedTrainer(student, small, ImageSource(pixels, small, "photos"), source,
                            train=TrainConfig(epochs=1, batch_size=3, augment=False, threads=1, max_steps=2,
                                              checkpoint_every=0),
                            objective=config.objective, teacher_version=source.version, teacher_dim=512,
                            progress=False)
    result = trainer.run()
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))


def test_onnx_teacher_gives_the_pytorch_teachers_targets(tmp_path, real_photo_folder):
    """A teacher exported by `lnpt export` and served by the server gives the same targets as the
    PyTorch teacher (within 1e-4); a foreign graph's inner node is promoted to the features output."""
    import onnx

    from lnpt.edge import export
    from lnpt.edge.student import save_student
    from lnpt.edge.teachers.remote import GuidanceClient
    from lnpt.shared.config import TeacherConfig
    from lnpt.shared.model_file import save_model
    from lnpt.shared.onnx_teacher import OnnxTeacherError
    from lnpt.shared.teacher_model import Teacher

    torch.manual_seed(3)
    model = build_model("torchvision:resnet18", 10, RGB64)
    names = [f"class {i}" for i in range(10)]
    teacher_pt = tmp_path / "T.pt"
    save_model(teacher_pt, model, kind="teacher", input_spec=RGB64, class_names=names)
    save_student(tmp_path / "as-student.pt", model, input_spec=RGB64, class_names=names)
    export(tmp_path / "as-student.pt", tmp_path / "T.onnx", config=edge_config(real_photo_folder))

    pixels = photos(real_photo_folder, RGB64)
    want = Teacher.load(teacher_pt).targets(pixels)
    onnx_teacher = Teacher.load(tmp_path / "T.onnx")  # no configuration: export's names and sidecar
    assert (onnx_teacher.feature_dim, onnx_teacher.num_classes, onnx_teacher.record.class_names) == (512, 10, names)
    torch.testing.assert_close(onnx_teacher.targets(pixels), want, atol=1e-4, rtol=0)
    with running_server(tmp_path / "T.onnx") as srv, \
            GuidanceClient(srv.address, insecure=True, target_wire="float32") as client:
        assert client.info.teacher_id.startswith("onnx:") and client.info.feature_dim == 512
        torch.testing.assert_close(client.targets(pixels), want, atol=1e-4, rtol=0)

    # A graph from elsewhere: only `logits` as output and no sidecar. The input of the final Gemm
    # (the flattened pooled vector) is promoted to the features output by name.
    proto = onnx.load(tmp_path / "T.onnx")
    del proto.graph.output[0]  # drop `features`
    gemm = next(node for node in proto.graph.node if node.op_type == "Gemm")
    foreign = tmp_path / "foreign.onnx"
    onnx.save(proto, foreign)
    config = load_config(None, [f"teacher.onnx_features_output=\"{gemm.input[0]}\"",
                                "teacher.onnx_mean=[0.5, 0.5, 0.5]", "teacher.onnx_std=[0.25, 0.25, 0.25]"])
    promoted = Teacher.load(foreign, config=config.teacher)
    torch.testing.assert_close(promoted.targets(pixels), want, atol=1e-4, rtol=0)
    with pytest.raises(OnnxTeacherError, match=rf"no output or node output named 'pooled'.*graph outputs: logits; "
                                               rf"the last node outputs: .*{gemm.input[0]}"):
        Teacher.load(foreign, config=load_config(None, ["teacher.onnx_features_output=\"pooled\"",
                                                        "teacher.onnx_mean=[0.5, 0.5, 0.5]",
                                                        "teacher.onnx_std=[0.25, 0.25, 0.25]"]).teacher)
    with pytest.raises(OnnxTeacherError, match="set teacher.onnx_mean and teacher.onnx_std"):
        Teacher.load(foreign, config=TeacherConfig(onnx_features_output=gemm.input[0]))
