"""How a raw image becomes model input: the preprocessing recorded in model files and ONNX sidecars.

An image of any size and mode becomes the model's input in four steps, which an app can redo from
the sidecar alone (`Preprocess.to_dict()` is what it reads):
1. channels: `grey` = ITU-R 601 luma of RGB (0.299 R + 0.587 G + 0.114 B, rounded) or `rgb` = grey
   repeated three times; an alpha channel is dropped (colour values kept as stored, not composited);
2. resize with `interpolation` (antialiased): `fit = "crop"` scales the image so it covers
   height x width (or so its shorter side is `resize` pixels, when `resize` is set, e.g. 146 then a
   128 crop), `fit = "pad"` scales it so it fits inside height x width;
3. centre crop (`crop`) or centre zero-pad (`pad`) to exactly height x width;
4. the model input is (pixels / 255 - mean[c]) / std[c]; steps 1-3 stay uint8 (also on the wire).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FITS = ("crop", "pad")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
LUMA = (0.299, 0.587, 0.114)


def spec_height_width(spec) -> tuple[int, int]:
    """(height, width) of an InputSpec (square `size` or one with `height`/`width`)."""
    return int(getattr(spec, "height", spec.size)), int(getattr(spec, "width", spec.size))


@dataclass(frozen=True)
class Preprocess:
    """Channel mode, geometry and normalisation of a model's input (see the module docstring)."""

    channels: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int = 0  # crop fit: the shorter side before the centre crop; 0 = just cover height x width
    fit: str = "crop"
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels not in (1, 3):
            raise ValueError(f"preprocessing channels must be 1 or 3, got {self.channels}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.resize and (self.fit != "crop" or self.resize < min(self.height, self.width)):
            raise ValueError(f"resize = {self.resize} needs fit = 'crop' and at least the input's shorter "
                             f"side ({min(self.height, self.width)}); 0 = just cover the input")

    @classmethod
    def for_spec(cls, spec, resize: int = 0, fit: str = "crop", interpolation: str = "bilinear") -> "Preprocess":
        """The preprocessing of a model with InputSpec `spec` (default: cover and centre-crop, bilinear)."""
        height, width = spec_height_width(spec)
        return cls(spec.channels, height, width, tuple(spec.mean), tuple(spec.std), resize, fit, interpolation)

    @classmethod
    def from_config(cls, spec, data) -> "Preprocess":
        """`for_spec` with the [data] section's resize, fit and interpolation."""
        return cls.for_spec(spec, data.resize, data.fit, data.interpolation)

    @property
    def input_spec(self):
        """The model's InputSpec (shape and normalisation) that this preprocessing feeds."""
        from lnpt.shared.models import InputSpec

        size = self.height if self.height == self.width else (self.height, self.width)
        return InputSpec(self.channels, size, self.mean, self.std)

    @property
    def channel_mode(self) -> str:
        return "grey" if self.channels == 1 else "rgb"

    def to_dict(self) -> dict:
        return {"channels": self.channels, "channel_mode": self.channel_mode, "height": self.height,
                "width": self.width, "resize": self.resize, "fit": self.fit, "interpolation": self.interpolation,
                "antialias": True, "mean": list(self.mean), "std": list(self.std), "steps": STEPS}

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        return cls(int(d["channels"]), int(d["height"]), int(d["width"]), tuple(d["mean"]), tuple(d["std"]),
                   int(d.get("resize", 0)), str(d.get("fit", "crop")), str(d.get("interpolation", "bilinear")))

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W) or (N, C, H, W) with C in 1..4 -> uint8 with this channel count and size."""
        images = to_channels(images, self.channels)
        height, width = images.shape[-2:]
        if (height, width) == (self.height, self.width):
            return images.contiguous()
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        cover = self.fit == "crop"
        if self.resize:
            scale = self.resize / min(height, width)
        else:
            pick = max if cover else min
            scale = pick(self.height / height, self.width / width)
        new = (max(1, round(height * scale)), max(1, round(width * scale)))
        if cover:  # rounding must never leave the image smaller than the crop
            new = (max(new[0], self.height), max(new[1], self.width))
        else:
            new = (min(new[0], self.height), min(new[1], self.width))
        if new != (height, width):
            mode = InterpolationMode(self.interpolation)
            images = F.resize(images, list(new), interpolation=mode, antialias=mode != InterpolationMode.NEAREST)
        # center_crop crops a larger image (fit 'crop') and zero-pads a smaller one (fit 'pad')
        return F.center_crop(images, [self.height, self.width]).contiguous()


STEPS = ("channels: grey = round(0.299 R + 0.587 G + 0.114 B), rgb = grey repeated; alpha dropped",
         "resize (antialiased, `interpolation`): fit 'crop' covers height x width (or makes the shorter side "
         "`resize` pixels when resize > 0), fit 'pad' fits inside height x width",
         "centre crop (fit 'crop') or centre zero-pad (fit 'pad') to height x width",
         "input = (pixels / 255 - mean[c]) / std[c]")


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (..., C, H, W), C in 1..4 (grey, grey+alpha, RGB, RGBA) -> `channels` (1 or 3)."""
    have = images.shape[-3]
    if have in (2, 4):  # drop alpha
        images = images[..., : have - 1, :, :]
        have -= 1
    if have == channels:
        return images
    if have == 1:
        return images.expand(*images.shape[:-3], channels, *images.shape[-2:])
    weights = torch.tensor(LUMA).view(3, 1, 1)
    return (images.float() * weights).sum(-3, keepdim=True).round().clamp(0, 255).to(torch.uint8)
