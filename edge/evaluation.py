"""Evaluation of a student: accuracy (labels are read here and only here), sparsity, and agreement
with the teacher (top-1 match and learning gap) when a teacher is given.

`evaluate()` is what `lnpt eval`, the edge job and the demo call; `metrics()` is the measurement
itself on tensors, for experiments that hold their data in memory."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from lnpt.edge.student import Student, sparsity
from lnpt.edge.teachers import TargetSource, opened_teacher
from lnpt.shared.config import Config, DataConfig
from lnpt.shared.data import adapt, as_preprocess, load_fashion_mnist
from lnpt.shared.labeled import open_labeled
from lnpt.shared.preprocess import Preprocess
from lnpt.shared.inference import outputs, top1
from lnpt.shared.objectives import learning_gap
from lnpt.shared.models import InputSpec
from lnpt.shared.zoo import ZooNet


def labeled_folder(root: str | Path, spec: InputSpec | Preprocess, class_names: Sequence[str],
                   data: DataConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images and labels (in the model's class order) of a labeled folder — one sub-folder per
    class, named as the class (as `lnpt data write-folder --class-folders` writes it) or its index —
    or of a .csv of path,label rows. Images are shaped by `spec` (pass the model's recorded
    Preprocess to evaluate exactly as exported); `data` = the [data] section (workers, on_bad_file,
    max_pixels, CSV columns); bad files are skipped and counted, or stop the run, by its policy."""
    source = open_labeled(root, as_preprocess(spec), data).relabeled(class_names)
    images, labels = [], []
    for _, batch, batch_labels in source.in_order():
        images.append(batch)
        labels.append(batch_labels)
    return torch.cat(images), torch.cat(labels)


def metrics(model: ZooNet, spec: InputSpec, images: torch.Tensor, labels: torch.Tensor | None = None,
            teacher=None, batch_size: int = 256, gap_kind: str = "mse") -> dict:
    """Metrics of `model` on uint8 `images`; `teacher` is a target source (`lnpt.edge.teachers`)."""
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


@dataclass
class EvalResult:
    """What `evaluate` measured; fields without a teacher or labels are None."""

    samples: int
    sparsity: float
    data: str
    accuracy: float | None = None
    teacher_agreement: float | None = None
    teacher_accuracy: float | None = None
    learning_gap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def evaluate(student: Student | str | os.PathLike, images: str | os.PathLike | torch.Tensor | None = None,
             labels: torch.Tensor | None = None, *, teacher: TargetSource | str | None = None,
             config: Config | None = None, limit: int = 0, batch_size: int = 256) -> EvalResult:
    """Accuracy, sparsity and (with a teacher) agreement and learning gap of a student.

    images   a folder with one sub-folder per class (the labels), a uint8 tensor with `labels`, or
             None for the Fashion-MNIST test set; `limit` keeps the first N images
    teacher  a target source, a teacher file or `host:port` (connected with [client] settings)

        >>> from lnpt.edge import evaluate
        >>> evaluate("student-trained.pt", teacher="teacher.pt", limit=1000).accuracy  # doctest: +SKIP
    """
    config = config or Config()
    if not isinstance(student, Student):
        student = Student.load(student)
    spec = student.input_spec
    if isinstance(images, torch.Tensor):
        name = f"tensor of {len(images)} images"
    elif images is not None:
        images, labels, name = *labeled_folder(images, student.preprocess or spec, student.class_names,
                                               config.data), str(images)
    else:
        (images, labels), name = load_fashion_mnist(train=False, root=config.data.root or None), "fashion-mnist:test"
    if limit:
        images, labels = images[:limit], (labels[:limit] if labels is not None else None)
    with opened_teacher(teacher if teacher is not None else False, config.client) as source:
        measured = metrics(student.model, spec, images, labels, source, batch_size, config.objective.gap)
    return EvalResult(data=name, **measured)
