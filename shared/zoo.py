"""Model zoo for 28x28 grey and 32x32 RGB inputs, every model split into `body` and `head`.

`body(x)` returns the penultimate features (the vector that enters the final Linear, after global
pooling and flattening); `head` is that final `nn.Linear`. `forward(x)` returns logits and
`features_and_logits(x)` returns both from one pass, so the teacher, the learning gap and ONNX
export all read features the same way without hooks into model internals.

torchvision models (ResNet-18, MobileNetV2) are built by torchvision and only re-stemmed for small
inputs; torchvision is imported only when one of them is asked for.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


class ZooNet(nn.Module):
    """A classifier made of a feature extractor (`body`) and a final linear layer (`head`)."""

    def __init__(self, arch: str, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.arch = arch
        self.body = body
        self.head = head

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


# --- LeNet-5 -------------------------------------------------------------------------------------

def lenet5(num_classes: int, in_channels: int, image_size: int) -> ZooNet:
    flat = 16 * ((image_size // 2 - 4) // 2) ** 2
    body = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 120), nn.ReLU(inplace=True),
        nn.Linear(120, 84), nn.ReLU(inplace=True),
    )
    return ZooNet("lenet5", body, nn.Linear(84, num_classes))


# --- CIFAR ResNet (He et al. 2016, 6n+2 layers, 1x1-conv shortcuts) ------------------------------

class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def cifar_resnet(depth: int) -> Callable[[int, int, int], ZooNet]:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6

    def build(num_classes: int, in_channels: int, image_size: int) -> ZooNet:
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        ]
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return ZooNet(f"resnet{depth}", nn.Sequential(*layers), nn.Linear(64, num_classes))

    return build


# --- VGG with batch norm, CIFAR variant (one Linear classifier on 512 features) -------------------

VGG_CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
         512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def vgg_bn(depth: int) -> Callable[[int, int, int], ZooNet]:
    def build(num_classes: int, in_channels: int, image_size: int) -> ZooNet:
        layers: list[nn.Module] = []
        channels = in_channels
        for item in VGG_CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: 28x28 inputs reach 1x1 too
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False),
                           nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
                channels = item
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        return ZooNet(f"vgg{depth}_bn", nn.Sequential(*layers), nn.Linear(512, num_classes))

    return build


# --- torchvision models with a small-input stem --------------------------------------------------

def resnet18(num_classes: int, in_channels: int, image_size: int) -> ZooNet:
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=num_classes)
    # Small inputs: 3x3 stride-1 stem without max-pool keeps spatial resolution (standard CIFAR recipe).
    net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    head, net.fc = net.fc, nn.Identity()
    return ZooNet("resnet18", net, head)


def mobilenet_v2(num_classes: int, in_channels: int, image_size: int) -> ZooNet:
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    net = tv_mobilenet_v2(weights=None, num_classes=num_classes)
    # Small inputs: stride-1 first conv, so 32x32 ends at 2x2 instead of 1x1.
    first = net.features[0][0]
    net.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, 1, 1, bias=False)
    head = net.classifier[-1]
    net.classifier = nn.Identity()  # features = pooled vector entering the final Linear
    return ZooNet("mobilenet_v2", net, head)


BUILDERS: dict[str, Callable[[int, int, int], ZooNet]] = {
    "lenet5": lenet5,
    "resnet20": cifar_resnet(20),
    "resnet32": cifar_resnet(32),
    "resnet56": cifar_resnet(56),
    "vgg11_bn": vgg_bn(11),
    "vgg16_bn": vgg_bn(16),
    "vgg19_bn": vgg_bn(19),
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
}
MODEL_NAMES = tuple(BUILDERS)


@dataclass(frozen=True)
class InputSpec:
    """What one image looks like to a model, and how pixels in [0, 1] are normalised."""

    channels: int = 1
    size: int = 28
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"input channels must be 1 or 3, got {self.channels}")
        if not 8 <= self.size <= 512:
            raise ValueError(f"input size must be between 8 and 512, got {self.size}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values each, got {self.mean} / {self.std}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std values must be positive, got {self.std}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def to_dict(self) -> dict:
        return {"channels": self.channels, "size": self.size, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        return cls(int(d["channels"]), int(d["size"]), tuple(map(float, d["mean"])), tuple(map(float, d["std"])))


def build_model(arch: str, num_classes: int = 10, input_spec: InputSpec = InputSpec()) -> ZooNet:
    """Build an untrained zoo model, e.g. `build_model("resnet20", 10, InputSpec(3, 32, ...))`."""
    if arch not in BUILDERS:
        raise ValueError(f"unknown model {arch!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return BUILDERS[arch](num_classes, input_spec.channels, input_spec.size)
