"""int8 quantization with onnxruntime.quantization: dynamic, or static with calibration images.

Weights are quantized symmetrically (zero point 0), so a pruned weight stays exactly 0 in int8
and sparse encoding still applies afterwards. Quantize BEFORE sparse encoding: the quantizer
cannot read sparse initializers. Dynamic int8 convolutions are not faster on typical CPUs; this
is a size tool (4x smaller weights), not a speed tool.

Static int8 is QDQ with uint8 activations and int8 weights (U8S8), the pairing ONNX Runtime's x86
and ARM64 int8 kernels are built around: on an AVX-512 VNNI CPU, int8 activations (S8S8) ran a
channel-pruned ResNet-20 1.7x slower than U8S8 at batch 1 (`lnpt bench device` measures it). Channel
pruning works before it (the quantizer sees an ordinary, narrower float graph). Whether int8 is
faster than float at all depends on the CPU: see `lnpt bench device`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from lnpt.edge.onnx.onnx_export import INPUT_NAME, ExportError, pin_ir_version

MODES = ("int8", "int8-static")


class ImageBatches(CalibrationDataReader):
    """Calibration reader over normalised float32 images (N, C, H, W)."""

    def __init__(self, images: np.ndarray, batch_size: int = 32):
        self.batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
        self.position = 0

    def get_next(self):
        if self.position >= len(self.batches):
            return None
        self.position += 1
        return {INPUT_NAME: self.batches[self.position - 1]}

    def rewind(self) -> None:
        self.position = 0


def quantize(proto, mode: str, calibration: np.ndarray | None = None):
    """A quantized copy of `proto` (an onnx.ModelProto with dense initializers)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if mode not in MODES:
        raise ExportError(f"unknown quantization {mode!r}; choose one of {', '.join(MODES)}")
    if len(proto.graph.sparse_initializer):
        raise ExportError("quantize before sparse encoding: the model already has sparse initializers")
    symmetric = {"WeightSymmetric": True}  # zero point 0: pruned weights stay exact zeros
    with tempfile.TemporaryDirectory(prefix="lnpt-quantize-") as tmp:
        exported, source, target = Path(tmp) / "float.onnx", Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(proto, exported)
        try:
            # ONNX Runtime's recommended preparation: shape inference and graph optimisation
            quant_pre_process(exported, source)
            if mode == "int8":
                quantize_dynamic(source, target, weight_type=QuantType.QInt8, extra_options=symmetric)
            else:
                if calibration is None or not len(calibration):
                    raise ExportError("static int8 quantization needs calibration images")
                quantize_static(source, target, ImageBatches(calibration), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                per_channel=True, extra_options={**symmetric, "ActivationSymmetric": False})
        except ExportError:
            raise
        except Exception as exc:  # the quantizer raises many types
            raise ExportError(f"{mode} quantization failed: {type(exc).__name__}: {exc}") from exc
        quantized = onnx.load_model(target)
    pin_ir_version(quantized)
    return quantized
