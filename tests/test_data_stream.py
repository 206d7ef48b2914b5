"""BatchStream keeps its DataLoader workers across passes (epochs) and still returns every pass's
own batches in order; a pass opened while another is running gets a loader of its own."""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lnpt.shared.data import UnlabeledImageFolder
from lnpt.shared.images import BadFiles, BatchStream
from lnpt.shared.models import InputSpec

GREY16 = InputSpec(1, 16, (0.5,), (0.25,))


class WorkerPids(Dataset):
    """Item i = (i, the decoding process's pid as a 1x1x1 "image", no bad reason, not 16-bit)."""

    def __len__(self) -> int:
        return 64

    def name(self, index: int) -> str:
        return f"item {index}"

    def __getitem__(self, index: int):
        return index, torch.tensor([[[os.getpid()]]], dtype=torch.int64), None, False


def test_the_workers_are_started_once_for_every_pass():
    torch.set_num_threads(1)
    stream = BatchStream(WorkerPids(), BadFiles(), workers=2)
    pids, orders = [], []
    for epoch in range(3):
        order = torch.randperm(64, generator=torch.Generator().manual_seed(epoch)).split(8)
        seen = list(stream(order))
        orders.append([indices.tolist() for _, indices, _ in seen])
        assert orders[-1] == [batch.tolist() for batch in order]  # this pass's batches, in this pass's order
        pids.append({int(pid) for _, _, images in seen for pid in images.flatten()})
    assert len(pids[0]) == 2 and os.getpid() not in pids[0]
    assert pids[0] == pids[1] == pids[2]  # the same two processes served every epoch


def test_a_pass_opened_during_another_gets_the_right_pixels(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / f"{i:02d}.png")
    expected = UnlabeledImageFolder(tmp_path, GREY16, workers=0).take(range(12))
    folder = UnlabeledImageFolder(tmp_path, GREY16, workers=2)
    outer = folder.batches([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
    _, first_indices, first = next(outer)
    inner = folder.take([11, 10, 9])  # e.g. a look at a few images in the middle of an epoch
    rest = list(outer)
    assert torch.equal(inner, expected[[11, 10, 9]])
    assert torch.equal(torch.cat([first, *[images for _, _, images in rest]]), expected)
    assert first_indices.tolist() == [0, 1, 2]
    again = torch.cat([images for _, _, images in folder.batches([[5, 6], [0]])])  # the kept loader, reused
    assert torch.equal(again, expected[[5, 6, 0]])
