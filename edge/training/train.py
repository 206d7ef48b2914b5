"""`train()`: label-free guided training of a pruned student against the teacher's targets.

This is what `lnpt train`, the edge job and the demo call. It picks the teacher source (or a
complete target cache, which needs no network), refuses to overwrite finished work, resumes exactly
from a checkpoint, and turns Ctrl-C / SIGTERM into a checkpoint at the last finished step.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from lnpt.edge.student import Student
from lnpt.edge.teachers import TargetSource, opened_teacher
from lnpt.edge.training.checkpoints import load_checkpoint
from lnpt.edge.training.image_source import ImageSource
from lnpt.edge.training.target_cache import TargetCache
from lnpt.edge.training.trainer import GuidedTrainer, TrainingError, TrainResult, sample_keys
from lnpt.shared.checkpoints import refuse_finished_work, stop_on_signals
from lnpt.shared.config import Config, updated
from lnpt.shared.data import adapt


def default_out(student_path: str | os.PathLike) -> Path:
    """`<student>-trained.pt` beside the student file."""
    path = Path(student_path)
    return path.with_name(path.stem + "-trained.pt")


def train(student: Student | str | os.PathLike, teacher: TargetSource | str | None = None,
          images: str | os.PathLike | torch.Tensor | ImageSource | None = None, *, config: Config | None = None,
          out: str | os.PathLike | None = None, checkpoint: str | os.PathLike | None = None,
          resume: bool = False, overwrite: bool = False, force: bool = False,
          log: Callable[[dict], None] | None = None, progress: bool = False, **settings: Any) -> TrainResult:
    """Train `student` on unlabeled `images` with targets from `teacher`; labels are never read.

    student     a Student or a student file (from `prune`); trained in place and saved to `out`
    teacher     a target source, a teacher file or `host:port`; None: `client.addresses` (not needed at
                all when `train.target_cache` already holds every sample's targets)
    images      a folder, a uint8 tensor (N, C, H, W), an ImageSource, or None for the Fashion-MNIST
                training images without their labels
    out         the trained student file (default `<student>-trained.pt`); `checkpoint` defaults to
                `<out>.ckpt`. Existing files are refused unless `resume` (continue from the checkpoint)
                or `overwrite` (start over)
    settings    [train] keys by name, e.g. `epochs=3, max_steps=100`
    log         receives one dict per event (step, epoch, checkpoint, done)

    On Ctrl-C or SIGTERM the current step finishes, a checkpoint is written and TrainingInterrupted
    says how to resume. Returns the TrainResult (also saved in the student file's history).

        >>> from lnpt.edge import train
        >>> result = train("student.pt", "127.0.0.1:50051", "photos/", epochs=2)   # doctest: +SKIP
        >>> result.steps, result.target_wait_fraction                              # doctest: +SKIP
    """
    config = updated(config or Config(), "train", source="train()", **settings)
    cfg = config.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not isinstance(student, Student):
        student = Student.load(student)
    refuse_ignored_input_settings(config, student)
    if out is None and student.path is None:
        raise TrainingError("give `out`: the student has no file to name the trained one after")
    out = Path(out) if out is not None else default_out(student.path)
    checkpoint = Path(checkpoint) if checkpoint is not None else Path(str(out) + ".ckpt")
    refuse_finished_work({out: "a trained student"}, checkpoint, resume, overwrite, TrainingError)
    source_images = image_source(images, student, config)

    # The teacher version this run must use: the checkpoint's when resuming (unless force).
    resume_version = load_checkpoint(checkpoint)["teacher_version"] if resume else ""
    known_version = resume_version or student.teacher_version
    cache, keys = offline_cache(config, known_version, source_images)
    teacher_arg = False if cache is not None else teacher  # a complete cache: never dial the teacher
    with opened_teacher(teacher_arg, config.client, "" if force else resume_version) as source:
        version, teacher_dim = known_version, cache.feature_dim if cache is not None else None
        if source is not None:
            version, teacher_dim = source.version, source.feature_dim
            source.check_student(student.model.num_classes, student.model.feature_dim,
                                 projector=teacher_dim != student.model.feature_dim,
                                 lambda_kd=config.objective.lambda_kd)
            if cfg.target_cache:
                cache = TargetCache(cfg.target_cache, version)
        trainer = GuidedTrainer(student.model, student.input_spec, source_images, source, train=cfg,
                                objective=config.objective, teacher_version=version, teacher_dim=teacher_dim,
                                student_version=student.version, checkpoint_path=checkpoint, cache=cache,
                                cache_keys=keys, log=log, progress=progress)
        if resume:
            trainer.resume(force=force)
        with stop_on_signals(trainer):
            result = trainer.run()
    student.teacher_version = version
    student.extra["training"] = {"steps": result.steps, "final_loss": result.final_loss, "data": source_images.name}
    student.save(out)
    result.out, result.checkpoint, result.student_version = str(out), str(checkpoint), student.version
    dropped = len(source_images) - trainer.steps_per_epoch * trainer.batch_size
    if dropped:
        result.notes.append(f"each epoch leaves out {dropped} of {len(source_images)} images (the last partial "
                            f"batch of {trainer.batch_size}); the order changes every epoch, so all are used")
    return result


def refuse_ignored_input_settings(config: Config, student: Student) -> None:
    """data.size / data.channels cannot change a student's input (its file records it): say so
    instead of silently training at the recorded input."""
    spec, data = student.input_spec, config.data
    for key, asked, default, actual in (("size", data.size, 28, spec.size), ("channels", data.channels, 1, spec.channels)):
        if asked != default and asked != actual:
            raise TrainingError(f"data.{key} = {asked}, but the student takes {' x '.join(map(str, spec.shape))} "
                                f"images (recorded in its file); drop the setting, or prune a student for that input")


def image_source(images, student: Student, config: Config) -> ImageSource:
    if isinstance(images, ImageSource):
        return images
    if isinstance(images, torch.Tensor):
        return ImageSource(adapt(images, student.input_spec), student.input_spec, f"tensor of {len(images)} images")
    return ImageSource.open(str(images) if images is not None else None, student.preprocess or student.input_spec,
                            config.data.root or None, config.data)


def offline_cache(config: Config, version: str, images: ImageSource):
    """The target cache and sample keys when it already holds every sample (no teacher needed)."""
    if not (config.train.target_cache and version):
        return None, None
    cache = TargetCache(config.train.target_cache, version)
    keys = sample_keys(images)
    return (cache, keys) if all(k in cache.rows for k in keys) else (None, None)
