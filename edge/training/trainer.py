"""Label-free guided training of a (pruned) student against teacher targets.

Each step: take the next batch of the epoch's permutation (seeded by (seed, epoch), so a resumed
run sees the same order), augment the uint8 pixels, send exactly those pixels to the teacher,
and minimise the learning gap + logit KD (lnpt.shared.objectives) between student and teacher.
No label is read anywhere: the image source cannot return one. Masks stay fixed (the
torch.nn.utils.prune re-parametrisation keeps pruned weights at exactly zero).

The position of a run is one number, the global step: epoch = step // steps_per_epoch and the
batch within the epoch = step % steps_per_epoch. Checkpoints store it with everything else a
resumed run needs, so resuming continues with the very next batch.
"""
from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from lnpt.edge.training.augment import batch_generator
from lnpt.edge.training.checkpoints import load_checkpoint, restore_rng, save_checkpoint
from lnpt.edge.training.image_source import ImageSource
from lnpt.edge.training.target_cache import TargetCache, digest
from lnpt.shared.checkpoints import Interrupted
from lnpt.shared.config import ObjectiveConfig, TrainConfig
from lnpt.shared.data import normalize, random_crop_flip
from lnpt.shared.devices import resolve_device
from lnpt.shared.errors import LnptError
from lnpt.shared.objectives import Targets, learning_gap, objective_from_config
from lnpt.shared.optim import make_optimizer
from lnpt.shared.models import InputSpec
from lnpt.shared.zoo import ZooNet


class TrainingError(LnptError, RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


def training_device(name: str) -> torch.device:
    """The device to train on (`train.device`); refuses a CUDA device this machine does not have."""
    return resolve_device(name, "train.device")


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The sample order of one epoch, a function of (seed, epoch) only."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def sample_keys(images: ImageSource, batch_size: int = 512) -> list[bytes | None]:
    """Content digests of every (un-augmented) sample, in dataset order (None for a skipped bad file)."""
    keys: list[bytes | None] = [None] * len(images)
    for _, indices, batch in images.stream(torch.arange(len(images)).split(batch_size)):
        for i, image in zip(indices.tolist(), batch):
            keys[i] = digest(image)
    return keys


@dataclass
class TrainResult:
    """What a training run did; `to_dict()` is what `lnpt train --format json` prints."""

    steps: int
    total_steps: int
    epochs: int
    samples: int
    seconds: float
    target_wait_seconds: float  # time the training loop was blocked waiting for the next batch's targets
    final_loss: float
    teacher_version: str
    resumed_from_step: int = 0
    source_stats: dict[str, Any] = field(default_factory=dict)
    data_stats: dict[str, Any] = field(default_factory=dict)  # images found, bad files skipped (ImageSource.stats)
    out: str = ""  # the trained student file (set by `lnpt.edge.train`)
    checkpoint: str = ""
    student_version: str = ""
    notes: list[str] = field(default_factory=list)  # what the run decided that the user should know

    @property
    def target_wait_fraction(self) -> float:
        """Share of the run's time the training loop waited for targets (0 = the teacher never held it up)."""
        return self.target_wait_seconds / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "target_wait_fraction": self.target_wait_fraction}


class TrainingInterrupted(TrainingError, Interrupted):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving a checkpoint at the last step (exit 130)."""


class GuidedTrainer:
    """Train `model` (a masked ZooNet) on `images` with targets from `source` (see sources.py).

    `source` may be None when a complete `cache` makes the network unnecessary. `log` receives one
    dict per event (step, epoch, checkpoint, done); the CLI writes them as JSON lines.
    """

    def __init__(self, model: ZooNet, input_spec: InputSpec, images: ImageSource, source, *,
                 train: TrainConfig, objective: ObjectiveConfig, teacher_version: str,
                 teacher_dim: int | None = None, student_version: str = "",
                 checkpoint_path: str | os.PathLike | None = None, cache: TargetCache | None = None,
                 cache_keys: list[bytes] | None = None, log: Callable[[dict], None] | None = None,
                 progress: bool = True):
        if len(images) == 0:
            raise TrainingError(f"no training images in {images.name}")
        self.model, self.spec, self.images, self.source = model, input_spec, images, source
        self.cfg, self.teacher_version, self.student_version = train, teacher_version, student_version
        self.checkpoint_path, self.cache, self.log, self.progress = checkpoint_path, cache, log, progress
        self.augment = train.augment and cache is None  # cached targets exist only for un-augmented pixels
        self.gap_kind = objective.gap
        self.device = training_device(train.device)
        self.model.to(self.device)
        self.objective = objective_from_config(objective, model.feature_dim, teacher_dim or model.feature_dim)
        self.objective.to(self.device)
        self.batch_size = min(train.batch_size, len(images))
        self.steps_per_epoch = len(images) // self.batch_size  # the last partial batch is dropped
        total = train.epochs * self.steps_per_epoch
        self.total_steps = min(total, train.max_steps) if train.max_steps else total
        self.optimizer, self.scheduler = make_optimizer(
            [*model.parameters(), *self.objective.parameters()], train.optimizer, lr=train.lr,
            momentum=train.momentum, weight_decay=train.weight_decay, schedule=train.schedule,
            total_steps=self.total_steps)
        self.step = 0
        self.resumed_from = 0
        self.order: torch.Tensor | None = None  # the current epoch's permutation
        self.keys = cache_keys
        self.wait_seconds = 0.0
        self.saved_step = -1
        self.stop_requested = False  # set from a signal handler; the loop stops after the current step

    # --- checkpoints ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "objective": self.objective.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "step": self.step, "epoch": self.step // self.steps_per_epoch,
            "batch_in_epoch": self.step % self.steps_per_epoch, "order": self.order,
            "teacher_version": self.teacher_version, "student_version": self.student_version,
            "data": {"name": self.images.name, "size": len(self.images)},
            "batch_size": self.batch_size, "seed": self.cfg.seed, "total_steps": self.total_steps,
            "augment": self.augment,
        }

    def save(self, reason: str) -> None:
        if self.checkpoint_path is None:
            return
        save_checkpoint(self.checkpoint_path, self.state())
        self.saved_step = self.step
        self.emit({"event": "checkpoint", "step": self.step, "reason": reason, "path": str(self.checkpoint_path)})

    def resume(self, force: bool = False) -> int:
        """Load `checkpoint_path` and continue from its step; refuses a checkpoint of another run."""
        state = load_checkpoint(self.checkpoint_path)
        where = str(self.checkpoint_path)
        if state["teacher_version"] != self.teacher_version and not force:
            raise TrainingError(f"{where} was trained against teacher version {state['teacher_version']}, "
                                f"the teacher now is {self.teacher_version}; its targets differ, so resuming "
                                f"would mix two teachers (use --force to resume anyway, or start fresh)")
        mine = {"student_version": self.student_version, "batch_size": self.batch_size,
                "seed": self.cfg.seed, "total_steps": self.total_steps, "augment": self.augment}
        for key, value in mine.items():
            if state[key] != value:
                raise TrainingError(f"{where} has {key}={state[key]!r} but this run has {value!r}; resume "
                                    f"with the same student and settings (or start fresh without --resume)")
        if state["data"]["size"] != len(self.images):
            raise TrainingError(f"{where} was trained on {state['data']['size']} images ({state['data']['name']}), "
                                f"this run has {len(self.images)} ({self.images.name}); resume with the same data")
        self.model.load_state_dict(state["model"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        restore_rng(state)
        self.step = self.resumed_from = int(state["step"])
        self.order = state["order"]
        self.emit({"event": "resume", "step": self.step, "path": where})
        return self.step

    # --- the loop ------------------------------------------------------------------------------

    def emit(self, event: dict) -> None:
        if self.log is not None:
            self.log(event)

    def run(self) -> TrainResult:
        from tqdm import tqdm

        if self.cache is not None:
            self.fill_cache()
        started = time.perf_counter()
        loss_value = math.nan
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", desc="train", dynamic_ncols=True,
                   disable=not self.progress)
        try:
            while self.step < self.total_steps:
                epoch, first = divmod(self.step, self.steps_per_epoch)
                if self.order is None or first == 0:
                    self.order = epoch_order(self.cfg.seed, epoch, len(self.images))
                last = min(self.steps_per_epoch, first + self.total_steps - self.step)
                epoch_start = time.perf_counter()
                for batch, images, features, logits in self.batches_with_targets(epoch, first, last):
                    loss_value, gap_value = self.train_step(images, features, logits)
                    self.step += 1
                    rate = len(images) * (self.step - self.resumed_from) / max(time.perf_counter() - started, 1e-9)
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{loss_value:.4f}", img_s=f"{rate:.0f}")
                    self.emit({"event": "step", "step": self.step, "epoch": epoch, "batch": batch,
                               "loss": loss_value, "gap": gap_value, "lr": self.optimizer.param_groups[0]["lr"],
                               "images_per_s": rate})
                    if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                        self.save("every")
                    if self.stop_requested:
                        self.stop()
                if last == self.steps_per_epoch:
                    self.emit({"event": "epoch", "epoch": epoch, "step": self.step,
                               "seconds": time.perf_counter() - epoch_start, "loss": loss_value})
                    self.order = None
                    self.save("epoch")
            if self.saved_step != self.step:  # stopped by max_steps inside an epoch
                self.save("final")
        finally:
            bar.close()
            if self.cache is not None:
                self.cache.save()
        result = TrainResult(
            steps=self.step, total_steps=self.total_steps, epochs=math.ceil(self.step / self.steps_per_epoch),
            samples=(self.step - self.resumed_from) * self.batch_size, seconds=time.perf_counter() - started,
            target_wait_seconds=self.wait_seconds, final_loss=loss_value, teacher_version=self.teacher_version,
            resumed_from_step=self.resumed_from, source_stats=dict(getattr(self.source, "stats", {}) or {}),
            data_stats=self.images.stats(),
        )
        self.emit({"event": "done", **result.to_dict()})
        return result

    def stop(self) -> None:
        """Save a checkpoint at the current step and raise TrainingInterrupted saying how to resume."""
        if self.saved_step != self.step:
            self.save("interrupt")
        where = f"; checkpoint {self.checkpoint_path} holds it: resume with --resume (resume=True)" \
            if self.checkpoint_path else " (no checkpoint path: nothing saved)"
        raise TrainingInterrupted(f"interrupted at step {self.step}/{self.total_steps}{where}", self.step,
                                  str(self.checkpoint_path) if self.checkpoint_path else None)

    def train_step(self, images: torch.Tensor, features: torch.Tensor, logits: torch.Tensor) -> tuple[float, float]:
        self.model.train()
        images = images.to(self.device, non_blocking=True)
        features, logits = features.to(self.device), logits.to(self.device)
        student_features, student_logits = self.model.features_and_logits(normalize(images, self.spec))
        loss = self.objective.loss(student_features, student_logits, Targets(features, logits))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        gap = math.nan
        if student_features.shape == features.shape:
            gap = float(learning_gap(student_features.detach(), features, self.gap_kind))
        return float(loss.detach()), gap

    def batches_with_targets(self, epoch: int, first: int, last: int) -> Iterator[tuple]:
        """(batch index, uint8 images, features, logits) for batches first..last-1 of the epoch.

        The source pulls batches ahead (prefetch); `produced` remembers them in order so each
        answer is paired with the batch it was asked for.
        """
        produced: deque = deque()
        # Time spent making batches inside next(stream) (the source pulls them as its window allows):
        # data work the loop would do anyway, not waiting for targets, so it is kept out of wait_seconds.
        preparing = [0.0]

        def batches() -> Iterator[torch.Tensor]:
            index_batches = [self.order[b * self.batch_size:(b + 1) * self.batch_size] for b in range(first, last)]
            # decoded ahead by the source's DataLoader workers; a skipped bad file shortens its batch
            started = time.perf_counter()
            for position, indices, images in self.images.stream(index_batches):
                b = first + position
                if self.augment:
                    images = random_crop_flip(images, batch_generator(self.cfg.seed, epoch, b))
                produced.append((b, indices, images))
                preparing[0] += time.perf_counter() - started
                yield images
                started = time.perf_counter()

        def cached(batch_iter: Iterator[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for _ in batch_iter:
                indices = produced[-1][1]
                found = self.cache.lookup([self.keys[int(i)] for i in indices])
                if found is None:  # fill_cache ran first, so only a changed data folder gets here
                    raise TrainingError(f"target cache {self.cache.path} lost samples during the run")
                yield found

        stream = cached(batches()) if self.cache is not None else iter(self.source.stream(batches()))
        try:
            while True:
                waited, prepared = time.perf_counter(), preparing[0]
                item = next(stream, None)
                self.wait_seconds += time.perf_counter() - waited - (preparing[0] - prepared)
                if item is None:
                    return
                b, _, images = produced.popleft()
                yield b, images, item[0], item[1]
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def fill_cache(self) -> None:
        """Ask the teacher once for every sample the cache lacks (un-augmented), then save it."""
        from tqdm import tqdm

        if self.keys is None:
            self.keys = sample_keys(self.images)
        missing = self.cache.missing(self.keys)
        if not missing:
            return
        if self.source is None:
            raise TrainingError(f"target cache {self.cache.path} lacks {len(missing)} of {len(self.keys)} "
                                f"samples and no teacher is reachable; connect to the teacher once to fill it")
        chunks = [torch.tensor(missing[s:s + self.batch_size]) for s in range(0, len(missing), self.batch_size)]
        bar = tqdm(total=len(missing), unit="img", desc="caching targets", disable=not self.progress)
        try:
            pending: deque = deque()

            def pixels() -> Iterator[torch.Tensor]:
                for _, indices, images in self.images.stream(chunks):
                    pending.append(indices)
                    yield images

            for features, logits in self.source.stream(pixels()):
                indices = pending.popleft()
                self.cache.add([self.keys[int(i)] for i in indices], features, logits)
                bar.update(len(indices))
        finally:
            bar.close()
            self.cache.save()
        self.emit({"event": "cache", "added": len(missing), "size": len(self.cache)})
