"""Where training images and teacher targets come from, behind two tiny interfaces.

Images: `ImageSource.stream(index_batches)` yields uint8 (N, C, H, W) batches shaped for the student,
decoded from disk by DataLoader workers (`data.workers`) for a folder. Labels are not part of it:
a source holds only pixels (a uint8 tensor or an `UnlabeledImageFolder`) and refuses anything else,
so it has no way to return a label.
Targets come from an `lnpt.edge.teachers.TargetSource` (a guidance server or a teacher file).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from lnpt.shared.data import UnlabeledImageFolder, adapt, as_preprocess, load_fashion_mnist
from lnpt.shared.preprocess import Preprocess
from lnpt.shared.models import InputSpec


class ImageSource:
    """Unlabeled images for one input spec, from memory or streamed from an image folder."""

    def __init__(self, images: torch.Tensor | UnlabeledImageFolder, spec: InputSpec | Preprocess, name: str):
        if not isinstance(images, (torch.Tensor, UnlabeledImageFolder)):
            raise TypeError(f"an ImageSource holds unlabeled pixels (a uint8 tensor or an UnlabeledImageFolder), "
                            f"not {type(images).__name__}: labeled data never reaches edge training")
        self.images = images
        self.spec = spec
        self.preprocess = as_preprocess(spec)
        self.name = name

    @classmethod
    def open(cls, data: str | None, spec: InputSpec | Preprocess, data_root: str | None = None,
             config=None) -> "ImageSource":
        """`data` = a folder of images (any depth; sub-folder names are ignored) or None for the
        Fashion-MNIST training images, read without their labels. `config` is the [data] section
        (workers, on_bad_file, max_pixels, resize/fit/interpolation); None = in-process decoding."""
        if data:
            folder = (UnlabeledImageFolder.from_config(Path(data), spec, config) if config is not None
                      else UnlabeledImageFolder(Path(data), spec))
            return cls(folder, spec, str(data))
        images, _ = load_fashion_mnist(train=True, root=data_root)  # the labels are dropped right here
        return cls(images, spec, "fashion-mnist:train")

    def __len__(self) -> int:
        return len(self.images)

    def stream(self, index_batches: Iterable[torch.Tensor | Sequence[int]]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """(position in `index_batches`, kept indices, uint8 images) per batch. A folder decodes in
        its worker processes and drops bad files (counted in `stats()`) under data.on_bad_file = skip."""
        if isinstance(self.images, torch.Tensor):
            for position, indices in enumerate(index_batches):
                indices = torch.as_tensor(indices, dtype=torch.long)
                yield position, indices, adapt(self.images[indices], self.preprocess)
        else:
            yield from self.images.batches(index_batches)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        """The good images among `indices` as one uint8 batch."""
        if isinstance(self.images, torch.Tensor):
            return adapt(self.images[indices], self.preprocess)
        return self.images.take([int(i) for i in indices])

    def stats(self) -> dict:
        """Files found, ignored and bad (folders); the summary and `--format json` carry it."""
        if isinstance(self.images, torch.Tensor):
            return {"images": len(self.images), "bad_files": 0}
        return self.images.stats()
