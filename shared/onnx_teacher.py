"""An ONNX file as the teacher, run by ONNX Runtime: which outputs are the features and the logits,
its input spec, and the checks done once at start.

Outputs are named by `teacher.onnx_features_output` / `teacher.onnx_logits_output` (defaults
`features` / `logits`, what `lnpt export` writes). A name that is not a graph output but the output
of a node inside the graph is promoted to a graph output, so a foreign classifier's penultimate
tensor can be served without re-exporting it. The input spec (channels, height, width, mean, std)
comes from the `lnpt export` sidecar (`FILE.onnx.json`) when there is one, else from the graph's
input shape and `teacher.onnx_mean` / `teacher.onnx_std`. The graph takes NORMALISED float32 input
(N, C, H, W), as `lnpt export` writes it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lnpt.shared.errors import LnptError
from lnpt.shared.models import InputSpec

SIDECAR_FORMAT = "lnpt-onnx-sidecar"


class OnnxTeacherError(LnptError, ValueError):
    """An ONNX teacher file or its output names do not fit; the message lists what is available."""


@dataclass
class OnnxTeacherFile:
    """A checked ONNX teacher: the graph (with promoted outputs) and what the server reports about it."""

    path: Path
    model_bytes: bytes
    input_name: str
    features_output: str
    logits_output: str
    input_spec: InputSpec
    class_names: list[str]
    feature_dim: int
    num_classes: int
    version: str
    arch: str
    fixed_batch: int = 0  # the graph's batch size when it is not dynamic; 0 = any
    kind: str = "teacher"
    extra: dict[str, Any] = field(default_factory=dict)


def read_onnx_teacher(path: str | os.PathLike, config=None) -> OnnxTeacherFile:
    """Read and check an ONNX teacher (`config`: the [teacher] section, or None for the defaults)."""
    try:
        import onnx
    except ImportError as exc:
        raise OnnxTeacherError("serving an ONNX teacher needs onnx and onnxruntime: pip install 'lnpt[edge]'") from exc
    path = Path(path)
    if not path.is_file():
        raise OnnxTeacherError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise OnnxTeacherError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from exc
    sidecar = read_sidecar(path)
    features_name = getattr(config, "onnx_features_output", "features") or "features"
    logits_name = getattr(config, "onnx_logits_output", "logits") or "logits"
    initializers = {init.name for init in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise OnnxTeacherError(f"{path}: a teacher graph takes one image input, this one has "
                               f"{[i.name for i in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        raise OnnxTeacherError(f"{path}: input {inputs[0].name!r} has {len(dims)} dimensions; expected N x C x H x W")
    spec = onnx_input_spec(path, dims, sidecar, config)
    for name in (features_name, logits_name):
        promote_output(proto, name, path)
    model_bytes = proto.SerializeToString()
    session = make_session(model_bytes, "cpu")
    batch = dims[0] or 2
    features, logits = run(session, inputs[0].name, features_name, logits_name,
                           np.zeros((batch, *spec.shape), np.float32))
    if logits.ndim != 2 or features.shape[0] != batch or logits.shape[0] != batch:
        raise OnnxTeacherError(f"{path}: outputs {features_name!r} {tuple(features.shape)} and {logits_name!r} "
                               f"{tuple(logits.shape)} for a batch of {batch}; expected (N, features) and (N, classes)")
    num_classes = int(logits.shape[1])
    names = list(sidecar.get("class_names") or [str(i) for i in range(num_classes)])
    if len(names) != num_classes:
        raise OnnxTeacherError(f"{path}: the sidecar names {len(names)} classes, the graph gives {num_classes} logits")
    return OnnxTeacherFile(path, model_bytes, inputs[0].name, features_name, logits_name, spec, names,
                           int(features.reshape(batch, -1).shape[1]), num_classes,
                           hashlib.sha256(data).hexdigest()[:16], f"onnx:{sidecar.get('arch') or path.stem}",
                           dims[0], extra={"sidecar": bool(sidecar)})


def read_sidecar(path: Path) -> dict:
    """The `lnpt export` sidecar beside the file (`model.onnx.json`), or {}."""
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():
        return {}
    try:
        data = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise OnnxTeacherError(f"{sidecar}: unreadable sidecar ({exc}); fix or remove it") from exc
    return data if isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT else {}


def onnx_input_spec(path: Path, dims: list[int], sidecar: dict, config) -> InputSpec:
    """Channels and size from the graph (or the sidecar), mean/std from the sidecar or the config."""
    described = sidecar.get("input", {})
    shape = described.get("shape", [])
    channels, height, width = dims[1:]
    if len(shape) == 4 and not (channels and height and width):
        channels, height, width = (int(s) for s in shape[1:])
    if not (channels and height and width):
        raise OnnxTeacherError(f"{path}: the input's C x H x W is not fixed in the graph {dims}; export it with "
                               "a fixed image size (only the batch may be dynamic)")
    norm = described.get("normalisation", {})
    mean = list(norm.get("mean") or getattr(config, "onnx_mean", []) or [])
    std = list(norm.get("std") or getattr(config, "onnx_std", []) or [])
    if not mean or not std:
        raise OnnxTeacherError(f"{path}: no sidecar gives the input normalisation; set teacher.onnx_mean and "
                               f"teacher.onnx_std ({channels} values each, pixels in [0, 1])")
    try:
        return InputSpec(channels, (height, width), tuple(mean), tuple(std))
    except ValueError as exc:
        raise OnnxTeacherError(f"{path}: {exc}") from exc


def promote_output(proto, name: str, path: Path) -> None:
    """Make `name` a graph output: already one, or a node output inside the graph; else fail with the names."""
    import onnx

    outputs = [o.name for o in proto.graph.output]
    if name in outputs:
        return
    produced = [out for node in proto.graph.node for out in node.output if out]
    if name not in produced:
        raise OnnxTeacherError(f"{path}: no output or node output named {name!r} (teacher.onnx_features_output / "
                               f"teacher.onnx_logits_output); graph outputs: {', '.join(outputs)}; the last node "
                               f"outputs: {', '.join(produced[-15:])}")
    inferred = onnx.shape_inference.infer_shapes(proto)
    info = next((v for v in inferred.graph.value_info if v.name == name), None)
    proto.graph.output.append(info or onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))


def make_session(model_bytes: bytes, device: str, threads: int = 0):
    """An ONNX Runtime session: the CUDA provider for a cuda device when this onnxruntime has it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(model_bytes, options, providers=providers)
    except Exception as exc:
        raise OnnxTeacherError(f"onnxruntime {ort.__version__} cannot load the teacher graph: {exc}") from exc


def run(session, input_name: str, features_name: str, logits_name: str, x: np.ndarray):
    features, logits = session.run([features_name, logits_name], {input_name: x})
    return np.asarray(features), np.asarray(logits)


class OnnxNet(nn.Module):
    """The ONNX teacher behind the `features_and_logits` interface of every lnpt model (inference only)."""

    def __init__(self, record: OnnxTeacherFile, device: str = "cpu"):
        super().__init__()
        self.record = record
        self.session = make_session(record.model_bytes, device)
        self.feature_dim, self.num_classes = record.feature_dim, record.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.record
        array = x.detach().to("cpu", torch.float32).numpy()
        step = r.fixed_batch or len(array)
        chunks = []
        for start in range(0, len(array), max(step, 1)):
            chunk = array[start:start + step]
            short = step - len(chunk) if r.fixed_batch else 0
            if short:  # a fixed-batch graph: pad the last chunk, drop the padding after
                chunk = np.concatenate([chunk, np.zeros((short, *chunk.shape[1:]), np.float32)])
            f, z = run(self.session, r.input_name, r.features_output, r.logits_output, chunk)
            chunks.append((f[:len(f) - short].reshape(len(f) - short, -1), z[:len(z) - short]))
        features = torch.from_numpy(np.concatenate([f for f, _ in chunks]))
        logits = torch.from_numpy(np.concatenate([z for _, z in chunks]))
        return features.to(x.device), logits.to(x.device)
