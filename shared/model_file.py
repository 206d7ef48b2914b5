"""Model files: how a teacher or student is saved, versioned and rebuilt.

A model file (teacher or student) is a `torch.save`d dict loaded with `weights_only=True`, so a
file from elsewhere cannot run code. It holds how to rebuild the model and everything needed to
serve it: the model spec (`arch`: a zoo name, `torchvision:NAME[:WEIGHTS]` or
`package.module:factory`), class count and names, input spec, feature node, state dict and a
content-derived version id. Rebuilding never downloads: pretrained weights named in the spec are
already in the state dict. A file whose user module cannot be imported fails with the module
name and the fix.
`extra` carries side-specific data (a student's masks, teacher version, pruned structure, ...).
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lnpt.shared.errors import LnptError
from lnpt.shared.files import atomic_save
from lnpt.shared.models import Classifier, InputSpec, ModelError, ModelSpec, build_model
from lnpt.shared.preprocess import Preprocess

FORMAT = "lnpt-model"
FORMAT_VERSION = 1


class ModelFileError(LnptError, RuntimeError):
    """A model file is missing, corrupt, or not what the caller needs."""


def state_version(state_dict: dict[str, torch.Tensor]) -> str:
    """A short content hash of the weights: equal weights give equal versions on any machine."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class ModelFile:
    """The parsed contents of a model file."""

    kind: str  # "teacher" or "student"
    arch: str  # the model spec
    num_classes: int
    input_spec: InputSpec
    class_names: list[str]
    state_dict: dict[str, torch.Tensor]
    version: str
    extra: dict[str, Any] = field(default_factory=dict)
    feature_node: str = ""  # "" = the input of the final Linear
    preprocess: Preprocess | None = None  # how raw images become input; None = the spec's default

    def __post_init__(self) -> None:
        if self.preprocess is None:
            self.preprocess = Preprocess.for_spec(self.input_spec)

    def build(self, load_weights: bool = True) -> Classifier:
        """Rebuild the model from its spec and load the weights (strict: every key must match).

        A channel-pruned model (`extra["structured"]`) is rebuilt at full width and then narrowed
        to the shapes stored in its state dict.
        """
        model = self.architecture()
        if self.extra.get("structured"):
            narrow_to_state_dict(model, self.state_dict)
        if load_weights:
            try:
                model.load_state_dict(self.state_dict)
            except RuntimeError as exc:
                raise ModelFileError(f"weights do not fit architecture {self.arch!r}: {exc}") from exc
        return model

    def architecture(self) -> Classifier:
        """The untrained full-width network of this file's spec (pretrained weights are never fetched:
        the state dict holds them)."""
        try:
            spec = ModelSpec.parse(self.arch).without_weights()
            model = build_model(spec, self.num_classes, self.input_spec, feature_node=self.feature_node,
                                announce=False)
        except ModelError as exc:
            raise ModelFileError(f"cannot rebuild model {self.arch!r}: {exc}") from exc
        model.spec = self.arch  # keep the pretrained origin in the name
        return model

def save_model(
    path: str | os.PathLike,
    model: Classifier,
    *,
    kind: str,
    input_spec: InputSpec,
    class_names: list[str],
    extra: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
    preprocess: Preprocess | None = None,
) -> ModelFile:
    """Save `model` atomically; returns what was written (including its version id)."""
    state = {k: v.detach().to("cpu").clone() for k, v in (state_dict or model.state_dict()).items()}
    record = ModelFile(kind, model.spec, model.num_classes, input_spec, list(class_names), state,
                       state_version(state), dict(extra or {}), model.feature_node, preprocess)
    atomic_save(
        {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": record.kind,
            "arch": record.arch, "num_classes": record.num_classes,
            "input_spec": input_spec.to_dict(), "class_names": record.class_names,
            "state_dict": state, "version": record.version, "extra": record.extra,
            "feature_node": record.feature_node, "preprocess": record.preprocess.to_dict(),
        },
        path,
    )
    return record


def load_model(path: str | os.PathLike, kind: str | None = None) -> ModelFile:
    """Read and validate a model file; `kind` ("teacher"/"student") is checked when given."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for garbage input
        raise ModelFileError(f"{path}: not a readable lnpt model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an lnpt model file (missing format marker {FORMAT!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: format version {raw.get('format_version')} is not supported "
                              f"(this lnpt reads version {FORMAT_VERSION})")
    try:
        record = ModelFile(
            kind=str(raw["kind"]), arch=str(raw["arch"]), num_classes=int(raw["num_classes"]),
            input_spec=InputSpec.from_dict(raw["input_spec"]), class_names=list(raw["class_names"]),
            state_dict=dict(raw["state_dict"]), version=str(raw["version"]), extra=dict(raw.get("extra", {})),
            feature_node=str(raw.get("feature_node", "")),
            preprocess=Preprocess.from_dict(raw["preprocess"]) if raw.get("preprocess") else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: incomplete or invalid model file ({exc})") from exc
    if kind is not None and record.kind != kind:
        raise ModelFileError(f"{path}: is a {record.kind} model file, expected a {kind}")
    if state_version(record.state_dict) != record.version:
        raise ModelFileError(f"{path}: weights do not match their recorded version {record.version} (corrupt?)")
    return record


def narrow_to_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Resize Conv2d, Linear and BatchNorm2d modules in place to the shapes in `state_dict`.

    Channel pruning (Torch-Pruning) changes only these widths, so the pruned architecture is fully
    described by the weight shapes; no pickled module objects are needed to rebuild it.
    """
    for name, module in model.named_modules():
        weight = state_dict.get(f"{name}.weight" if name else "weight")
        if weight is None:
            continue
        if isinstance(module, nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels
            module.out_channels = weight.shape[0]
            module.groups = weight.shape[0] if depthwise else module.groups
            module.in_channels = weight.shape[1] * module.groups
        elif isinstance(module, nn.Linear):
            module.out_features, module.in_features = weight.shape
        elif isinstance(module, nn.BatchNorm2d):
            module.num_features = weight.shape[0]
        else:
            continue
        for pname, param in list(module.named_parameters(recurse=False)):
            shape = state_dict[f"{name}.{pname}"].shape
            setattr(module, pname, nn.Parameter(torch.empty(shape, dtype=param.dtype)))
        for bname, buf in list(module.named_buffers(recurse=False)):
            key = f"{name}.{bname}"
            if buf is not None and key in state_dict and buf.dim() > 0:
                module.register_buffer(bname, torch.empty(state_dict[key].shape, dtype=buf.dtype))
