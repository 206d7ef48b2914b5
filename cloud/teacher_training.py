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
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, TensorDataset
from tqdm import tqdm

from lnpt.shared.inference import outputs, top1
from lnpt.shared.model_file import save_model
from lnpt.shared.optim import make_optimizer
from lnpt.shared.config import Config, ConfigError
from lnpt.shared.data import (FASHION_MNIST_CLASSES, FASHION_MNIST_SPEC, adapt, load_fashion_mnist, normalize,
                              random_crop_flip)
from lnpt.shared.teacher_model import Teacher
from lnpt.shared.zoo import MODEL_NAMES, InputSpec, build_model

log = logging.getLogger("lnpt.cloud.teacher")


def teacher_input_spec(config: Config) -> InputSpec:
    """Fashion-MNIST statistics, repeated per channel when the teacher takes RGB (data.channels=3)."""
    channels, size = config.data.channels, config.data.size
    base = FASHION_MNIST_SPEC
    return InputSpec(channels, size, base.mean * channels, base.std * channels)


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


def train_teacher(config: Config, out: str, device: str | None = None, json_lines: bool = False) -> dict[str, Any] | None:
    """Train `config.teacher.model` and save it to `out`; returns the summary on rank 0, None elsewhere."""
    tc = config.teacher
    if tc.model not in MODEL_NAMES:
        raise ConfigError(f"teacher.model = {tc.model!r}: choose one of {', '.join(MODEL_NAMES)}")
    spec = teacher_input_spec(config)
    ddp = Distributed(device)
    try:
        return run_training(config, out, ddp, spec, json_lines)
    finally:
        ddp.close()


def run_training(config: Config, out: str, ddp: Distributed, spec: InputSpec, json_lines: bool) -> dict[str, Any] | None:
    tc = config.teacher
    torch.manual_seed(tc.seed)  # same initial weights on every rank (DDP also broadcasts them)
    train_x, train_y = load_fashion_mnist(True, config.data.root or None)
    test_x, test_y = load_fashion_mnist(False, config.data.root or None)
    if tc.train_samples:
        train_x, train_y = train_x[:tc.train_samples], train_y[:tc.train_samples]
    if tc.test_samples:
        test_x, test_y = test_x[:tc.test_samples], test_y[:tc.test_samples]
    train_x = adapt(train_x, spec)

    model = build_model(tc.model, len(FASHION_MNIST_CLASSES), spec).to(ddp.device)
    net: torch.nn.Module = model
    if ddp.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ddp.device.index] if ddp.device.type == "cuda" else None)
    dataset = TensorDataset(train_x, train_y)
    sampler = (DistributedSampler(dataset, ddp.world_size, ddp.rank, shuffle=True, seed=tc.seed) if ddp.enabled
               else RandomSampler(dataset, generator=torch.Generator().manual_seed(tc.seed)))
    loader = DataLoader(dataset, batch_size=tc.batch_size, sampler=sampler, drop_last=False)
    optimizer, schedule = make_optimizer(net.parameters(), "sgd", lr=tc.lr, momentum=tc.momentum,
                                         weight_decay=tc.weight_decay, total_steps=tc.epochs * len(loader))
    generator = torch.Generator().manual_seed(tc.seed * 1000 + ddp.rank)
    history = []
    started = time.monotonic()
    if ddp.is_main:
        log.info("training %s on %d images x %d epochs (%d process%s, %s)", tc.model, len(train_x), tc.epochs,
                 ddp.world_size, "es" if ddp.world_size > 1 else "", ddp.device)
    for epoch in range(1, tc.epochs + 1):
        if ddp.enabled:
            sampler.set_epoch(epoch)
        net.train()
        loss_sum = correct = seen = 0.0
        bar = tqdm(loader, desc=f"epoch {epoch}/{tc.epochs}", unit="batch", leave=False,
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
            record["test_accuracy"] = accuracy(model, test_x, test_y, spec)
            history.append(record)
            report_epoch(record, tc.epochs, json_lines)
    if not ddp.is_main:
        dist.barrier()  # wait until rank 0 has written the file
        return None
    saved = save_model(out, model.cpu(), kind="teacher", input_spec=spec, class_names=list(FASHION_MNIST_CLASSES),
                       extra={"dataset": tc.dataset, "train_samples": len(train_x), "epochs": tc.epochs,
                              "world_size": ddp.world_size, "test_accuracy": history[-1]["test_accuracy"],
                              "recipe": {"optimizer": "sgd", "lr": tc.lr, "momentum": tc.momentum,
                                         "weight_decay": tc.weight_decay, "batch_size": tc.batch_size,
                                         "schedule": "cosine", "augment": tc.augment}})
    if ddp.enabled:
        dist.barrier()
    return {"path": str(out), "arch": saved.arch, "version": saved.version, "epochs": tc.epochs,
            "world_size": ddp.world_size, "train_samples": len(train_x),
            "test_accuracy": history[-1]["test_accuracy"], "history": history}


def report_epoch(record: dict[str, Any], epochs: int, json_lines: bool) -> None:
    """One line per epoch: a JSON line on stderr for machines, or a sentence for people."""
    if json_lines:
        print(json.dumps({"event": "epoch", **record}), file=sys.stderr, flush=True)
    else:
        print(f"epoch {record['epoch']}/{epochs}: loss {record['train_loss']:.4f}, train accuracy "
              f"{record['train_accuracy']:.4f}, test accuracy {record['test_accuracy']:.4f}, "
              f"lr {record['lr']:.4g} ({record['seconds']:.0f} s)", file=sys.stderr, flush=True)


def evaluate_checkpoint(path: str, batch_size: int = 512, limit: int = 0, root: str | None = None,
                        device: str = "cpu") -> dict[str, Any]:
    """Test accuracy of a teacher model file on Fashion-MNIST (validated on load)."""
    teacher = Teacher.load(path, device)
    images, labels = load_fashion_mnist(False, root)
    if limit:
        images, labels = images[:limit], labels[:limit]
    acc = accuracy(teacher.model, images, labels, teacher.input_spec, batch_size)
    return {"path": str(path), "arch": teacher.arch, "version": teacher.version, "samples": len(images),
            "test_accuracy": acc}

