"""The teacher's labeled data: Fashion-MNIST by default, or the user's own folder or CSV.

`teacher_data(config)` picks the training and validation sources from the [data] section
(`labeled`, `val`, `val_fraction`) and the preprocessing the teacher records: the input shape from
`data.channels`/`data.size`, resize/fit/interpolation from [data], mean/std from `data.mean`/
`data.std` or measured on the training images (Fashion-MNIST: its published statistics).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, Sampler

from lnpt.shared import labeled
from lnpt.shared.config import Config
from lnpt.shared.data import FASHION_MNIST_SPEC
from lnpt.shared.images import DataError
from lnpt.shared.inference import outputs
from lnpt.shared.labeled import LabeledImages
from lnpt.shared.preprocess import Preprocess


@dataclass
class TeacherData:
    train: LabeledImages
    val: LabeledImages | None  # None: no validation set (own data without val / val_fraction)
    preprocess: Preprocess
    name: str  # what the teacher was trained on, recorded in its model file

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def teacher_data(config: Config, data: str | None = None, val_data: str | None = None,
                 val_fraction: float | None = None) -> TeacherData:
    """Training and validation sources for the teacher; arguments given here override [data]."""
    dc = config.data
    data = dc.labeled if data is None else data
    val_data = dc.val if val_data is None else val_data
    val_fraction = dc.val_fraction if val_fraction is None else val_fraction
    tc = config.teacher
    if val_data and val_fraction:
        raise DataError("give a validation folder (data.val / --val-data) or a validation fraction "
                        "(data.val_fraction / --val-fraction), not both")
    channels, size = dc.channels, dc.size
    if data:
        placeholder = Preprocess(channels, size, size, (0.5,) * channels, (0.5,) * channels,
                                 dc.resize, dc.fit, dc.interpolation)
        train = labeled.open_labeled(data, placeholder, dc)
        if dc.mean or dc.std:
            mean, std = tuple(dc.mean), tuple(dc.std)
        else:
            mean, std = labeled.measure_mean_std(train, seed=tc.seed)
        preprocess = dataclasses.replace(placeholder, mean=mean, std=std)
        train.preprocess = preprocess
        name = str(data)
    else:
        base = FASHION_MNIST_SPEC
        mean, std = tuple(dc.mean) or base.mean * channels, tuple(dc.std) or base.std * channels
        preprocess = Preprocess(channels, size, size, mean, std, dc.resize, dc.fit, dc.interpolation)
        train = labeled.fashion_mnist(True, preprocess, dc.root or None)
        name = "fashion-mnist"
    val = None
    if val_fraction:
        train, val = train.split(val_fraction, tc.seed)
    elif val_data:
        val = labeled.open_labeled(val_data, preprocess, dc).relabeled(train.classes)
    elif not data:
        val = labeled.fashion_mnist(False, preprocess, dc.root or None, tc.test_samples)
    if tc.train_samples and tc.train_samples < len(train):
        keep = np.sort(np.random.default_rng(tc.seed).permutation(len(train))[:tc.train_samples])
        train = train.subset(keep, f"{train.name_} (first {tc.train_samples} of a seeded order)")
    if val is not None and tc.test_samples and tc.test_samples < len(val):
        val = val.subset(np.arange(tc.test_samples), val.name_)
    return TeacherData(train, val, preprocess, name)


def epoch_batches(source: LabeledImages, sampler: Sampler, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (uint8 images, labels) in the sampler's order, decoded by the source's workers."""
    for _, images, labels in source.batches(list(BatchSampler(sampler, batch_size, drop_last=False))):
        yield images, labels


def batches_per_epoch(sampler: Sampler, batch_size: int) -> int:
    return math.ceil(len(sampler) / batch_size)


@torch.inference_mode()
def source_accuracy(model: torch.nn.Module, source: LabeledImages, preprocess: Preprocess,
                    batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on a labeled source, streamed in batches (bad files follow the policy)."""
    correct = seen = 0
    for _, images, labels in source.in_order(batch_size):
        _, logits = outputs(model, images, preprocess.input_spec, batch_size)
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
    return correct / max(1, seen)
