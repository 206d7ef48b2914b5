"""Image files on disk: finding them, decoding one, and streaming batches through DataLoader workers.

- `scan_images(root)`: every PNG/JPEG/WEBP/GIF file under a folder, sorted, kept as one numpy bytes
  array (no Python object per file, so forked workers share it instead of copying it); other files
  and macOS `._*` AppleDouble files are counted, not read.
- `decode_file`: `torchvision.io.decode_image` with EXIF orientation; 16-bit images are scaled to 8
  bits (x * 255 / 65535, rounded: never clipped) and counted; the result is shaped by a `Preprocess`.
  The pixel count is checked from the header first, so a decompression bomb is refused unread.
- `BadFiles`: the `data.on_bad_file` policy. "skip": a bad file is skipped and counted (the first few
  named in a warning); "fail": the first one stops the run with its path and reason.
- `BatchStream`: one `torch.utils.data.DataLoader` with `workers` processes, kept for every pass
  (epoch) over the files, so the workers start once. Memory is a few batches, whatever the number
  of files.
"""
from __future__ import annotations

import io
import logging
import os
import struct
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lnpt.shared.errors import LnptError
from lnpt.shared.preprocess import Preprocess

log = logging.getLogger("lnpt.data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif")  # what torchvision.io.decode_image reads
POLICIES = ("skip", "fail")
DEFAULT_MAX_PIXELS = 50_000_000
WARN_FIRST = 5


class DataError(LnptError, RuntimeError):
    """Data is missing or unreadable; the message says what to run or fix."""


class BadImage(Exception):
    """One file that cannot be used as an image; `reason` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


# --- finding files -------------------------------------------------------------------------------

@dataclass
class ImageList:
    """The image files under `root` (relative paths, sorted) and what else was there."""

    root: Path
    paths: np.ndarray  # fixed-width bytes, os.fsencode'd relative paths
    other_files: int = 0  # files without an image extension (counted, never read)
    metadata_files: int = 0  # `._*` AppleDouble files macOS leaves on shared drives
    other_examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def path(self, index: int) -> Path:
        return self.root / os.fsdecode(bytes(self.paths[index]))

    def summary(self) -> dict:
        return {"root": str(self.root), "images": len(self), "other_files": self.other_files,
                "metadata_files": self.metadata_files, "other_examples": self.other_examples}


def scan_images(root: str | os.PathLike, recursive: bool = True) -> ImageList:
    """Every image file under `root` (any depth), in sorted path order; fails when there is none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist" if not root.exists() else f"{root} is not a folder")
    found: list[bytes] = []
    other = metadata = 0
    examples: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if not recursive:
            dirs.clear()
        rel = os.path.relpath(folder, root)
        for name in sorted(files):
            if name.startswith("._"):
                metadata += 1
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.fsencode(name if rel == "." else os.path.join(rel, name)))
            else:
                other += 1
                if len(examples) < WARN_FIRST:
                    examples.append(name if rel == "." else os.path.join(rel, name))
    if not found:
        what = f" ({other} other files, e.g. {', '.join(examples)})" if other else ""
        raise DataError(f"no images found under {root}{what}; lnpt reads {', '.join(IMAGE_EXTENSIONS)}")
    if other:
        log.info("%s: %d files that are not images were ignored (e.g. %s)", root, other, ", ".join(examples))
    return ImageList(root, np.array(found, dtype=bytes), other, metadata, examples)


# --- decoding one file ---------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header(data: np.ndarray) -> tuple[int, int, str, int] | None:
    """(width, height, "PNG", frames) from a PNG's IHDR chunk; None for anything else (PIL reads it).
    An animated PNG (acTL chunk before the image data) counts its frames."""
    head = data[:4096].tobytes()
    if len(head) < 24 or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    actl = head.find(b"acTL")
    frames = struct.unpack(">I", head[actl + 4:actl + 8])[0] if 0 < actl < head.find(b"IDAT") else 1
    return width, height, "PNG", max(frames, 1)


def decode_file(path: str | os.PathLike, preprocess: Preprocess,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, bool]:
    """uint8 (C, H, W) shaped by `preprocess`, and whether it was a 16-bit image scaled to 8 bits.

    Raises BadImage with a reason for an empty, unreadable, truncated, animated or oversized file.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.io import ImageReadMode, decode_image

    try:
        data = np.fromfile(path, dtype=np.uint8)  # a bomb is small on disk: reading is safe, decoding is not
        if data.size == 0:
            raise BadImage(path, "empty file: 0 bytes")
        header = png_header(data)  # the common case, without PIL's per-file cost
        if header is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
                with Image.open(io.BytesIO(data)) as image:  # parses the header only
                    header = image.width, image.height, image.format, getattr(image, "n_frames", 1)
        width, height, kind, frames = header
    except BadImage:
        raise
    except Image.DecompressionBombError:
        raise BadImage(path, f"over data.max_pixels: more than {max_pixels} pixels (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise BadImage(path, "not an image: the content is no image format lnpt knows (wrong extension?)") from None
    except OSError as exc:  # with an errno: the file system; without: PIL could not parse the header
        what = f"cannot read: {exc.strerror}" if exc.errno else f"corrupt or truncated: header: {exc}"
        raise BadImage(path, what) from None
    if width * height > max_pixels:
        raise BadImage(path, f"over data.max_pixels: {width} x {height} = {width * height} pixels > {max_pixels}")
    if frames > 1:
        raise BadImage(path, f"animated: a {kind} with {frames} frames; lnpt reads still images")
    if kind not in ("PNG", "JPEG", "MPO", "WEBP", "GIF"):
        raise BadImage(path, f"unsupported format: a {kind} file; lnpt reads PNG, JPEG, WEBP and GIF (convert it, or check the extension)")
    mode = ImageReadMode.GRAY if preprocess.channels == 1 else ImageReadMode.RGB
    try:
        image = decode_image(torch.from_numpy(data), mode=mode, apply_exif_orientation=True)
    except RuntimeError as exc:  # torchvision prefixes "<function>, <file.cpp>:<line>, "
        raise BadImage(path, f"corrupt or truncated: {kind}: {str(exc).split('.cpp:')[-1].split(', ', 1)[-1]}") from None
    if image.ndim == 4:
        raise BadImage(path, f"animated: a {kind} with {image.shape[0]} frames; lnpt reads still images")
    scaled = image.dtype == torch.uint16
    if scaled:  # 16-bit -> 8-bit by scaling the full range, rounded: nothing is clipped
        image = ((image.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise BadImage(path, f"unsupported mode: pixel type {image.dtype}")
    if not 1 <= image.shape[0] <= 4:
        raise BadImage(path, f"unsupported mode: {image.shape[0]} channels")
    return preprocess.apply(image), scaled


# --- the bad-file policy -------------------------------------------------------------------------

class BadFiles:
    """Counts bad and converted files of one source; `record` applies the `data.on_bad_file` policy."""

    def __init__(self, policy: str = "skip", where: str = ""):
        if policy not in POLICIES:
            raise DataError(f"data.on_bad_file = {policy!r}: expected one of {', '.join(POLICIES)}")
        self.policy, self.where = policy, where
        self.bad: dict[int, tuple[str, str]] = {}  # index -> (path, reason); each file counted once
        self.scaled_16bit: set[int] = set()

    def record(self, index: int, path: str, reason: str) -> None:
        if self.policy == "fail":
            raise DataError(f"{path}: {reason} (data.on_bad_file = 'fail'; 'skip' skips and counts bad files)")
        if index in self.bad:
            return
        self.bad[index] = (path, reason)
        if len(self.bad) <= WARN_FIRST:
            log.warning("skipped bad image %s: %s%s", path, reason,
                        "" if len(self.bad) < WARN_FIRST else " (further bad files are counted, not named)")

    @property
    def count(self) -> int:
        return len(self.bad)

    def to_dict(self) -> dict:
        reasons = Counter(reason.split(":")[0] for _, reason in self.bad.values())  # "corrupt or truncated", ...
        return {"policy": self.policy, "bad_files": self.count, "bad_reasons": dict(reasons),
                "bad_examples": [f"{p}: {r}" for p, r in list(self.bad.values())[:WARN_FIRST]],
                "scaled_16bit": len(self.scaled_16bit)}


# --- streaming -----------------------------------------------------------------------------------

class DecodedFiles(Dataset):
    """Item i = (i, uint8 image or None, bad reason or None, scaled from 16 bits); never raises for a
    bad file, so the main process (not a worker) applies the policy and keeps the counts."""

    def __init__(self, files: ImageList, preprocess: Preprocess, max_pixels: int):
        self.files, self.preprocess, self.max_pixels = files, preprocess, max_pixels

    def __len__(self) -> int:
        return len(self.files)

    def name(self, index: int) -> str:
        return str(self.files.path(index))

    def __getitem__(self, index: int):
        try:
            image, scaled = decode_file(self.files.path(index), self.preprocess, self.max_pixels)
            return index, image, None, scaled
        except BadImage as bad:
            return index, None, bad.reason, False


def collate_decoded(items):
    kept = [(i, image) for i, image, _, _ in items if image is not None]
    indices = torch.tensor([i for i, _ in kept], dtype=torch.long)
    images = torch.stack([image for _, image in kept]) if kept else None
    bad = [(i, reason) for i, image, reason, _ in items if image is None]
    scaled = [i for i, image, _, was in items if was]
    return indices, images, bad, scaled


def check_readable(files: Dataset, report: BadFiles, where: str | os.PathLike) -> None:
    """Fail at start when `files` has no readable image (decodes until the first good one)."""
    for index in range(len(files)):
        _, image, reason, _ = files[index]
        if image is not None:
            return
        report.record(index, files.name(index), reason)
    path, reason = next(iter(report.bad.values()))
    raise DataError(f"no readable image in {where}: all {len(files)} image files are bad (first: {path}: {reason})")


class PlannedBatches:
    """A batch sampler whose index batches are replaced before each pass, so that one DataLoader
    (and its worker processes) serves every epoch in the order the caller chooses."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class BatchStream:
    """Streams index batches of `files` (a dataset of (index, image or None, reason, scaled) items
    with `name(index)`, like DecodedFiles) through `workers` DataLoader processes (0 = in this process).

    The worker processes are started on the first pass and kept for the next ones (persistent
    workers): a DataLoader per pass forked them again every epoch and began each epoch with an empty
    prefetch queue, which kept the trainer waiting for images (`lnpt bench data`, 128 px, 2 workers:
    5.5 % of the time). A pass started while another is still open gets a loader of its own.
    """

    def __init__(self, files: Dataset, report: BadFiles, workers: int = 0):
        self.files, self.report, self.workers = files, report, workers
        self.plan = PlannedBatches()
        self.loader: DataLoader | None = None
        self.busy = False

    def __call__(self, index_batches: Iterable[torch.Tensor | list[int]]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(position in `index_batches`, kept indices, uint8 images) per batch. Bad files are dropped
        from their batch and handed to `report`; a batch with no good file is not yielded."""
        batches = [torch.as_tensor(b, dtype=torch.long).tolist() for b in index_batches]
        if self.workers == 0 or self.busy:
            yield from self.read(self.new_loader(batches, persistent=False))
            return
        if self.loader is None:
            self.loader = self.new_loader(self.plan, persistent=True)
        self.plan.batches = batches  # read by the loader when this pass's iterator starts
        self.busy = True
        try:
            yield from self.read(self.loader)
        finally:
            self.busy = False

    def new_loader(self, batches, persistent: bool) -> DataLoader:
        return DataLoader(self.files, batch_sampler=batches, num_workers=self.workers, collate_fn=collate_decoded,
                          prefetch_factor=2 if self.workers else None, persistent_workers=persistent)

    def read(self, loader: DataLoader) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        for position, (indices, images, bad, scaled) in enumerate(loader):
            for index, reason in bad:
                self.report.record(index, self.files.name(index), reason)
            self.report.scaled_16bit.update(scaled)
            if images is not None:
                yield position, indices, images
