"""Labeled image sources, for the cloud (teacher training) and for evaluation only.

The edge's training path never sees these: `lnpt.edge.training.image_source.ImageSource` accepts
only unlabeled pixels. Sources:
- an image folder with one sub-folder per class (torchvision `ImageFolder` convention: classes are
  the sorted sub-folder names, files found at any depth below them);
- a CSV file of `path,label` rows (column names from `data.csv_path_column` / `data.csv_label_column`;
  paths relative to the CSV's folder); classes are the sorted distinct labels;
- Fashion-MNIST (the default), from memory.
Files are decoded on demand (DataLoader workers, the same decoder and bad-file policy as unlabeled
folders); `batches` yields (indices, images, labels) without loading the set into memory.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lnpt.shared.images import (DEFAULT_MAX_PIXELS, BadFiles, BadImage, BatchStream, DataError, ImageList,
                                check_readable, decode_file, scan_images)
from lnpt.shared.preprocess import Preprocess


class LabeledImages(Dataset):
    """Labeled images: item i = (i, uint8 image or None, bad reason, scaled-from-16-bit), labels in
    `labels`, class names in `classes`. Built by `image_folder`, `csv_file`, `in_memory` or `open_labeled`."""

    def __init__(self, name: str, root: Path | None, paths: np.ndarray | None, pixels: torch.Tensor | None,
                 labels: np.ndarray, classes: Sequence[str], preprocess: Preprocess, *, workers: int = 0,
                 on_bad_file: str = "skip", max_pixels: int = DEFAULT_MAX_PIXELS, check: bool = True):
        self.name_, self.root, self.paths, self.pixels = name, root, paths, pixels
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.preprocess, self.workers, self.max_pixels = preprocess, workers, max_pixels
        self.report = BadFiles(on_bad_file, name)
        self.stream = BatchStream(self, self.report, workers)  # its workers serve every epoch
        if len(self.labels) == 0:
            raise DataError(f"{name}: no labeled images")
        if check:
            check_readable(self, self.report, name)

    # --- the dataset protocol used by lnpt.shared.images.BatchStream -----------------------------

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, index: int) -> str:
        if self.paths is None:
            return f"{self.name_}[{index}]"
        return str(self.root / os.fsdecode(bytes(self.paths[index])))

    def __getitem__(self, index: int):
        if self.pixels is not None:
            return index, self.preprocess.apply(self.pixels[index]), None, False
        try:
            image, scaled = decode_file(self.name(index), self.preprocess, self.max_pixels)
            return index, image, None, scaled
        except BadImage as bad:
            return index, None, bad.reason, False

    # --- what callers use -----------------------------------------------------------------------

    def batches(self, index_batches: Iterable[Sequence[int] | torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(kept indices, uint8 images, int64 labels) per index batch; bad files follow the policy."""
        for _, indices, images in self.stream(index_batches):
            yield indices, images, torch.from_numpy(self.labels[indices.numpy()])

    def in_order(self, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return self.batches(torch.arange(len(self)).split(batch_size))

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> "LabeledImages":
        """The same source restricted to `indices` (its own bad-file counts)."""
        indices = np.asarray(indices, dtype=np.int64)
        return LabeledImages(name or f"{self.name_} (subset)", self.root,
                             None if self.paths is None else self.paths[indices],
                             None if self.pixels is None else self.pixels[torch.from_numpy(indices)],
                             self.labels[indices], self.classes, self.preprocess, workers=self.workers,
                             on_bad_file=self.report.policy, max_pixels=self.max_pixels, check=False)

    def split(self, fraction: float, seed: int = 0) -> tuple["LabeledImages", "LabeledImages"]:
        """(rest, held out): a seeded split holding out `fraction` of every class (stratified)."""
        if not 0 < fraction < 1:
            raise DataError(f"validation fraction must be between 0 and 1, got {fraction}")
        held = stratified_pick(self.labels, fraction, seed)
        rest = np.setdiff1d(np.arange(len(self)), held)
        return (self.subset(rest, f"{self.name_} ({1 - fraction:.0%} kept for training)"),
                self.subset(held, f"{self.name_} ({fraction:.0%} held out, seed {seed})"))

    def relabeled(self, class_names: Sequence[str]) -> "LabeledImages":
        """Labels in a model's class order: each class of this source must be one of `class_names`
        (by name, by file-safe name as `write_image_folder` writes it, or as a class index)."""
        from lnpt.shared.data import safe_name

        by_name = {safe_name(n): i for i, n in enumerate(class_names)} | {n: i for i, n in enumerate(class_names)}
        mapping = []
        for name in self.classes:
            label = by_name.get(name, by_name.get(safe_name(name)))
            if label is None and name.isdigit() and int(name) < len(class_names):
                label = int(name)
            if label is None:
                raise DataError(f"{self.name_}: class {name!r} is not one of the model's classes "
                                f"({', '.join(class_names)}) nor a class index")
            mapping.append(label)
        out = self.subset(np.arange(len(self)), self.name_)
        out.labels, out.classes = np.asarray(mapping, dtype=np.int64)[self.labels], list(class_names)
        return out

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, counts)}

    def stats(self) -> dict:
        return {"data": self.name_, "images": len(self), "classes": self.classes, **self.report.to_dict()}


def stratified_pick(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded `fraction` of every class (at least one of a class with two or more)."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = int(round(fraction * len(members)))
        if len(members) > 1:
            count = min(max(count, 1), len(members) - 1)
        picked.append(rng.permutation(members)[:count])
    return np.sort(np.concatenate(picked))


# --- constructors --------------------------------------------------------------------------------

def image_folder(root: str | os.PathLike, preprocess: Preprocess, **options) -> LabeledImages:
    """`root/<class>/.../<image>`: classes are the sorted sub-folder names (torchvision ImageFolder)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"labeled folder {root} does not exist")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders; a labeled folder is <root>/<class name>/<images> "
                        "(or give a CSV of path,label rows)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        found: ImageList = scan_images(root / name)  # a class without images fails here, with its path
        paths.extend(os.fsencode(os.path.join(name, os.fsdecode(bytes(p)))) for p in found.paths)
        labels.extend([label] * len(found))
    return LabeledImages(str(root), root, np.array(paths, dtype=bytes), None, np.array(labels), classes,
                         preprocess, **options)


def csv_file(path: str | os.PathLike, preprocess: Preprocess, path_column: str = "path",
             label_column: str = "label", **options) -> LabeledImages:
    """Rows of a CSV file with a header naming `path_column` and `label_column`; image paths are
    relative to the CSV's folder (or absolute); classes are the sorted distinct labels."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file {path} does not exist")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (path_column, label_column) if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: no column {' or '.join(map(repr, missing))} in the header "
                            f"{reader.fieldnames}; set data.csv_path_column / data.csv_label_column")
        rows = [(r[path_column], r[label_column]) for r in reader if r[path_column]]
    if not rows:
        raise DataError(f"{path}: no rows")
    classes = sorted({label for _, label in rows})
    index = {name: i for i, name in enumerate(classes)}
    paths = np.array([os.fsencode(p) for p, _ in rows], dtype=bytes)
    return LabeledImages(str(path), path.parent, paths, None, np.array([index[l] for _, l in rows]), classes,
                         preprocess, **options)


def in_memory(name: str, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
              preprocess: Preprocess) -> LabeledImages:
    """uint8 (N, C, H, W) images already in memory (Fashion-MNIST), shaped once by `preprocess`."""
    shaped = torch.cat([preprocess.apply(chunk) for chunk in images.split(4096)]) if len(images) else images
    return LabeledImages(name, None, None, shaped, labels.numpy(), classes, preprocess, check=False)


def fashion_mnist(train: bool, preprocess: Preprocess, root: str | None = None, limit: int = 0) -> LabeledImages:
    """The Fashion-MNIST training or test set as a labeled source (first `limit` images; 0 = all)."""
    from lnpt.shared.data import FASHION_MNIST_CLASSES, load_fashion_mnist

    images, labels = load_fashion_mnist(train, root)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return in_memory(f"fashion-mnist:{'train' if train else 'test'}", images, labels, FASHION_MNIST_CLASSES, preprocess)


def open_labeled(data: str | os.PathLike, preprocess: Preprocess, config=None) -> LabeledImages:
    """A labeled source from a path: a `.csv` file, or a folder of class sub-folders. `config` is the
    [data] section (workers, on_bad_file, max_pixels, CSV column names); None = defaults."""
    options = {}
    columns = {}
    if config is not None:
        options = {"workers": config.workers, "on_bad_file": config.on_bad_file, "max_pixels": config.max_pixels}
        columns = {"path_column": config.csv_path_column, "label_column": config.csv_label_column}
    if str(data).lower().endswith(".csv"):
        return csv_file(data, preprocess, **columns, **options)
    return image_folder(data, preprocess, **options)


def measure_mean_std(source: LabeledImages, samples: int = 1000, seed: int = 0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of pixels / 255 over a seeded sample of `source` (after preprocessing)."""
    picked = np.sort(np.random.default_rng(seed).permutation(len(source))[:samples])
    total = total_sq = count = 0
    for _, images, _ in source.batches(torch.from_numpy(picked).split(256)):
        x = images.double() / 255
        total = total + x.sum((0, 2, 3))
        total_sq = total_sq + (x * x).sum((0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (total_sq / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(m), 4) for m in mean), tuple(max(round(float(s), 4), 1e-3) for s in std)
