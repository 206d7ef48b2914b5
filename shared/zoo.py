"""The built-in model zoo (one source of `lnpt.shared.models`): small-input networks for 28x28 grey
and 32x32 RGB images, every model split into `body` and `head`.

`body(x)` returns the penultimate features (the vector that enters the final Linear, after global
pooling and flattening); `head` is that final `nn.Linear`, so the generic feature mechanism of
`Classifier` (the input of the final Linear) reads exactly `body(x)`.

The zoo's `resnet18` and `mobilenet_v2` are torchvision's, re-stemmed for small inputs; for the
standard stems use `torchvision:resnet18` / `torchvision:mobilenet_v2`. torchvision is imported only
when one of them is asked for. Build zoo models through
`lnpt.shared.models.build_model` like any other spec.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lnpt.shared.classifier import Classifier


class ZooNet(Classifier):
    """A zoo classifier: a feature extractor (`body`) and a final linear layer (`head`)."""

    head_name = "head"

    def __init__(self, arch: str, body: nn.Module, head: nn.Linear):
        super().__init__()
        self.arch = arch
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# --- LeNet-5 -------------------------------------------------------------------------------------

def lenet5(num_classes: int, in_channels: int, height: int, width: int) -> ZooNet:
    flat = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
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


def cifar_resnet(depth: int) -> Callable[[int, int, int, int], ZooNet]:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
    n = (depth - 2) // 6

    def build(num_classes: int, in_channels: int, height: int, width: int) -> ZooNet:
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


def vgg_bn(depth: int) -> Callable[[int, int, int, int], ZooNet]:
    def build(num_classes: int, in_channels: int, height: int, width: int) -> ZooNet:
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

def resnet18(num_classes: int, in_channels: int, height: int, width: int) -> ZooNet:
    from torchvision.models import resnet18 as tv_resnet18

    net = tv_resnet18(weights=None, num_classes=num_classes)
    # Small inputs: 3x3 stride-1 stem without max-pool keeps spatial resolution (standard CIFAR recipe).
    net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    head, net.fc = net.fc, nn.Identity()
    return ZooNet("resnet18", net, head)


def mobilenet_v2(num_classes: int, in_channels: int, height: int, width: int) -> ZooNet:
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    net = tv_mobilenet_v2(weights=None, num_classes=num_classes)
    # Small inputs: stride-1 first conv, so 32x32 ends at 2x2 instead of 1x1.
    first = net.features[0][0]
    net.features[0][0] = nn.Conv2d(in_channels, first.out_channels, 3, 1, 1, bias=False)
    head = net.classifier[-1]
    net.classifier = nn.Identity()  # features = pooled vector entering the final Linear
    return ZooNet("mobilenet_v2", net, head)


BUILDERS: dict[str, Callable[[int, int, int, int], ZooNet]] = {
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
