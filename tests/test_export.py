"""`lnpt export`: real exports of real students, loaded in ONNX Runtime and compared with PyTorch on
real Fashion-MNIST images. Exports are shared through module-scoped fixtures (each takes seconds)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.nn.utils import prune

from lnpt.edge.onnx.onnx_export import ExportError
from lnpt.edge.onnx.pipeline import ExportOptions, export_student
from lnpt.edge.onnx.sparse import layer_weights
from lnpt.edge.student import load_student, prunable_modules, save_student
from lnpt.shared.model_file import ModelFileError, save_model
from lnpt.shared.cli import main
from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC, normalize
from lnpt.shared.models import build_model

CHECK_IMAGES = slice(1000, 1049)  # 49 = 7 x 7 test images the exporter's own check does not use


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def students(tmp_path_factory, fashion_train):
    """A briefly trained LeNet-5 pruned to 90% (unstructured) and a 50%-channel ResNet-20."""
    import torch_pruning as tp

    folder = tmp_path_factory.mktemp("students")
    torch.manual_seed(0)
    images, labels = fashion_train
    x, y = normalize(images[:4000], FASHION_MNIST_SPEC), labels[:4000]
    lenet = build_model("lenet5", 10, FASHION_MNIST_SPEC)
    optimizer = torch.optim.Adam(lenet.parameters(), 3e-3)
    for i in range(0, len(x), 100):  # one short epoch: trained enough for int8 agreement to mean something
        loss = torch.nn.functional.cross_entropy(lenet(x[i:i + 100]), y[i:i + 100])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prune.global_unstructured([(m, "weight") for m in prunable_modules(lenet).values()],
                              pruning_method=prune.L1Unstructured, amount=0.9)
    save_student(folder / "lenet90.pt", lenet, input_spec=FASHION_MNIST_SPEC,
                 class_names=list(FASHION_MNIST_CLASSES), teacher_version="teacher-v1")

    resnet = build_model("resnet20", 10, FASHION_MNIST_SPEC).eval()
    tp.pruner.MetaPruner(resnet, torch.zeros(1, *FASHION_MNIST_SPEC.shape),
                         importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
                         ignored_layers=[resnet.head]).step()
    save_student(folder / "resnet20_half.pt", resnet, input_spec=FASHION_MNIST_SPEC,
                 class_names=list(FASHION_MNIST_CLASSES), teacher_version="teacher-v1", structured=True)
    paths = {"lenet90": folder / "lenet90.pt", "structured": folder / "resnet20_half.pt"}
    return {name: (path, sha256(path)) for name, path in paths.items()}


KINDS = {  # artifact name -> (student, options)
    "dense": ("lenet90", dict()),
    "sparse": ("lenet90", dict(storage="sparse")),
    "int8": ("lenet90", dict(quantize="int8")),
    "int8-static-sparse": ("lenet90", dict(quantize="int8-static", storage="sparse", calibration_samples=64)),
    "structured": ("structured", dict()),
}


@pytest.fixture(scope="module")
def exports(students, tmp_path_factory):
    folder = tmp_path_factory.mktemp("exports")
    results = {}
    for name, (student, options) in KINDS.items():
        results[name] = export_student(students[student][0], folder / f"{name}.onnx",
                                       ExportOptions(verify_samples=32, **options))
    return results


def pytorch_outputs(student_path, images):
    model, _ = load_student(student_path)
    model.eval()
    with torch.inference_mode():
        features, logits = model.features_and_logits(images)
    return {"features": features.numpy(), "logits": logits.numpy()}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("batch_size", [1, 7])
def test_artifact_matches_pytorch_on_real_images(kind, batch_size, exports, students, fashion_test):
    student, options = KINDS[kind]
    images = normalize(fashion_test[0][CHECK_IMAGES], FASHION_MNIST_SPEC)
    expected = pytorch_outputs(students[student][0], images)
    session = ort.InferenceSession(exports[kind]["output"], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["features", "logits"]
    batches = [session.run(None, {"images": images[i:i + batch_size].numpy()}) for i in range(0, len(images), batch_size)]
    features, logits = (np.concatenate([b[k] for b in batches]) for k in range(2))
    if "int8" in kind:
        agreement = (logits.argmax(1) == expected["logits"].argmax(1)).mean()
        relative = np.linalg.norm(logits - expected["logits"]) / np.linalg.norm(expected["logits"])
        assert agreement >= 0.9 and relative < 0.1, (agreement, relative)
    else:
        np.testing.assert_allclose(features, expected["features"], atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(logits, expected["logits"], atol=1e-4, rtol=1e-4)


def test_sparse_file_is_smaller_than_dense_at_90_percent(exports):
    dense, sparse = exports["dense"], exports["sparse"]
    dense_size = len(open(dense["output"], "rb").read())
    sparse_size = len(open(sparse["output"], "rb").read())
    assert sparse_size < 0.4 * dense_size, (sparse_size, dense_size)
    proto = onnx.load(sparse["output"])
    encoded = {tensor.values.name for tensor in proto.graph.sparse_initializer}
    assert "body.7.weight" in encoded  # the largest layer; layers kept denser than ~1/3 stay dense
    for tensor in proto.graph.sparse_initializer:  # spec-valid: int64 linear indices
        assert tensor.indices.data_type == onnx.TensorProto.INT64 and len(tensor.indices.dims) == 1
    assert sparse["sizes"]["dense"]["bytes"] == dense_size


@pytest.mark.parametrize("kind", ["dense", "sparse", "int8", "int8-static-sparse"])
def test_exported_sparsity_equals_the_students(kind, exports, students):
    model, _ = load_student(students["lenet90"][0])
    student_zeros = {f"{name}.weight": int((m.weight == 0).sum()) for name, m in prunable_modules(model).items()}
    weights = layer_weights(onnx.load(exports[kind]["output"]), list(student_zeros))
    exported_zeros = {name: int(array.size - np.count_nonzero(array)) for name, array in weights.items()}
    if "int8" in kind:  # symmetric int8 keeps every zero; a few tiny weights may round to zero too
        assert all(exported_zeros[n] >= student_zeros[n] for n in student_zeros)
        assert sum(exported_zeros.values()) <= 1.02 * sum(student_zeros.values())
    else:
        assert exported_zeros == student_zeros
    assert exports[kind]["sparsity"]["student"] == pytest.approx(0.9, abs=1e-3)


def test_structured_student_exports_a_smaller_dense_graph(exports, students):
    result = exports["structured"]
    proto = onnx.load(result["output"])
    assert not len(proto.graph.sparse_initializer)
    stored = sum(int(np.prod(init.dims)) for init in proto.graph.initializer)
    full = sum(p.numel() for p in build_model("resnet20", 10, FASHION_MNIST_SPEC).parameters())
    assert stored < 0.4 * full, (stored, full)  # half the channels: about a quarter of the weights
    assert result["structured"] and result["params"] < 0.4 * result["full_width_params"]


def test_sidecar_describes_input_classes_and_sparsity(exports):
    result = exports["sparse"]
    sidecar = json.loads(open(result["sidecar"]).read())
    assert sidecar["input"]["name"] == "images" and sidecar["input"]["dtype"] == "float32"
    assert sidecar["input"]["normalisation"]["mean"] == pytest.approx(list(FASHION_MNIST_SPEC.mean))
    assert sidecar["input"]["normalisation"]["std"] == pytest.approx(list(FASHION_MNIST_SPEC.std))
    assert sidecar["class_names"] == list(FASHION_MNIST_CLASSES)
    assert sidecar["teacher_version"] == "teacher-v1"
    assert sidecar["sparsity"]["exported"] == pytest.approx(sidecar["sparsity"]["student"])
    assert set(sidecar["sparsity"]["per_layer"]) == {"body.0.weight", "body.3.weight", "body.7.weight",
                                                     "body.9.weight", "head.weight"}
    assert sidecar["sha256"] == hashlib.sha256(open(result["output"], "rb").read()).hexdigest()
    proto = onnx.load(result["output"])
    assert proto.ir_version == 10 == sidecar["ir_version"]  # onnxruntime 1.31 refuses onnx 1.23's default IR 14
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_student_files_are_never_modified(exports, students):
    for path, digest in students.values():
        assert sha256(path) == digest


def test_cli_logits_only_with_ort_prints_one_json_object(students, tmp_path, capsys, real_photo_folder):
    """Verified on a folder of real photos (6 files, converted to the student's 28x28 grey)."""
    out = tmp_path / "app.onnx"
    code = main(["export", "--student", str(students["lenet90"][0]), "--out", str(out), "--storage", "sparse",
                 "--logits-only", "--ort", "--samples", str(real_photo_folder), "--format", "json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["outputs"]) == ["logits"]
    ort_file = tmp_path / "app.ort"
    assert result["ort_file"] == str(ort_file) and ort_file.is_file()
    session = ort.InferenceSession(str(ort_file), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert result["verification"]["sparse"]["batch_sizes"] == [1, 6, 7]
    assert result["verification"]["sparse"]["samples"] == 6


def test_verification_failure_writes_nothing(students, tmp_path):
    out = tmp_path / "strict.onnx"
    with pytest.raises(ExportError, match="does not match PyTorch"):
        export_student(students["lenet90"][0], out, ExportOptions(tolerance=0.0, verify_samples=16))
    assert not out.exists() and not (tmp_path / "strict.onnx.json").exists()


def test_corrupt_and_mismatched_students_are_refused(students, tmp_path, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a model file at all")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(students["lenet90"][0].read_bytes()[:2000])
    teacher = tmp_path / "teacher.pt"
    save_model(teacher, build_model("lenet5", 10, FASHION_MNIST_SPEC), kind="teacher",
               input_spec=FASHION_MNIST_SPEC, class_names=list(FASHION_MNIST_CLASSES))
    for path, message in ((garbage, "not a readable lnpt model file"), (truncated, "not a readable lnpt model file"),
                          (teacher, "is a teacher model file, expected a student"),
                          (tmp_path / "missing.pt", "no such file")):
        with pytest.raises(ModelFileError, match=message):
            export_student(path, tmp_path / "x.onnx", ExportOptions())
    # through the CLI: one clear line, exit status 2, nothing written
    assert main(["export", "--student", str(teacher), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "expected a student" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_structured_flag_without_narrowed_weights_is_refused(students, tmp_path):
    """A student whose weights do not fit its recorded architecture names the mismatch."""
    model, record = load_student(students["structured"][0])
    wrong = tmp_path / "mismatched.pt"
    save_model(wrong, model, kind="student", input_spec=record.input_spec, class_names=record.class_names,
               extra={**record.extra, "structured": False})
    with pytest.raises(ModelFileError, match="do not fit architecture"):
        export_student(wrong, tmp_path / "x.onnx", ExportOptions())


def test_out_may_not_be_the_student(students):
    path = students["lenet90"][0]
    with pytest.raises(ExportError, match="student file itself"):
        export_student(path, path, ExportOptions())
