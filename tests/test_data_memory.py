"""Streaming 20,000 image files costs no more memory than streaming 2,000 (nothing is loaded up front)."""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from lnpt.shared.data import UnlabeledImageFolder
from lnpt.shared.models import InputSpec

SPEC = InputSpec(1, 32, (0.5,), (0.25,))  # 1 KiB per image: 20,000 kept would be 20 MiB


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_tiny_pngs(folder, count: int) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(1024).reshape(32, 32).astype(np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    for i in range(count):
        sub = folder / f"{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        (sub / f"{i:06d}.png").write_bytes(data)


def peak_rss_while_streaming(folder) -> tuple[int, int]:
    """(peak RSS in bytes, images seen) while streaming every image of `folder` once."""
    source = UnlabeledImageFolder(folder, SPEC, workers=0)
    peak = seen = 0
    for _, _, images in source.batches(np.array_split(np.arange(len(source)), max(1, len(source) // 500))):
        seen += len(images)
        peak = max(peak, rss_bytes())
    return peak, seen


def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    write_tiny_pngs(tmp_path / "small", 2_000)
    write_tiny_pngs(tmp_path / "large", 20_000)
    UnlabeledImageFolder(tmp_path / "small", SPEC).take(range(500))  # warm-up: lazy imports, allocator pools
    small, seen_small = peak_rss_while_streaming(tmp_path / "small")
    large, seen_large = peak_rss_while_streaming(tmp_path / "large")
    assert (seen_small, seen_large) == (2_000, 20_000)
    # Keeping the decoded images would add 18 MiB; the path list (one numpy bytes array) adds < 1 MiB.
    assert large - small < 8 * 2**20, f"streaming 20,000 images took {(large - small) / 2**20:.1f} MiB more"
    assert large / small <= 1.1
