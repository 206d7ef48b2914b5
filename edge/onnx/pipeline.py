"""`export_student`: student file -> verified ONNX artifact (+ sidecar JSON, optional .ort).

Stages: load the student; export a dense float graph and verify it; quantize (optional) and
verify; sparse-encode (optional, always last) and verify; write the artifact and its sidecar
atomically; convert to .ort (optional) and verify that too. Every artifact is verified from the
exact bytes that are written, and nothing is written when a verification fails. The student file
is only read.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from lnpt.edge.onnx.onnx_export import INPUT_NAME, ExportError, output_names

SIDECAR_FORMAT = "lnpt-onnx-sidecar"
SIDECAR_VERSION = 1


@dataclass
class ExportOptions:
    """Everything `export_student` needs beyond the paths; `from_config` maps the [export] section."""

    opset: int = 18
    storage: str = "dense"  # "dense" or "sparse" initializers
    quantize: str = "none"  # "none", "int8" (dynamic) or "int8-static"
    tolerance: float = 1e-4
    int8_min_agreement: float = 0.9
    logits_only: bool = False
    ort: bool = False
    verify_samples: int = 64
    samples: str = ""  # folder of real images for verification; empty = Fashion-MNIST test images
    calibration: str = ""  # folder of unlabeled images for int8-static; empty = Fashion-MNIST train images
    calibration_samples: int = 128
    eval_fashion_mnist: int = 0  # labeled Fashion-MNIST test images to measure accuracy on; 0 = off
    data_root: str = ""
    threads: int = 1

    @classmethod
    def from_config(cls, config, **extra) -> "ExportOptions":
        e = config.export
        return cls(opset=e.opset, storage=e.format, quantize=e.quantize, tolerance=e.tolerance,
                   int8_min_agreement=e.int8_min_agreement, logits_only=e.logits_only, ort=e.ort,
                   verify_samples=e.verify_samples, samples=e.samples, calibration=e.calibration,
                   calibration_samples=e.calibration_samples, data_root=config.data.root, **extra)


def gzip_size(data: bytes) -> int:
    """What a zip/gzip app bundle would store for `data`: deflate at level 6, the zip tools' default
    (level 9 gains ~1% and takes 15x longer on files full of zeros)."""
    return len(gzip.compress(data, compresslevel=6, mtime=0))


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def real_images(spec, folder: str, count: int, data_root: str, train: bool):
    """uint8 images shaped for `spec` (an InputSpec or the model's Preprocess): from `folder` when
    given (bad files skipped), else Fashion-MNIST (pixels only)."""
    from lnpt.shared.data import UnlabeledImageFolder, adapt, load_fashion_mnist

    if folder:
        dataset = UnlabeledImageFolder(folder, spec)
        return dataset.take(range(min(count, len(dataset))))
    images, _ = load_fashion_mnist(train=train, root=data_root or None)
    return adapt(images[:count], spec)


def student_sparsity(model) -> dict:
    from lnpt.edge.onnx.sparse import sparsity_report
    from lnpt.edge.student import plain_state_dict, prunable_modules

    state = plain_state_dict(model)
    return sparsity_report({f"{name}.weight": state[f"{name}.weight"].numpy() for name in prunable_modules(model)})


def count_params(model) -> int:
    from lnpt.edge.student import plain_state_dict

    return sum(v.numel() for k, v in plain_state_dict(model).items() if v.is_floating_point())


def export_student(student: str | Path, out: str | Path, options: ExportOptions,
                   progress: Callable[[str], None] = lambda line: None) -> dict:
    """Export, verify and write; returns the summary (also stored in the sidecar)."""
    import onnx
    import onnxruntime
    import torch

    from lnpt.edge.onnx import quantize as quant
    from lnpt.edge.onnx import sparse
    from lnpt.edge.onnx.onnx_export import serialize, to_onnx
    from lnpt.edge.onnx.verify import reference_outputs, verify
    from lnpt.edge.student import load_student
    from lnpt.shared.files import atomic_write
    from lnpt.shared.data import normalize

    student, out = Path(student), Path(out)
    if out.suffix == ".ort":
        raise ExportError(f"--out {out}: name the .onnx file; --ort writes the .ort file beside it")
    if out.exists() and student.exists() and out.resolve() == student.resolve():
        raise ExportError(f"--out {out} is the student file itself; choose another path (the student is never overwritten)")
    stages = ["load student", "export dense ONNX", "verify dense"]
    stages += ["quantize " + options.quantize, "verify int8"] if options.quantize != "none" else []
    stages += ["encode sparse", "verify sparse"] if options.storage == "sparse" else []
    stages += ["write artifact"] + (["convert .ort"] if options.ort else [])
    step = iter(range(1, len(stages) + 1))

    def stage(name: str) -> None:
        progress(f"[{next(step)}/{len(stages)}] {name}")

    stage("load student")
    model, record = load_student(student)
    model.eval()
    spec = record.input_spec
    pixels = real_images(record.preprocess, options.samples, options.verify_samples, options.data_root, train=False)
    reference = reference_outputs(model, normalize(pixels, spec))
    if options.logits_only:
        reference.outputs.pop("features")
    check = dict(tolerance=options.tolerance, min_agreement=options.int8_min_agreement, threads=options.threads)

    stage("export dense ONNX")
    with torch.no_grad():
        proto = to_onnx(model, spec, opset=options.opset, logits_only=options.logits_only)
    dense_bytes = serialize(proto)
    sizes = {"dense": {"bytes": len(dense_bytes), "gzip_bytes": gzip_size(dense_bytes)}}

    stage("verify dense")
    verification = {"dense": verify(dense_bytes, proto, reference, quantized=False, what="the dense ONNX graph", **check)}
    artifact, artifact_bytes, quantized = proto, dense_bytes, options.quantize != "none"

    if quantized:
        stage("quantize " + options.quantize)
        calibration = None
        if options.quantize == "int8-static":
            calib_pixels = real_images(record.preprocess, options.calibration, options.calibration_samples, options.data_root, train=True)
            calibration = normalize(calib_pixels, spec).numpy()
        artifact = quant.quantize(proto, options.quantize, calibration)
        artifact_bytes = serialize(artifact)
        sizes["int8"] = {"bytes": len(artifact_bytes), "gzip_bytes": gzip_size(artifact_bytes)}
        stage("verify int8")
        verification["int8"] = verify(artifact_bytes, artifact, reference, quantized=True,
                                      what=f"the {options.quantize} graph", **check)

    encoding = None
    if options.storage == "sparse":
        stage("encode sparse")
        artifact, encoding = sparse.to_sparse(artifact)
        artifact_bytes = serialize(artifact)
        sizes["sparse"] = {"bytes": len(artifact_bytes), "gzip_bytes": gzip_size(artifact_bytes)}
        stage("verify sparse")
        verification["sparse"] = verify(artifact_bytes, artifact, reference, quantized=quantized,
                                        what="the sparse ONNX file", **check)

    sparsity = compare_sparsity(student_sparsity(model), artifact, quantized)
    result = {
        "student": str(student), "student_version": record.version, "arch": record.arch,
        "teacher_version": record.extra.get("teacher_version", ""), "structured": bool(record.extra.get("structured")),
        "output": str(out), "sidecar": str(sidecar_path(out)), "ort_file": None,
        "storage": options.storage, "quantize": options.quantize, "opset": options.opset, "ir_version": artifact.ir_version,
        "input": input_description(spec, record.preprocess),
        "outputs": {name: ["batch", model.feature_dim if name == "features" else model.num_classes]
                    for name in output_names(options.logits_only)},
        "class_names": list(record.class_names),
        "params": count_params(model),
        "full_width_params": count_params(record.architecture()),
        "sizes": {**sizes, "artifact": dict(sizes[list(sizes)[-1]])},  # the last stage is what was written
        "sparse_encoded_initializers": encoding.encoded if encoding else [],
        "sparsity": sparsity,
        "verification": verification,
        "tolerance": options.tolerance, "int8_min_agreement": options.int8_min_agreement,
        "max_abs_diff": verification[list(verification)[-1]]["max_abs_diff"],
        "accuracy": None,
        "runtimes": [f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider"],
        "onnx_version": onnx.__version__,
        "sha256": hashlib.sha256(artifact_bytes).hexdigest(),
    }
    dense_size = sizes["dense"]["bytes"]
    result["artifact_over_dense_size"] = len(artifact_bytes) / dense_size
    result["artifact_gzip_over_dense_size"] = result["sizes"]["artifact"]["gzip_bytes"] / dense_size

    if options.eval_fashion_mnist:
        result["accuracy"] = fashion_mnist_accuracy(model, record, artifact_bytes, options)

    ort_bytes = None
    if options.ort:  # before anything is written: a failed conversion leaves no half-finished set
        stage("convert .ort")
        result["ort"], ort_bytes = convert_to_ort(artifact_bytes, reference, quantized, check)
        if ort_bytes is not None:
            result["ort_file"] = str(out.with_suffix(".ort"))
            result["runtimes"].append(f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider loading the "
                                      ".ort file (ORT format for ONNX Runtime Mobile)")

    stage("write artifact")
    atomic_write(out, lambda f: f.write(artifact_bytes))
    if ort_bytes is not None:
        atomic_write(out.with_suffix(".ort"), lambda f: f.write(ort_bytes))
    write_sidecar(result)
    return result


@dataclass
class ExportResult:
    """What `export` wrote and verified; `details` is the full summary (also in the sidecar JSON)."""

    path: Path
    sidecar: Path
    bytes: int
    gzip_bytes: int
    max_abs_diff: float
    accuracy: dict | None
    details: dict


def export(student, out: str | Path, *, config=None, overwrite: bool = False,
           progress: Callable[[str], None] = lambda line: None, **options) -> ExportResult:
    """Export a student file (or a saved Student) to a verified ONNX file with its sidecar JSON.

    Every artifact is checked (onnx.checker, an ONNX Runtime session, outputs against PyTorch on
    real images); nothing is written when a check fails. `config` gives the [export] settings;
    `options` override ExportOptions fields by name (storage="sparse", quantize="int8-static",
    eval_fashion_mnist=1000, ...). An existing `out` is refused unless `overwrite`.

        >>> from lnpt.edge import export
        >>> export("student-trained.pt", "student.onnx", storage="sparse").bytes  # doctest: +SKIP
    """
    from lnpt.shared.config import Config

    path = getattr(student, "path", student)
    if path is None:
        raise ExportError("the student has no file yet: save it first (student.save(path))")
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; choose another --out, or pass --overwrite to replace it")
    chosen = ExportOptions.from_config(config or Config())
    unknown = set(options) - set(chosen.__dataclass_fields__)
    if unknown:
        raise ExportError(f"unknown export option(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(chosen.__dataclass_fields__)}")
    details = export_student(path, out, replace(chosen, **options), progress)
    artifact = details["sizes"]["artifact"]
    return ExportResult(out, Path(details["sidecar"]), artifact["bytes"], artifact["gzip_bytes"],
                        details["max_abs_diff"], details["accuracy"], details)


def fashion_mnist_accuracy(model, record, artifact_bytes: bytes, options: ExportOptions) -> dict:
    """Top-1 accuracy of PyTorch and of the artifact on the first N labeled Fashion-MNIST test images."""
    import torch

    from lnpt.edge.onnx.verify import accuracy, session
    from lnpt.shared.data import FASHION_MNIST_CLASSES, adapt, load_fashion_mnist, normalize

    if tuple(record.class_names) != FASHION_MNIST_CLASSES:
        raise ExportError("--eval-fashion-mnist needs a student of Fashion-MNIST's 10 classes; "
                          f"this one has classes {record.class_names[:5]}...")
    images, labels = load_fashion_mnist(train=False, root=options.data_root or None)
    count = options.eval_fashion_mnist
    images, labels = normalize(adapt(images[:count], record.preprocess), record.input_spec), labels[:count].numpy()
    with torch.inference_mode():
        torch_accuracy = float((model(images).argmax(1).numpy() == labels).mean())
    return {"samples": len(labels), "torch": torch_accuracy,
            "onnx": accuracy(session(artifact_bytes, options.threads), images.numpy(), labels)}


def input_description(spec, preprocess=None) -> dict:
    """What the app feeds the graph; `preprocess` (lnpt.shared.preprocess) says how to get there from
    a camera image: channel mode, resize, crop or pad, interpolation, mean/std."""
    from lnpt.shared.preprocess import Preprocess

    return {
        "name": INPUT_NAME, "dtype": "float32", "shape": ["batch", *spec.shape], "layout": "NCHW",
        "color": "grey" if spec.channels == 1 else "RGB",
        "normalisation": {"mean": list(spec.mean), "std": list(spec.std),
                          "formula": "images = (pixels / 255 - mean[c]) / std[c], pixels uint8 in [0, 255]; "
                                     "the app applies it, the graph does not"},
        "preprocess": (preprocess or Preprocess.for_spec(spec)).to_dict(),
    }


def compare_sparsity(student: dict, artifact, quantized: bool) -> dict:
    """Zeros per layer in the student and in the artifact's initializers; refuses lost zeros.

    Float graphs hold the same zeros (BatchNorm folding scales a channel, it cannot fill a zero);
    symmetric int8 keeps every zero and may round a few tiny weights to zero as well.
    """
    from lnpt.edge.onnx.sparse import layer_weights, sparsity_report

    try:
        exported = sparsity_report(layer_weights(artifact, list(student["per_layer"])))
    except KeyError as exc:
        raise ExportError(f"cannot match the student's layers in the exported graph: {exc}") from exc
    lost = [name for name, value in student["per_layer"].items() if exported["per_layer"][name] < value - 1e-12]
    if lost:
        raise ExportError(f"the exported graph lost pruned zeros in {lost[:5]} (masks not applied?)")
    return {"student": student["overall"], "exported": exported["overall"], "quantized": quantized,
            "per_layer": {name: {"student": student["per_layer"][name], "exported": exported["per_layer"][name]}
                          for name in student["per_layer"]}}


def convert_to_ort(onnx_bytes: bytes, reference, quantized: bool, check: dict) -> tuple[dict, bytes | None]:
    """The model in ORT format for ONNX Runtime Mobile, verified like the .onnx file; a skip
    message instead when this onnxruntime has no converter."""
    import importlib.util
    import tempfile

    from lnpt.edge.onnx.verify import verify

    if importlib.util.find_spec("onnxruntime.tools.convert_onnx_models_to_ort") is None:
        return {"skipped": "this onnxruntime install has no onnxruntime.tools.convert_onnx_models_to_ort"}, None
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    with tempfile.TemporaryDirectory(prefix="lnpt-ort-") as tmp:
        source = Path(tmp) / "model.onnx"
        source.write_bytes(onnx_bytes)
        chatter = io.StringIO()  # the converter prints to stdout, which must stay one JSON object
        try:
            with contextlib.redirect_stdout(chatter):
                convert_onnx_models_to_ort(source, Path(tmp) / "out", [OptimizationStyle.Fixed])
        except Exception as exc:  # the converter raises many types
            raise ExportError(f".ort conversion failed: {type(exc).__name__}: {exc} {chatter.getvalue()[-500:]}") from exc
        produced = next((Path(tmp) / "out").glob("*.ort"), None)
        if produced is None:
            raise ExportError(f".ort conversion produced no file: {chatter.getvalue()[-500:]}")
        data = produced.read_bytes()
    verification = verify(data, None, reference, quantized=quantized, what="the .ort file", **check)
    return {"bytes": len(data), "gzip_bytes": gzip_size(data), "verification": verification}, data


def write_sidecar(result: dict) -> None:
    """The app-facing description of the artifact, beside it (model.onnx -> model.onnx.json)."""
    from lnpt.shared.files import atomic_write

    sidecar = {"format": SIDECAR_FORMAT, "format_version": SIDECAR_VERSION,
               "verification_criteria": {
                   "float": "max |onnx - torch| over all outputs <= tolerance * max(1, max |torch|)",
                   "int8": "top-1 class agrees with PyTorch on at least int8_min_agreement of the samples"},
               **{k: v for k, v in result.items() if k not in ("student", "sidecar", "output", "ort_file")},
               # names, not paths: the sidecar travels with the model into an app bundle
               "file": Path(result["output"]).name,
               "ort_file": Path(result["ort_file"]).name if result["ort_file"] else None}
    text = json.dumps(sidecar, indent=2, default=_jsonable)
    atomic_write(sidecar_path(Path(result["output"])), lambda f: f.write(text.encode()))


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
