"""PyTorch student -> one self-contained ONNX graph with stable names and a dynamic batch.

The graph takes the NORMALISED float32 input `images` (N, C, H, W): apps apply the student's
mean/std themselves (the sidecar JSON states them), so the graph has no preprocessing baked in.
Outputs are `features` (the penultimate vector, as `Classifier.features_and_logits`) and `logits`,
or only `logits` for apps that just classify.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from lnpt.shared.errors import LnptError
from lnpt.shared.models import Classifier, InputSpec

INPUT_NAME = "images"
OUTPUT_NAMES = ("features", "logits")
# onnx 1.23 stamps IR version 14 on models it rewrites, which onnxruntime 1.31 refuses (13 is its
# maximum). So every file gets the lowest IR version its opsets allow, and never below 10 (what
# torch 2.14's exporter emits).
MIN_IR_VERSION = 10
MAX_IR_VERSION = 13  # the newest that onnxruntime 1.31 loads
MAX_PROTOBUF_BYTES = 2**31 - 1  # protobuf's hard limit for one self-contained file
MAX_BATCH = 4096


class ExportError(LnptError, RuntimeError):
    """An export step failed or an artifact did not pass verification."""


class ExportGraph(nn.Module):
    """The student's modules under their own names, so ONNX initializers keep the student's
    parameter names (`body.0.weight`, `head.weight`, `net.fc.weight`), which is how sparsity is
    matched per layer. The model itself is held outside the module tree (no `model.` prefix)."""

    def __init__(self, model: Classifier, logits_only: bool):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        self.features_and_logits = model.features_and_logits
        self.logits_only = logits_only

    def forward(self, images: torch.Tensor):
        features, logits = self.features_and_logits(images)
        return logits if self.logits_only else (features, logits)


def output_names(logits_only: bool) -> tuple[str, ...]:
    return OUTPUT_NAMES[1:] if logits_only else OUTPUT_NAMES


def to_onnx(model: Classifier, spec: InputSpec, *, opset: int, logits_only: bool = False):
    """Export a copy of `model` (masks made permanent, eval mode); returns an `onnx.ModelProto`.

    `model` itself is never changed: masks are removed on a deep copy.
    """
    plain = permanent_copy(model).eval()
    example = torch.zeros(2, *spec.shape)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on its own internals, not ours
            program = torch.onnx.export(
                ExportGraph(plain, logits_only), (example,), dynamo=True, opset_version=opset,
                input_names=[INPUT_NAME], output_names=list(output_names(logits_only)),
                dynamic_shapes={INPUT_NAME: {0: batch}}, external_data=False, verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; the user needs one clear line
        raise ExportError(f"torch.onnx.export failed for {model.spec} at opset {opset}: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    proto = program.model_proto
    # The exporter also lists every initializer in value_info; the quantizer rewrites some of them
    # (Gemm weights get transposed) and shape inference then fails on the stale entries.
    initializers = {init.name for init in proto.graph.initializer}
    kept = [info for info in proto.graph.value_info if info.name not in initializers]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    written = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if written != opset:
        raise ExportError(f"torch's exporter cannot write opset {opset} for {model.spec} (it wrote opset "
                          f"{written}); choose --opset {written} or newer")
    pin_ir_version(proto)
    return proto


def permanent_copy(model: Classifier) -> Classifier:
    """A deep copy with masks made permanent (`prune.remove`); `model` keeps its masks."""
    from lnpt.edge.student import make_permanent, prunable_modules

    with torch.no_grad():
        # prune's hook leaves `weight` as a non-leaf product after a grad-enabled forward, which
        # deepcopy refuses; recompute it as a plain tensor (same values) first.
        for module in prunable_modules(model).values():
            if hasattr(module, "weight_mask"):
                module.weight = module.weight_orig * module.weight_mask
        return make_permanent(copy.deepcopy(model))


def pin_ir_version(proto) -> int:
    """Set the lowest IR version the model's opsets allow (at least 10); refuse what ORT cannot load."""
    from onnx import helper

    proto.ir_version = max(MIN_IR_VERSION, helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True))
    if proto.ir_version > MAX_IR_VERSION:
        raise ExportError(f"opsets {[(o.domain, o.version) for o in proto.opset_import]} need IR version "
                          f"{proto.ir_version}; onnxruntime 1.31 loads at most {MAX_IR_VERSION}: choose a lower --opset")
    return proto.ir_version


def serialize(proto) -> bytes:
    """One self-contained file's bytes, with the IR version pinned (rewrites may have changed it)."""
    pin_ir_version(proto)
    if proto.ByteSize() > MAX_PROTOBUF_BYTES:
        raise ExportError(f"the model is {proto.ByteSize() / 2**30:.2f} GiB; one ONNX file holds at most 2 GiB "
                          "(prune or quantize it further)")
    return proto.SerializeToString()
