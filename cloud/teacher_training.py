"""Supervised training of the mature teacher (the cloud has labels; the edge never does).

Recipe: SGD with momentum and weight decay, a cosine learning-rate schedule over all steps, random
crop + flip augmentation, cross-entropy. Under `torchrun` (WORLD_SIZE > 1) it runs with
DistributedDataParallel — gloo on CPU, nccl on GPU — each process reading its shard of the data;
rank 0 evaluates, reports and writes the model file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DistributedSampler, RandomSampler
from tqdm import tqdm

from lnpt.shared.inference import outputs, top1
from lnpt.cloud.teacher_data import TeacherData, batches_per_epoch, epoch_batches, source_accuracy, teacher_data
from lnpt.shared.model_file import save_model
from lnpt.shared.optim import make_optimizer
from lnpt.shared.config import Config
from lnpt.shared.data import normalize, random_crop_flip
from lnpt.shared.teacher_model import Teacher
from lnpt.shared.models import InputSpec, ModelSpec, build_model

log = logging.getLogger("lnpt.cloud.teacher")


def teacher_input_spec(config: Config) -> InputSpec:
    """The teacher's input spec: shape from [data], mean/std from [data] or the training data
    (Fashion-MNIST's statistics, repeated per channel when the teacher takes RGB)."""
    return teacher_data(config).preprocess.input_spec


class Distributed:
    """Process-group setup from torchrun's environment; a single process otherwise."""

    def __init__(self, device: str | None):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        wanted = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if wanted == "cuda" and self.world_size > 1:
            wanted = f"cuda:{local_rank}"
        self.device = torch.device(wanted)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        if self.enabled:
            dist.init_process_group(backend="nccl" if self.device.type == "cuda" else "gloo")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


@torch.inference_mode()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: InputSpec,
             batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on uint8 images (adapted to `spec`, then normalised)."""
    return top1(outputs(model, images, spec, batch_size)[1], labels)


def train_teacher(config: Config, out: str, device: str | None = None, json_lines: bool = False, *,
                  data: str | None = None, val_data: str | None = None,
                  val_fraction: float | None = None) -> dict[str, Any] | None:
    """Train `config.teacher.model` and save it to `out`; returns the summary on rank 0, None elsewhere.

    Labeled data: `data` (a folder of class sub-folders or a .csv; default data.labeled, empty =
    Fashion-MNIST), validated on `val_data` (data.val) or a stratified `val_fraction` of it
    (data.val_fraction); Fashion-MNIST is validated on its test set.
    """
    tc = config.teacher
    ModelSpec.parse(tc.model)  # a malformed spec fails before any process group starts
    sources = teacher_data(config, data, val_data, val_fraction)
    spec = sources.preprocess.input_spec
    ddp = Distributed(device)
    try:
        return run_training(config, out, ddp, spec, json_lines, sources)
    finally:
        ddp.close()


def run_training(config: Config, out: str, ddp: Distributed, spec: InputSpec, json_lines: bool,
                 sources: TeacherData) -> dict[str, Any] | None:
    tc = config.teacher
    torch.manual_seed(tc.seed)  # same initial weights on every rank (DDP also broadcasts them)
    train, val, preprocess = sources.train, sources.val, sources.preprocess

    model = build_model(tc.model, len(sources.classes), spec, weights=tc.weights or None,
                        feature_node=tc.feature_node).to(ddp.device)
    net: torch.nn.Module = model
    if ddp.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ddp.device.index] if ddp.device.type == "cuda" else None)
    sampler = (DistributedSampler(train, ddp.world_size, ddp.rank, shuffle=True, seed=tc.seed) if ddp.enabled
               else RandomSampler(train, generator=torch.Generator().manual_seed(tc.seed)))
    steps_per_epoch = batches_per_epoch(sampler, tc.batch_size)
    optimizer, schedule = make_optimizer(net.parameters(), "sgd", lr=tc.lr, momentum=tc.momentum,
                                         weight_decay=tc.weight_decay, total_steps=tc.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(tc.seed * 1000 + ddp.rank)
    history = []
    started = time.monotonic()
    if ddp.is_main:
        log.info("training %s on %d images x %d epochs (%d process%s, %s)", tc.model, len(train), tc.epochs,
                 ddp.world_size, "es" if ddp.world_size > 1 else "", ddp.device)
    for epoch in range(1, tc.epochs + 1):
        if ddp.enabled:
            sampler.set_epoch(epoch)
        net.train()
        loss_sum = correct = seen = 0.0
        bar = tqdm(epoch_batches(train, sampler, tc.batch_size), total=steps_per_epoch, desc=f"epoch {epoch}/{tc.epochs}", unit="batch", leave=False,
                   disable=not ddp.is_main or not sys.stderr.isatty())
        for images, labels in bar:
            if tc.augment:
                images = random_crop_flip(images, generator)
            x, y = normalize(images, spec).to(ddp.device), labels.to(ddp.device)
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training diverged (loss {loss_value}) in epoch {epoch}; lower teacher.lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss_value * len(y)
            correct += float((logits.detach().argmax(1) == y).sum())
            seen += len(y)
        loss_sum, correct, seen = ddp.all_sum([loss_sum, correct, seen])
        record = {"epoch": epoch, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                  "lr": schedule.get_last_lr()[0], "seconds": round(time.monotonic() - started, 2)}
        if ddp.is_main:
            record["test_accuracy"] = source_accuracy(model, val, preprocess) if val is not None else None
            history.append(record)
            report_epoch(record, tc.epochs, json_lines)
    if not ddp.is_main:
        dist.barrier()  # wait until rank 0 has written the file
        return None
    saved = save_model(out, model.cpu(), kind="teacher", input_spec=spec, class_names=sources.classes,
                       preprocess=preprocess,
                       extra={"dataset": sources.name, "train_samples": len(train),
                              "evaluated_on": val.name_ if val is not None else None, "epochs": tc.epochs,
                              "world_size": ddp.world_size, "test_accuracy": history[-1]["test_accuracy"],
                              "recipe": {"optimizer": "sgd", "lr": tc.lr, "momentum": tc.momentum,
                                         "weight_decay": tc.weight_decay, "batch_size": tc.batch_size,
                                         "schedule": "cosine", "augment": tc.augment}})
    if ddp.enabled:
        dist.barrier()
    return {"path": str(out), "arch": saved.arch, "version": saved.version, "epochs": tc.epochs,
            "world_size": ddp.world_size, "train_samples": len(train), "classes": sources.classes,
            "test_accuracy": history[-1]["test_accuracy"], "evaluated_on": val.name_ if val is not None else None,
            "preprocess": preprocess.to_dict(), "data": train.stats(),
            "val_data": val.stats() if val is not None else None, "history": history}


def report_epoch(record: dict[str, Any], epochs: int, json_lines: bool) -> None:
    """One line per epoch: a JSON line on stderr for machines, or a sentence for people."""
    if json_lines:
        print(json.dumps({"event": "epoch", **record}), file=sys.stderr, flush=True)
    else:
        tested = "" if record["test_accuracy"] is None else f", test accuracy {record['test_accuracy']:.4f}"
        print(f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f}, train accuracy "
              f"{record['train_accuracy']:.4f}{tested}, "
              f"lr {record['lr']:.4g} ({record['seconds']:.0f} s)", file=sys.stderr, flush=True)


def evaluate_checkpoint(path: str, batch_size: int = 512, limit: int = 0, root: str | None = None,
                        device: str = "cpu", data: str | None = None, config=None) -> dict[str, Any]:
    """Accuracy of a teacher model file (validated on load) on Fashion-MNIST's test set, or on `data`:
    a labeled folder or .csv whose classes are the teacher's, read with the teacher's own preprocessing
    (`config` = the [data] section for workers, bad-file policy and CSV columns)."""
    from lnpt.shared import labeled

    teacher = Teacher.load(path, device)
    preprocess = teacher.record.preprocess
    if data:
        source = labeled.open_labeled(data, preprocess, config).relabeled(teacher.record.class_names)
        if limit and limit < len(source):
            source = source.subset(range(limit), source.name_)
    else:
        source = labeled.fashion_mnist(False, preprocess, root, limit).relabeled(teacher.record.class_names)
    acc = source_accuracy(teacher.model, source, preprocess, batch_size)
    return {"path": str(path), "arch": teacher.arch, "version": teacher.version, "data": source.name_,
            "samples": len(source) - source.report.count, "test_accuracy": acc, **source.report.to_dict()}
