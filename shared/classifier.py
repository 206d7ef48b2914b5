"""The interface every lnpt model presents, and the input it takes.

`Classifier`: `forward(x)` gives logits, `features_and_logits(x)` gives the penultimate features (the
input of the final `nn.Linear`, or a named module's output) and the logits from one pass. `InputSpec`:
channels, size and normalisation. Model building from spec strings is `lnpt.shared.models`; the zoo's
networks (`lnpt.shared.zoo`) subclass `Classifier` directly, so this module imports neither.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass

import torch
from torch import nn

from lnpt.shared.errors import LnptError

MIN_SIDE, MAX_SIDE = 8, 1024


class ModelError(LnptError, ValueError):
    """A model spec, weights file or feature node cannot be used; the message says what to change."""


# --- input spec ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class InputSpec:
    """What one image looks like to a model, and how pixels in [0, 1] are normalised.

    `size` is the side of a square input or `(height, width)`; `InputSpec(3, (96, 128), ...)`.
    """

    channels: int = 1
    size: int | tuple[int, int] = 28
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)

    def __post_init__(self) -> None:
        size = self.size
        if isinstance(size, (list, tuple)):
            if len(size) != 2:
                raise ValueError(f"input size must be one side or (height, width), got {size!r}")
            height, width = int(size[0]), int(size[1])
            object.__setattr__(self, "size", height if height == width else (height, width))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels not in (1, 3):
            raise ValueError(f"input channels must be 1 or 3, got {self.channels}")
        if not all(MIN_SIDE <= side <= MAX_SIDE for side in (self.height, self.width)):
            raise ValueError(f"input size must be between {MIN_SIDE} and {MAX_SIDE} per side, got {self.size}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values each, got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")

    @property
    def height(self) -> int:
        return self.size if isinstance(self.size, int) else self.size[0]

    @property
    def width(self) -> int:
        return self.size if isinstance(self.size, int) else self.size[1]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def resized(self, size: int | tuple[int, int]) -> "InputSpec":
        return InputSpec(self.channels, size, self.mean, self.std)

    def to_dict(self) -> dict:
        size = self.size if isinstance(self.size, int) else list(self.size)
        return {"channels": self.channels, "size": size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        size = d["size"]
        size = int(size) if isinstance(size, (int, float)) else tuple(int(s) for s in size)
        return cls(int(d["channels"]), size, tuple(map(float, d["mean"])), tuple(map(float, d["std"])))


def parse_size(text: str | int) -> int | tuple[int, int]:
    """`--input-size` values: `96` (square) or `96x128` (height x width)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(text))
    if not match:
        raise ModelError(f"input size {text!r}: give one side (96) or HEIGHTxWIDTH (96x128)")
    height = int(match.group(1))
    return height if match.group(2) is None else (height, int(match.group(2)))


# --- the common model interface ------------------------------------------------------------------

_CAPTURE = threading.local()  # .slot: the calling thread's list of captured features, or None
_HOOK_LOCK = threading.Lock()


def _capture_input(_module, args) -> None:
    slot = getattr(_CAPTURE, "slot", None)
    if slot is not None:
        slot.append(args[0])


def _capture_output(_module, _args, out) -> None:
    slot = getattr(_CAPTURE, "slot", None)
    if slot is not None:
        slot.append(out)


class Classifier(nn.Module):
    """A classifier whose penultimate features are read at a named module (see the module docstring).

    Attributes: `spec` (the model spec string), `feature_node` (the override, "" = input of the head),
    `head_name` (qualified name of the final Linear, "" when it has none), `feature_dim`, `num_classes`.
    """

    spec: str = ""
    feature_node: str = ""
    head_name: str = ""
    feature_dim: int = 0
    num_classes: int = 0

    @property
    def head(self) -> nn.Linear | None:
        """The final Linear layer (its input is the default feature node), or None."""
        return self.submodule(self.head_name) if self.head_name else None

    def submodule(self, name: str) -> nn.Module:
        """The module at a qualified name (through `_modules`: `head` is also this property's name)."""
        module: nn.Module = self
        for part in name.split("."):
            module = module._modules[part]
        return module

    @property
    def network_prefix(self) -> str:
        """Prefix of the wrapped network's module names inside this model ("" or "net.")."""
        return ""

    def install_feature_hook(self) -> None:
        """Put the capturing hook on the feature node once (again after the node changes)."""
        node = self.feature_node or self.head_name
        if getattr(self, "_hooked_node", None) == node:
            return
        with _HOOK_LOCK:
            if getattr(self, "_hooked_node", None) == node:
                return
            if getattr(self, "_hook_handle", None) is not None:
                self._hook_handle.remove()
            if self.feature_node:
                module = self.submodule(self.network_prefix + self.feature_node)
                self._hook_handle = module.register_forward_hook(_capture_output)
            else:
                self._hook_handle = self.head.register_forward_pre_hook(_capture_input)
            self._hooked_node = node

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features (N, D), logits (N, K)) from one forward pass.

        Thread-safe: the server's batcher threads share one teacher. One hook stays on the feature
        node and fills a per-thread list, so concurrent passes never see each other's features (and
        no thread edits the module's hook table while another iterates it)."""
        self.install_feature_hook()
        _CAPTURE.slot = captured = []
        try:
            logits = self(x)
        finally:
            _CAPTURE.slot = None
        if len(captured) != 1:
            where = self.feature_node or f"the input of {self.head_name}"
            raise ModelError(f"feature node {where} ran {len(captured)} times in one forward pass; "
                             "choose a module that runs exactly once (--feature-node)")
        return captured[0].flatten(1), logits


class Network(Classifier):
    """Any `nn.Module` mapping images to logits (torchvision or user code), held as `net`."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @property
    def network_prefix(self) -> str:
        return "net."

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
