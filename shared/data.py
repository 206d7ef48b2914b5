"""Image data for both sides, as uint8 tensors shaped for the model (N, C, H, W).

Everything travels as uint8 pixels (also on the wire); `normalize` turns a uint8 batch into the
model's float input with the model's own mean/std. Sources:
- Fashion-MNIST (labeled, real) from local files, read by torchvision's `FashionMNIST` reader;
- `UnlabeledImageFolder`: any folder of image files, flat or nested; labels are never read.
"""
from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lnpt.shared.errors import LnptError
from lnpt.shared.zoo import InputSpec

SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_SPEC = InputSpec(1, 28, (0.2860,), (0.3530,))
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MISSING_DATA_HELP = ("Fashion-MNIST is not available. Install it with "
                     "`sudo apt-get install dataset-fashion-mnist` (or run `make data`), "
                     "or connect to the internet so torchvision can download it.")


class DataError(LnptError, RuntimeError):
    """Data is missing or unreadable; the message says what to run or fix."""


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


def adapt(images: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """Make a uint8 (N, C, H, W) batch fit `spec`: grey <-> RGB and resize (bilinear)."""
    if images.shape[1] != spec.channels:
        if images.shape[1] == 1:
            images = images.expand(-1, spec.channels, -1, -1)
        else:  # RGB -> grey with ITU-R 601 luma weights
            weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if images.shape[-2:] != (spec.size, spec.size):
        resized = torch.nn.functional.interpolate(images.float(), size=(spec.size, spec.size),
                                                  mode="bilinear", align_corners=False, antialias=True)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    return images.contiguous()


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


def list_images(root: str | os.PathLike) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"no images found under {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


class UnlabeledImageFolder(Dataset):
    """Every image file under `root` (any depth), decoded to uint8 (C, H, W) for `spec`.

    Sub-folder names are never read as labels: the dataset only ever returns pixels.
    """

    def __init__(self, root: str | os.PathLike, spec: InputSpec):
        self.root = Path(root)
        self.spec = spec
        self.files = list_images(root)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        path = self.files[index]
        try:
            with Image.open(path) as image:
                image = image.convert("L" if self.spec.channels == 1 else "RGB")
                if image.size != (self.spec.size, self.spec.size):
                    image = image.resize((self.spec.size, self.spec.size), Image.BILINEAR)
                pixels = np.asarray(image, dtype=np.uint8)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from exc
        tensor = torch.from_numpy(pixels.copy())
        return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()

    def load_all(self) -> torch.Tensor:
        """All images as one uint8 tensor (N, C, H, W); fine for folders that fit in memory."""
        return torch.stack([self[i] for i in range(len(self))])


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
