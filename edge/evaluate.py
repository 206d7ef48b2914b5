"""Evaluation of a student: accuracy (labels are read here and only here), sparsity, and agreement
with the teacher (top-1 match and learning gap) when a teacher is given."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from lnpt.edge.student import sparsity
from lnpt.shared.data import DataError, UnlabeledImageFolder, adapt, safe_name
from lnpt.shared.inference import outputs, top1
from lnpt.shared.objectives import learning_gap
from lnpt.shared.zoo import InputSpec, ZooNet


def labeled_folder(root: str | Path, spec: InputSpec, class_names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels from `root/<class>/...`; a folder name is a class name (as written by
    `lnpt data write-folder --class-folders`) or a class index."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"test folder {root} does not exist")
    by_name = {safe_name(name): i for i, name in enumerate(class_names)} | {name: i for i, name in enumerate(class_names)}
    images, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = by_name.get(folder.name)
        if label is None and folder.name.isdigit() and int(folder.name) < len(class_names):
            label = int(folder.name)
        if label is None:
            raise DataError(f"{folder}: folder name is not one of the student's classes "
                            f"({', '.join(class_names)}) nor a class index")
        batch = UnlabeledImageFolder(folder, spec).load_all()
        images.append(batch)
        labels.append(torch.full((len(batch),), label, dtype=torch.long))
    if not images:
        raise DataError(f"{root} has no class sub-folders; accuracy needs <root>/<class name>/<images>")
    return torch.cat(images), torch.cat(labels)


def evaluate(model: ZooNet, spec: InputSpec, images: torch.Tensor, labels: torch.Tensor | None = None,
             teacher=None, batch_size: int = 256, gap_kind: str = "mse") -> dict:
    """Metrics of `model` on uint8 `images`; `teacher` is a target source (sources.py / guidance)."""
    images = adapt(images, spec)
    features, logits = outputs(model, images, spec, batch_size)
    result = {"samples": len(images), "sparsity": sparsity(model)}
    if labels is not None:
        result["accuracy"] = top1(logits, labels)
    if teacher is not None:
        chunks = [images[s:s + batch_size] for s in range(0, len(images), batch_size)]
        pairs = list(teacher.stream(chunks))
        teacher_features = torch.cat([f for f, _ in pairs])
        teacher_logits = torch.cat([z for _, z in pairs])
        result["teacher_agreement"] = top1(logits, teacher_logits)
        if labels is not None:
            result["teacher_accuracy"] = top1(teacher_logits, labels)
        if teacher_features.shape == features.shape:
            result["learning_gap"] = float(learning_gap(features, teacher_features, gap_kind))
    return result
