"""Supervised training of the mature teacher (the cloud has labels; the edge never does).

Recipe: SGD with momentum and weight decay, a cosine learning-rate schedule over all steps, random
crop + flip augmentation, cross-entropy. Under `torchrun` (WORLD_SIZE > 1) it runs with
DistributedDataParallel — gloo on CPU, nccl on GPU — each process reading its shard of the data;
rank 0 evaluates, reports and writes the model file and the checkpoints.

Checkpoints follow the edge trainer's contract (lnpt.shared.checkpoints): the position is one
number, the global step; every `teacher.checkpoint_every` steps, at every epoch's end and on
Ctrl-C/SIGTERM (after the current step) the model, optimizer, schedule, RNG states, the epoch's
partial sums and the history are written atomically. The sample order of an epoch is a function
of (seed, epoch) and each batch's augmentation of (seed, rank, epoch, batch), so a resumed run takes
exactly the batches the uninterrupted run would have taken. Every rank resumes from the same file.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from lnpt.shared.inference import outputs, top1
from lnpt.cloud.teacher_data import TeacherData, batches_per_epoch, epoch_batches, source_accuracy, teacher_data
from lnpt.shared.checkpoints import (Interrupted, load_checkpoint, refuse_finished_work, restore_rng,
                                     save_checkpoint, stop_on_signals)
from lnpt.shared.model_file import save_model
from lnpt.shared.optim import make_optimizer
from lnpt.shared.config import Config
from lnpt.shared.data import normalize, random_crop_flip
from lnpt.shared.devices import resolve_device
from lnpt.shared.errors import LnptError
from lnpt.shared.teacher_model import Teacher
from lnpt.shared.models import InputSpec, ModelSpec, build_model

log = logging.getLogger("lnpt.cloud.teacher")

CHECKPOINT_FORMAT = "lnpt-teacher-checkpoint"


class TeacherTrainingError(LnptError, RuntimeError):
    """Teacher training cannot start or continue; the message says why and what to do."""


class TeacherTrainingInterrupted(TeacherTrainingError, Interrupted):
    """Teacher training stopped on Ctrl-C/SIGTERM after checkpointing its last step (exit code 130)."""


def teacher_input_spec(config: Config) -> InputSpec:
    """The teacher's input spec: shape from [data], mean/std from [data] or the training data
    (Fashion-MNIST's statistics, repeated per channel when the teacher takes RGB)."""
    return teacher_data(config).preprocess.input_spec


class Distributed:
    """Process-group setup from torchrun's environment; a single process otherwise."""

    def __init__(self, device: str):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        # checked before any process group starts; bare `cuda` becomes this process's cuda:LOCAL_RANK
        self.device = resolve_device(device, "teacher.device", int(os.environ.get("LOCAL_RANK", "0")))
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

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (all ranks stop at the same step)."""
        return self.all_sum([float(flag)])[0] > 0 if self.enabled else flag

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


@torch.inference_mode()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: InputSpec,
             batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on uint8 images (adapted to `spec`, then normalised)."""
    return top1(outputs(model, images, spec, batch_size)[1], labels)


def default_checkpoint(out: str | os.PathLike) -> Path:
    """`<out>.ckpt` beside the teacher file."""
    return Path(str(out) + ".ckpt")


def train_teacher(config: Config, out: str | os.PathLike, device: str | None = None, json_lines: bool = False, *,
                  data: str | None = None, val_data: str | None = None, val_fraction: float | None = None,
                  checkpoint: str | os.PathLike | None = None, resume: bool = False, overwrite: bool = False,
                  log: Callable[[dict], None] | None = None) -> dict[str, Any] | None:
    """Train `config.teacher.model` and save it to `out`; returns the summary on rank 0, None elsewhere.

    Labeled data: `data` (a folder of class sub-folders or a .csv; default data.labeled, empty =
    Fashion-MNIST), validated on `val_data` (data.val) or a stratified `val_fraction` of it
    (data.val_fraction); Fashion-MNIST is validated on its test set. `device` overrides
    teacher.device.

    Checkpoints go to `checkpoint` (default `<out>.ckpt`). An existing `out` or checkpoint is
    refused unless `resume` (continue exactly from the checkpoint) or `overwrite` (start over). On
    Ctrl-C or SIGTERM the current step finishes, a checkpoint is written and
    TeacherTrainingInterrupted (exit code 130) names it. Progress: one event dict per step, epoch,
    checkpoint and resume to `log`, and as JSON lines on stderr with `json_lines` (a tqdm bar on a
    terminal otherwise); only rank 0 reports and writes files.
    """
    tc = config.teacher
    ModelSpec.parse(tc.model)  # a malformed spec fails before any process group starts
    out = Path(out)
    checkpoint = Path(checkpoint) if checkpoint is not None else default_checkpoint(out)
    refuse_finished_work({out: "a trained teacher"}, checkpoint, resume, overwrite, TeacherTrainingError)
    ddp = Distributed(tc.device if device is None else device)
    try:
        sources = teacher_data(config, data, val_data, val_fraction)
        trainer = TeacherTrainer(config, ddp, sources, checkpoint, Reporter(ddp.is_main, tc.epochs, json_lines, log))
        if resume:
            trainer.resume()
        with stop_on_signals(trainer):
            trainer.run()
        return trainer.finish(out)
    finally:
        ddp.close()


def augment_generator(seed: int, rank: int, epoch: int, batch: int) -> torch.Generator:
    """The augmentation of one batch depends on its position only, so a resumed run repeats it."""
    return torch.Generator().manual_seed((((seed * 1_000_003 + rank) * 1_000_003 + epoch) * 1_000_003 + batch) % 2**63)


class Reporter:
    """Rank 0's progress: events to `log`, JSON lines (or an epoch sentence) on stderr."""

    def __init__(self, active: bool, epochs: int, json_lines: bool, log: Callable[[dict], None] | None):
        self.active, self.epochs, self.json_lines, self.log = active, epochs, json_lines, log

    @property
    def bar_disabled(self) -> bool:
        return not self.active or self.json_lines or not sys.stderr.isatty()

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.active:
            return
        if self.log is not None:
            self.log(event)
        if self.json_lines:
            print(json.dumps(event, default=str), file=sys.stderr, flush=True)
        elif event["event"] == "epoch":
            report_epoch(event, self.epochs)
        elif event["event"] == "resume":
            print(f"resuming from step {event['step']}/{event['total_steps']} ({event['path']})",
                  file=sys.stderr, flush=True)


class TeacherTrainer:
    """The supervised loop with the edge trainer's checkpoint contract (see the module docstring)."""

    def __init__(self, config: Config, ddp: Distributed, sources: TeacherData, checkpoint: Path, report: Reporter):
        tc = self.tc = config.teacher
        self.ddp, self.sources, self.checkpoint, self.report = ddp, sources, checkpoint, report
        self.spec = sources.preprocess.input_spec
        torch.manual_seed(tc.seed)  # same initial weights on every rank (DDP also broadcasts them)
        self.model = build_model(tc.model, len(sources.classes), self.spec, weights=tc.weights or None,
                                 feature_node=tc.feature_node).to(ddp.device)
        self.net: torch.nn.Module = self.model
        if ddp.enabled:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[ddp.device.index] if ddp.device.type == "cuda" else None)
        # The epoch's order is a function of (seed, epoch) in a single process too (set_epoch).
        self.sampler = DistributedSampler(sources.train, ddp.world_size, ddp.rank, shuffle=True, seed=tc.seed)
        self.steps_per_epoch = batches_per_epoch(self.sampler, tc.batch_size)
        self.total_steps = tc.epochs * self.steps_per_epoch
        self.optimizer, self.schedule = make_optimizer(
            self.net.parameters(), "sgd", lr=tc.lr, momentum=tc.momentum, weight_decay=tc.weight_decay,
            total_steps=self.total_steps)
        self.step = self.resumed_from = 0
        self.saved_step = -1
        self.totals = [0.0, 0.0, 0.0]  # this epoch so far on this rank: loss sum, correct, seen
        self.history: list[dict[str, Any]] = []
        self.stop_requested = False  # set from a signal handler; the loop stops after the current step
        self.started = time.monotonic()

    def settings(self) -> dict[str, Any]:
        """What a resumed run must share with the checkpoint's run to continue it exactly."""
        tc, train = self.tc, self.sources.train
        return {"model": tc.model, "classes": list(self.sources.classes), "data": self.sources.name,
                "train_samples": len(train), "batch_size": tc.batch_size, "world_size": self.ddp.world_size,
                "seed": tc.seed, "total_steps": self.total_steps, "augment": tc.augment, "lr": tc.lr,
                "momentum": tc.momentum, "weight_decay": tc.weight_decay}

    # --- checkpoints ---------------------------------------------------------------------------

    def save(self, reason: str) -> None:
        """Every rank calls this at the same steps (the epoch's partial sums are summed over ranks);
        rank 0 writes the file."""
        totals = self.ddp.all_sum(list(self.totals))
        if self.ddp.is_main:
            save_checkpoint(self.checkpoint, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(), "step": self.step, "totals": totals,
                "history": self.history, "settings": self.settings()}, CHECKPOINT_FORMAT)
        self.saved_step = self.step
        self.report({"event": "checkpoint", "step": self.step, "reason": reason, "path": str(self.checkpoint)})

    def resume(self) -> int:
        """Continue from the checkpoint; refuses one made with other settings or data."""
        state = load_checkpoint(self.checkpoint, CHECKPOINT_FORMAT, "lnpt teacher training checkpoint")
        for key, value in self.settings().items():
            if state["settings"].get(key) != value:
                raise TeacherTrainingError(
                    f"{self.checkpoint} has {key}={state['settings'].get(key)!r} but this run has {value!r}; "
                    f"resume with the same model, data and settings (or start over with --overwrite)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        restore_rng(state["rng"])  # rank 0's: every rank's global RNG ran in step (same seed, same ops)
        self.step = self.resumed_from = self.saved_step = int(state["step"])
        self.totals = list(state["totals"]) if self.ddp.is_main else [0.0, 0.0, 0.0]  # summed over ranks
        self.history = list(state["history"])
        self.report({"event": "resume", "step": self.step, "total_steps": self.total_steps,
                     "path": str(self.checkpoint)})
        return self.step

    def stop_if_requested(self) -> None:
        """After a step: on a stop request (on any rank) checkpoint and raise TeacherTrainingInterrupted."""
        if not self.ddp.any(self.stop_requested):
            return
        if self.saved_step != self.step:
            self.save("interrupt")
        self.ddp.barrier()  # rank 0 has written the checkpoint before any process exits
        raise TeacherTrainingInterrupted(
            f"interrupted at step {self.step}/{self.total_steps}; checkpoint {self.checkpoint} holds it: "
            f"run the same command with --resume (train_teacher(..., resume=True)) to continue",
            self.step, str(self.checkpoint))

    # --- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        tc, ddp = self.tc, self.ddp
        if ddp.is_main:
            log.info("training %s on %d images x %d epochs (%d process%s, %s)", tc.model, len(self.sources.train),
                     tc.epochs, ddp.world_size, "es" if ddp.world_size > 1 else "", ddp.device)
        while self.step < self.total_steps:
            epoch, first = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch)
            order = list(self.sampler)[first * tc.batch_size:]  # batches first.. of this epoch
            self.net.train()
            bar = tqdm(epoch_batches(self.sources.train, order, tc.batch_size), total=self.steps_per_epoch,
                       initial=first, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="batch", leave=False,
                       disable=self.report.bar_disabled)
            for batch, (images, labels) in enumerate(bar, start=first):
                loss = self.train_step(images, labels, epoch, batch)
                self.report({"event": "step", "step": self.step, "epoch": epoch + 1, "batch": batch + 1,
                             "batches": self.steps_per_epoch, "loss": loss, "lr": self.schedule.get_last_lr()[0]})
                if self.step % self.steps_per_epoch:  # mid-epoch; the epoch's end is handled below
                    if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                        self.save("every")
                    self.stop_if_requested()
            bar.close()
            # A batch of nothing but unreadable files is not yielded: the epoch still ends here.
            self.step = (epoch + 1) * self.steps_per_epoch
            self.end_epoch(epoch)
            self.save("epoch")
            self.stop_if_requested()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch: int) -> float:
        if self.tc.augment:
            images = random_crop_flip(images, augment_generator(self.tc.seed, self.ddp.rank, epoch, batch))
        x, y = normalize(images, self.spec).to(self.ddp.device), labels.to(self.ddp.device)
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"training diverged (loss {loss_value}) in epoch {epoch + 1}; lower teacher.lr")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        self.totals[0] += loss_value * len(y)
        self.totals[1] += float((logits.detach().argmax(1) == y).sum())
        self.totals[2] += len(y)
        self.step += 1
        return loss_value

    def end_epoch(self, epoch: int) -> None:
        loss_sum, correct, seen = self.ddp.all_sum(self.totals)
        self.totals = [0.0, 0.0, 0.0]
        record = {"epoch": epoch + 1, "train_loss": loss_sum / seen, "train_accuracy": correct / seen,
                  "lr": self.schedule.get_last_lr()[0], "seconds": round(time.monotonic() - self.started, 2)}
        if self.ddp.is_main:
            val = self.sources.val
            record["test_accuracy"] = source_accuracy(self.model, val, self.sources.preprocess) if val is not None else None
            self.report({"event": "epoch", **record})
        self.history.append(record)

    def finish(self, out: Path) -> dict[str, Any] | None:
        """Rank 0 writes the teacher file and returns the summary; the other ranks wait for it."""
        ddp, tc, sources = self.ddp, self.tc, self.sources
        train, val, preprocess = sources.train, sources.val, sources.preprocess
        if not ddp.is_main:
            ddp.barrier()  # wait until rank 0 has written the file
            return None
        last = self.history[-1]
        saved = save_model(out, self.model.cpu(), kind="teacher", input_spec=self.spec, class_names=sources.classes,
                           preprocess=preprocess,
                           extra={"dataset": sources.name, "train_samples": len(train),
                                  "evaluated_on": val.name_ if val is not None else None, "epochs": tc.epochs,
                                  "world_size": ddp.world_size, "test_accuracy": last["test_accuracy"],
                                  "recipe": {"optimizer": "sgd", "lr": tc.lr, "momentum": tc.momentum,
                                             "weight_decay": tc.weight_decay, "batch_size": tc.batch_size,
                                             "schedule": "cosine", "augment": tc.augment}})
        ddp.barrier()
        return {"path": str(out), "arch": saved.arch, "version": saved.version, "epochs": tc.epochs,
                "steps": self.step, "total_steps": self.total_steps, "resumed_from_step": self.resumed_from,
                "checkpoint": str(self.checkpoint), "world_size": ddp.world_size, "train_samples": len(train),
                "classes": sources.classes, "test_accuracy": last["test_accuracy"],
                "evaluated_on": val.name_ if val is not None else None, "preprocess": preprocess.to_dict(),
                "data": train.stats(), "val_data": val.stats() if val is not None else None,
                "history": self.history}


def report_epoch(record: dict[str, Any], epochs: int) -> None:
    """The sentence a person reads after each epoch (JSON mode prints the record itself)."""
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
