"""`prune()`: a fresh student pruned before training, guided by the teacher on unlabeled images.

This is what `lnpt prune`, the edge job and the demo call. The steps (samples -> teacher targets ->
channels -> scores -> masks) live in `pipeline.py`; this module decides the student, its input and
classes, the samples and the teacher, and writes the results.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lnpt.edge.pruning import pipeline
from lnpt.edge.pruning.masks import PruneError
from lnpt.edge.student import Student
from lnpt.edge.teachers import TargetSource, opened_teacher
from lnpt.shared.config import Config, updated
from lnpt.shared.data import FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC, UnlabeledImageFolder, load_fashion_mnist
from lnpt.shared.models import Classifier, InputSpec, check_classes, input_spec_from_config, model_from_config
from lnpt.shared.preprocess import Preprocess


@dataclass
class PruneResult:
    """What `prune` made: the masked student, its density report and where they were written."""

    student: Student
    report: dict[str, Any]
    path: Path | None = None  # the student file, when `out` was given
    report_path: Path | None = None
    chart_path: Path | None = None
    notes: list[str] = field(default_factory=list)  # what the run decided that the user should know

    @property
    def sparsity(self) -> float:
        return float(self.report["sparsity"])


def prune(student: str | Classifier | None = None, teacher: TargetSource | str | None = None,
          images: str | os.PathLike | torch.Tensor | None = None, *, config: Config | None = None,
          out: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = False,
          **settings: Any) -> PruneResult:
    """Prune a student before training with the LNPT score (or a baseline) and fixed masks.

    student   a model spec (a zoo name, `torchvision:NAME`, `package.module:factory`; default: the
              teacher's architecture), or an initialised model (`lnpt.shared.build_model`) pruned in place
    teacher   a target source (`open_teacher`), a teacher file or `host:port`; None: `client.addresses`
              when the score needs the teacher, else Fashion-MNIST's input and classes
    images    unlabeled images to score with: a folder, a uint8 tensor (N, C, H, W), or None for the
              Fashion-MNIST training images (labels read only by the supervised baselines)
    config    the [prune], [objective], [client] and [data] settings; `settings` override [prune]
              keys by name, e.g. `sparsity=0.95, score="synflow"`
    out       write the student there (plus `.prune.json` and `.prune.png` beside it); an existing
              file is refused unless `overwrite`

        >>> from lnpt.edge import prune
        >>> result = prune("lenet5", "teacher.pt", "photos/", sparsity=0.9, out="student.pt")  # doctest: +SKIP
        >>> round(result.sparsity, 2)                                                           # doctest: +SKIP
        0.9
    """
    config = updated(config or Config(), "prune", source="prune()", **settings)
    cfg = config.prune
    out = Path(out) if out is not None else None
    if out is not None and out.exists() and not overwrite:
        raise PruneError(f"{out} exists; choose another --out, or pass --overwrite to replace it")
    objective_kind = pipeline.resolve_objective(cfg.score, cfg.objective, pipeline.prunes_channels(cfg))
    needs_teacher = teacher is not None or objective_kind == "learning-gap"
    notes: list[str] = []
    with opened_teacher(teacher if needs_teacher else False, config.client) as source:
        spec, class_names = student_shape(source, config)
        spec = input_spec_from_config(config.model, spec)  # [model] input_size/channels; the teacher resizes
        preprocess = Preprocess.from_config(spec, config.data)  # how the device's raw images become input
        model = student_model(student or config.model.spec or None, source, spec, len(class_names), cfg.seed,
                              config.model)
        spec = getattr(model, "input_spec", spec)  # a model built by the caller keeps its own input
        if model.num_classes != len(class_names):
            check_classes(model.num_classes, len(class_names), config.objective.lambda_kd)
            class_names = [str(i) for i in range(model.num_classes)]
        objective = pipeline.build_objective(objective_kind, config.objective, model.feature_dim,
                                             source.feature_dim if source else None)
        batches = []
        if objective is not None:
            wanted = cfg.samples or 10 * len(class_names)
            samples, labels = load_samples(images, preprocess, wanted, cfg.seed, config.data,
                                           with_labels=objective_kind == "cross-entropy")
            if len(samples) < wanted:
                notes.append(f"scored with {len(samples)} images, fewer than the {wanted} asked for: "
                             f"that is all the data holds")
            batches = pipeline.make_batches(samples, spec, cfg.batch_size,
                                            source if objective.needs_teacher else None, labels, progress)
        report = pipeline.prune_student(model, batches, cfg, objective, spec, progress)
        report.update(model=getattr(model, "spec", type(model).__name__), objective=objective_kind, teacher=source.where if source else None,
                      teacher_version=source.version if source else "", data=data_name(images), notes=notes)
    result = PruneResult(Student(model, spec, class_names, report["teacher_version"],
                                 {"prune": {k: v for k, v in report.items() if k != "weights_per_layer"},
                                  "structured": pipeline.prunes_channels(cfg)}, preprocess=preprocess),
                         report, notes=notes)
    if out is not None:
        write_results(result, out)
    return result


def student_shape(source: TargetSource | None, config: Config) -> tuple[InputSpec, list[str]]:
    """The input spec and class names: the teacher's; without one, Fashion-MNIST's classes and
    normalisation, shaped by [data]. [data] sizes that contradict the teacher are refused, not ignored."""
    data = config.data
    if source is not None:
        spec = source.input_spec
        asked = {"channels": data.channels, "size": data.size}
        default = {"channels": 1, "size": 28}
        differs = {k: v for k, v in asked.items() if v != default[k] and v != getattr(spec, k)}
        if differs:
            raise PruneError(f"data.{next(iter(differs))} = {next(iter(differs.values()))} but the teacher takes "
                             f"{spec.channels} x {spec.size} px images and the student follows it; set the "
                             f"student's own input with model.input_size / model.channels instead")
        return spec, source.class_names
    spec = InputSpec(data.channels, data.size, FASHION_MNIST_SPEC.mean * data.channels,
                     FASHION_MNIST_SPEC.std * data.channels)
    return spec, list(FASHION_MNIST_CLASSES)


def student_model(student: str | Classifier | None, source: TargetSource | None, spec: InputSpec,
                  num_classes: int, seed: int, model_config) -> Classifier:
    if isinstance(student, torch.nn.Module):
        return student
    arch = student or (source.arch if source else None)
    if not arch:
        raise PruneError("a student model is needed when no teacher is given (--model)")
    torch.manual_seed(seed)
    return model_from_config(model_config, arch, num_classes, spec)


def load_samples(images, spec, wanted: int, seed: int, data_config, with_labels: bool):
    """`wanted` seeded random uint8 images (and labels only for the supervised baselines)."""
    if isinstance(images, torch.Tensor):
        if with_labels:
            raise PruneError("cross-entropy needs labels, and images given as a tensor carry none; "
                             "use the learning-gap objective")
        return images[pipeline.pick_samples(len(images), wanted, seed)], None
    if images is not None:
        if with_labels:
            raise PruneError(f"cross-entropy needs labels, and {images} is read without labels; use "
                             "--objective learning-gap, or the default Fashion-MNIST data")
        dataset = UnlabeledImageFolder.from_config(Path(images), spec, data_config)
        return dataset.take(pipeline.pick_samples(len(dataset), wanted, seed).tolist()), None  # bad files skipped
    train_x, train_y = load_fashion_mnist(train=True, root=data_config.root or None)
    chosen = pipeline.pick_samples(len(train_x), wanted, seed)
    return train_x[chosen], (train_y[chosen] if with_labels else None)


def data_name(images) -> str:
    if isinstance(images, torch.Tensor):
        return f"tensor of {len(images)} images"
    return str(images) if images is not None else "fashion-mnist"


def write_results(result: PruneResult, out: Path) -> None:
    """The student file, then its JSON report and density chart beside it."""
    from lnpt.edge.pruning.report import write_chart, write_json

    result.student.save(out)
    result.path = out
    result.report_path, result.chart_path = out.with_suffix(".prune.json"), out.with_suffix(".prune.png")
    result.report.update(student=str(out), report=str(result.report_path), chart=str(result.chart_path))
    write_json(result.report, result.report_path)
    try:
        write_chart(result.report, result.chart_path)
    except ImportError:  # matplotlib is an optional extra on a device
        warnings.warn("matplotlib is not installed: no density chart written")
        result.chart_path = None
