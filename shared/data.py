"""Image data for both sides, as uint8 tensors shaped for the model (N, C, H, W).

Everything travels as uint8 pixels (also on the wire); `normalize` turns a uint8 batch into the
model's float input with the model's own mean/std. Sources:
- Fashion-MNIST (labeled, real) from local files, read by torchvision's `FashionMNIST` reader;
- `UnlabeledImageFolder`: any folder of image files, flat or nested, streamed from disk by
  DataLoader workers (lnpt.shared.images); labels are never read. Labeled sources for the cloud and
  for evaluation are in lnpt.shared.labeled.
"""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
from torch.utils.data import Dataset

from lnpt.shared.images import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, BadFiles, BatchStream, DataError,
                                DecodedFiles, check_readable, scan_images)
from lnpt.shared.preprocess import Preprocess
from lnpt.shared.models import InputSpec

__all__ = ["DataError", "IMAGE_EXTENSIONS", "UnlabeledImageFolder", "adapt", "normalize", "load_fashion_mnist",
           "prepare_fashion_mnist", "random_crop_flip", "write_image_folder", "as_preprocess"]

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_SPEC = InputSpec(1, 28, (0.2860,), (0.3530,))
MISSING_DATA_HELP = ("Fashion-MNIST is not available. Install it with "
                     "`sudo apt-get install dataset-fashion-mnist` (or run `make data`), "
                     "or connect to the internet so torchvision can download it.")


def data_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("LNPT_DATA") or Path.home() / ".cache" / "lnpt")


def prepare_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """Put the four IDX files where torchvision's reader looks (`<root>/FashionMNIST/raw/`).

    Sources, in order: files already there; the Debian package `dataset-fashion-mnist`;
    torchvision's download. Raises DataError naming the fix when none works.
    """
    root = data_root(root)
    raw = root / "FashionMNIST" / "raw"
    if all((raw / name).is_file() for name in FASHION_MNIST_FILES):
        return root
    if all((SYSTEM_FASHION_MNIST / f"{name}.gz").is_file() for name in FASHION_MNIST_FILES):
        raw.mkdir(parents=True, exist_ok=True)
        for name in FASHION_MNIST_FILES:
            tmp = raw / f".{name}.tmp"
            with gzip.open(SYSTEM_FASHION_MNIST / f"{name}.gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            tmp.replace(raw / name)
        return root
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as exc:  # no network here, or a partial download
        raise DataError(f"{MISSING_DATA_HELP} ({type(exc).__name__}: {exc})") from exc
    return root


def load_fashion_mnist(train: bool, root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Real Fashion-MNIST: uint8 images (N, 1, 28, 28) and int64 labels (N,)."""
    from torchvision.datasets import FashionMNIST

    dataset = FashionMNIST(str(prepare_fashion_mnist(root)), train=train, download=False)
    return dataset.data.unsqueeze(1).contiguous(), dataset.targets.long()


def as_preprocess(spec: InputSpec | Preprocess) -> Preprocess:
    """A model's preprocessing: `spec` itself, or the default one of an InputSpec."""
    return spec if isinstance(spec, Preprocess) else Preprocess.for_spec(spec)


def adapt(images: torch.Tensor, spec: InputSpec | Preprocess) -> torch.Tensor:
    """Make a uint8 (N, C, H, W) batch fit `spec`: channels, resize and centre crop (lnpt.shared.preprocess)."""
    return as_preprocess(spec).apply(images)


def normalize(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 (N, C, H, W) pixels -> float32 model input with the spec's mean/std."""
    mean = torch.tensor(spec.mean, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255.0 - mean) / std


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int | None = None) -> torch.Tensor:
    """Per-image random crop after zero padding (default size // 8 pixels) and random horizontal
    flip of a uint8 (N, C, H, W) batch; `generator` makes it reproducible (resumed runs, DDP ranks)."""
    n, _, height, width = images.shape
    pad = max(1, height // 8) if padding is None else padding
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(images)
    for i in range(n):  # a batch of slices costs well under a millisecond
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, top:top + height, left:left + width]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


class TensorImages(Dataset):
    """An in-memory uint8 image tensor as a dataset of single images (no labels)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class UnlabeledImageFolder:
    """Every image file under `root` (any depth), decoded on demand to uint8 (C, H, W) for `spec`.

    Sub-folder names are never read as labels: the folder only ever returns pixels. Nothing is
    loaded up front; `batches` streams index batches through `workers` DataLoader processes and
    applies `on_bad_file` ("skip": skipped and counted in `stats()`; "fail": DataError at the first).
    Construction fails with the path when there is no image, or no readable one.
    """

    def __init__(self, root: str | os.PathLike, spec: InputSpec | Preprocess, *, workers: int = 0,
                 on_bad_file: str = "skip", max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = Path(root)
        self.preprocess = as_preprocess(spec)
        self.spec = spec
        self.workers = workers
        self.files = scan_images(self.root)
        self.report = BadFiles(on_bad_file, str(self.root))
        self.decoded = DecodedFiles(self.files, self.preprocess, max_pixels)
        check_readable(self.decoded, self.report, self.root)
        self.stream = BatchStream(self.decoded, self.report, workers)  # its workers serve every epoch

    @classmethod
    def from_config(cls, root: str | os.PathLike, spec: InputSpec | Preprocess, data) -> "UnlabeledImageFolder":
        """With the [data] section's workers, on_bad_file and max_pixels (and its resize/fit/interpolation
        when `spec` is an InputSpec)."""
        preprocess = spec if isinstance(spec, Preprocess) else Preprocess.from_config(spec, data)
        return cls(root, preprocess, workers=data.workers, on_bad_file=data.on_bad_file, max_pixels=data.max_pixels)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        """One image; a bad file raises DataError with its path and reason (use `batches` to skip)."""
        _, image, reason, _ = self.decoded[index]
        if image is None:
            raise DataError(f"{self.files.path(index)}: {reason}")
        return image

    def batches(self, index_batches: Iterable[torch.Tensor | Sequence[int]]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(position, kept indices, uint8 (N, C, H, W)) for each index batch, decoded by the workers."""
        return self.stream(index_batches)

    def take(self, indices: Sequence[int], batch_size: int = 256) -> torch.Tensor:
        """The good images among `indices` as one uint8 tensor (bad files follow the policy)."""
        chunks = [list(indices[s:s + batch_size]) for s in range(0, len(indices), batch_size)]
        return torch.cat([images for _, _, images in self.batches(chunks)])

    def stats(self) -> dict:
        """Files found, ignored and bad so far (for the final summary and `--format json`)."""
        return {**self.files.summary(), **self.report.to_dict()}


def write_image_folder(images: torch.Tensor, root: str | os.PathLike, labels: Sequence[int] | None = None,
                       class_names: Sequence[str] | None = None, progress: bool = False) -> Path:
    """Write uint8 (N, C, H, W) images as PNG files (into class sub-folders when labels are given)."""
    from PIL import Image
    from tqdm import tqdm

    root = Path(root)
    for i, image in enumerate(tqdm(images, desc="writing images", unit="img", disable=not progress)):
        folder = root
        if labels is not None:
            label = int(labels[i])
            folder = root / (safe_name(class_names[label]) if class_names else str(label))
        folder.mkdir(parents=True, exist_ok=True)
        array = image.permute(1, 2, 0).numpy()
        Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(folder / f"{i:06d}.png")
    return root


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
