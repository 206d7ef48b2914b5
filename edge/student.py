"""The student: any lnpt model (`lnpt.shared.models.Classifier`) with fixed pruning masks, saved and
loaded as a model file.

Masks live on the modules through `torch.nn.utils.prune` (weight = weight_orig * weight_mask), so
pruned weights stay exactly zero through any optimizer step. On disk a student keeps plain weights
(zeros included) plus the boolean masks, so loading re-applies the same masks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from lnpt.shared.preprocess import Preprocess
from lnpt.shared.model_file import ModelFileError, ModelFile, load_model, save_model
from lnpt.shared.models import Classifier, InputSpec

PRUNABLE = (nn.Conv2d, nn.Linear)


def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d and Linear by qualified name: their weights are what pruning removes.

    Names are those of `model.named_modules()` (`body.0`, `head` in the zoo; `net.features.0.0`,
    `net.fc` for torchvision and user networks), which is how masks are keyed in student files."""
    return {name: m for name, m in model.named_modules() if isinstance(m, PRUNABLE)}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Attach fixed masks with `prune.custom_from_mask` (replacing any existing ones)."""
    modules = prunable_modules(model)
    unknown = set(masks) - set(modules)
    if unknown:
        raise ModelFileError(f"masks name layers the model does not have: {sorted(unknown)[:5]}")
    for name, mask in masks.items():
        module = modules[name]
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
        if mask.shape != module.weight.shape:
            raise ModelFileError(f"mask for {name} has shape {tuple(mask.shape)}, "
                                  f"weight has {tuple(module.weight.shape)}")
        prune.custom_from_mask(module, "weight", mask.to(module.weight.device, torch.bool))


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight_mask.detach().to("cpu", torch.bool).clone()
            for name, m in prunable_modules(model).items() if hasattr(m, "weight_mask")}


def make_permanent(model: nn.Module) -> nn.Module:
    """`prune.remove` on every masked layer: plain `weight` parameters with the zeros baked in."""
    for module in prunable_modules(model).values():
        if hasattr(module, "weight_mask"):
            prune.remove(module, "weight")
    return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as if masks were permanent (weight = weight_orig * mask), without touching model."""
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("weight_mask"):
            continue
        if key.endswith("weight_orig"):
            prefix = key[: -len("weight_orig")]
            key, value = prefix + "weight", value * model.state_dict()[prefix + "weight_mask"]
        state[key] = value
    return state


def sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all prunable weights (masked or permanently zero)."""
    total = zeros = 0
    for module in prunable_modules(model).values():
        total += module.weight.numel()
        zeros += int((module.weight == 0).sum())
    return zeros / max(total, 1)


def save_student(path: str | os.PathLike, model: Classifier, *, input_spec: InputSpec, class_names: list[str],
                 teacher_version: str = "", structured: bool = False, extra: dict[str, Any] | None = None,
                 preprocess: Preprocess | None = None) -> ModelFile:
    """Save a (possibly masked, possibly channel-pruned) student atomically."""
    info = {"teacher_version": teacher_version, "masks": current_masks(model), "structured": structured,
            **(extra or {})}
    return save_model(path, model, kind="student", input_spec=input_spec, class_names=class_names,
                      extra=info, state_dict=plain_state_dict(model), preprocess=preprocess)


def load_student(path: str | os.PathLike) -> tuple[Classifier, ModelFile]:
    """Load a student file and re-apply its masks; refuses teacher files and corrupt files."""
    record = load_model(path, kind="student")
    model = record.build()
    masks = record.extra.get("masks") or {}
    if masks:
        apply_masks(model, masks)
    return model, record


@dataclass
class Student:
    """A student network with what training, evaluation and export need to know about it.

    `model` carries its pruning masks; `input_spec` and `class_names` come from the teacher it was
    pruned for; `extra` holds the pruning report and training summary that travel with the file.

        >>> student = Student.load("runs/demo/student.pt")     # doctest: +SKIP
        >>> student.save("copy.pt").version                     # doctest: +SKIP
    """

    model: Classifier
    input_spec: InputSpec
    class_names: list[str]
    teacher_version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    path: Path | None = None
    preprocess: Preprocess | None = None  # how raw images become input (None: the input spec's default)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Student":
        model, record = load_student(path)
        extra = {k: v for k, v in record.extra.items() if k not in ("masks", "teacher_version", "structured")}
        return cls(model, record.input_spec, record.class_names, record.extra.get("teacher_version", ""),
                   {**extra, "structured": bool(record.extra.get("structured"))}, record.version, Path(path),
                   record.preprocess)

    @property
    def sparsity(self) -> float:
        return sparsity(self.model)

    def save(self, path: str | os.PathLike) -> "Student":
        """Write the model file atomically; `version` and `path` then describe what was written."""
        extra = {k: v for k, v in self.extra.items() if k != "structured"}
        record = save_student(path, self.model, input_spec=self.input_spec, class_names=self.class_names,
                              teacher_version=self.teacher_version, structured=bool(self.extra.get("structured")),
                              extra=extra, preprocess=self.preprocess)
        self.version, self.path = record.version, Path(path)
        return self
