"""Verification of every written artifact: ONNX checker, an ONNX Runtime CPU session, and outputs
compared with PyTorch on real images at several batch sizes.

Pass criteria (documented in the sidecar and `--help`):
- float graphs: max |onnx - torch| over all outputs <= tolerance * max(1, max |torch|), i.e. an
  absolute tolerance for outputs of order 1 that scales with larger outputs;
- int8 graphs: the top-1 class agrees with PyTorch on at least `min_agreement` of the samples.
  The max abs and relative L2 error of the logits are reported beside it, not bounded: int8
  error depends on the weights' range, agreement on what the app actually uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lnpt.edge.onnx.onnx_export import INPUT_NAME, ExportError

BATCH_SIZES = (1, 7)


@dataclass
class Reference:
    """Real input images (normalised float32) and PyTorch's outputs for them, by output name."""

    images: np.ndarray
    outputs: dict[str, np.ndarray]


def reference_outputs(model, images) -> Reference:
    """PyTorch's features and logits for a normalised float batch, in eval mode, no gradients."""
    import torch

    model.eval()
    with torch.inference_mode():
        features, logits = model.features_and_logits(images)
    return Reference(images.numpy().astype(np.float32),
                     {"features": features.numpy(), "logits": logits.numpy()})


def session(model, threads: int = 1):
    """A CPU ONNX Runtime session from bytes or a path (an .onnx or .ort file)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportError(f"onnxruntime {ort.__version__} cannot load the exported model: {exc}") from exc


def run_batched(sess, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Run all `images` through `sess` in chunks of `batch_size`; outputs concatenated by name."""
    names = [o.name for o in sess.get_outputs()]
    chunks = [sess.run(names, {INPUT_NAME: images[i:i + batch_size]}) for i in range(0, len(images), batch_size)]
    return {name: np.concatenate([c[k] for c in chunks]) for k, name in enumerate(names)}


def check_graph(proto) -> None:
    """onnx.checker; the full check (with shape inference) unless the graph has sparse initializers,
    which the full check rejects when they feed Conv although the spec and ONNX Runtime accept them."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=not len(proto.graph.sparse_initializer))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the exported graph: {exc}") from exc


def compare(sess, reference: Reference, *, quantized: bool, tolerance: float, min_agreement: float,
            batch_sizes=BATCH_SIZES) -> dict:
    """Outputs of `sess` against PyTorch at each batch size (and all samples at once)."""
    sizes = sorted({*batch_sizes, len(reference.images)})
    max_abs = {}
    agreement, relative = 1.0, 0.0
    for size in sizes:
        outputs = run_batched(sess, reference.images, size)
        for name, value in outputs.items():
            expected = reference.outputs[name]
            if value.shape != expected.shape:
                raise ExportError(f"output {name!r} has shape {value.shape} at batch {size}, "
                                  f"PyTorch gives {expected.shape}")
            max_abs[name] = max(max_abs.get(name, 0.0), float(np.abs(value - expected).max()))
        logits, expected = outputs["logits"], reference.outputs["logits"]
        agreement = min(agreement, float((logits.argmax(1) == expected.argmax(1)).mean()))
        relative = max(relative, float(np.linalg.norm(logits - expected) / max(np.linalg.norm(expected), 1e-12)))
    worst = max(max_abs.values())
    scale = max(1.0, max(float(np.abs(reference.outputs[n]).max()) for n in max_abs))
    if quantized:
        passed = agreement >= min_agreement
        criterion = f"top-1 agreement {agreement:.3f} >= {min_agreement}"
    else:
        passed = worst <= tolerance * scale
        criterion = f"max abs diff {worst:.3g} <= {tolerance} x {scale:.3g}"
    return {"passed": passed, "criterion": criterion, "max_abs_diff": worst, "max_abs_diff_per_output": max_abs,
            "top1_agreement": agreement, "logits_relative_error": relative, "batch_sizes": sizes,
            "samples": len(reference.images)}


def accuracy(sess, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    logits = run_batched(sess, images, batch_size)["logits"]
    return float((logits.argmax(1) == labels).mean())


def verify(model, proto, reference: Reference, *, quantized: bool, tolerance: float, min_agreement: float,
           what: str, threads: int = 1) -> dict:
    """Check the graph (`proto`, when given), load `model` (bytes or path) in ONNX Runtime and
    compare with PyTorch; raises ExportError naming `what` when it does not pass."""
    import onnxruntime as ort

    if proto is not None:
        check_graph(proto)
    sess = session(model, threads)
    result = compare(sess, reference, quantized=quantized, tolerance=tolerance, min_agreement=min_agreement)
    result["runtime"] = f"onnxruntime {ort.__version__} CPUExecutionProvider"
    if not result["passed"]:
        raise ExportError(f"{what} does not match PyTorch: {result['criterion']} is false "
                          f"(max abs diff {result['max_abs_diff']:.3g}, top-1 agreement {result['top1_agreement']:.3f})")
    return result
