"""ResNet18 with torchvision's layout (11,181,642 parameters for 3 channels and 10 classes)."""
from __future__ import annotations

from typing import Any

from .. import functional as F
from .. import init
from ..layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Identity, Linear, MaxPool2d, ReLU
from ..module import Module, Sequential
from .blocked import Blocked


class BasicBlock(Module):
    """Two 3x3 conv+BN with an identity (or 1x1 conv+BN) shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = BatchNorm2d(cout)
        self.conv2 = Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = BatchNorm2d(cout)
        self.downsample = (Sequential(Conv2d(cin, cout, 1, stride, bias=False), BatchNorm2d(cout))
                           if stride != 1 or cin != cout else Identity())

    def forward(self, x: Any) -> Any:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


class ResNet(Blocked):
    """Blocks: stem, the four residual stages (or each BasicBlock with ``fine=True``), head."""

    def __init__(self, blocks: list[Module], fine_blocks: list[Module]):
        super().__init__(blocks)
        self._fine = fine_blocks

    def blocks(self, fine: bool = False) -> list[Module]:
        return list(self._fine) if fine else super().blocks()


def resnet18(in_channels: int = 3, classes: int = 10, stem: str = "imagenet") -> ResNet:
    """torchvision's resnet18; ``stem="cifar"`` uses a 3x3 stride-1 conv and no max-pool."""
    if stem == "imagenet":
        stem_m = Sequential(Conv2d(in_channels, 64, 7, 2, 3, bias=False), BatchNorm2d(64), ReLU(), MaxPool2d(3, 2, 1))
    elif stem == "cifar":
        stem_m = Sequential(Conv2d(in_channels, 64, 3, 1, 1, bias=False), BatchNorm2d(64), ReLU())
    else:
        raise ValueError(f"resnet18: stem must be 'imagenet' or 'cifar', got {stem!r}")
    stages, cin = [], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        stages.append(Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
        cin = cout
    head = Sequential(AdaptiveAvgPool2d(1), Flatten(), Linear(512, classes))
    for m in [stem_m, *stages]:  # torchvision: kaiming_normal_(fan_out, relu) for convs
        for sub in m.modules():
            if isinstance(sub, Conv2d):
                o, _, kh, kw = sub.weight.data.shape
                sub.weight.data[...] = init.kaiming_normal_fan_out(sub.weight.data.shape, o * kh * kw)
    fine = [stem_m] + [b for s in stages for b in s] + [head]
    return ResNet([stem_m, *stages, head], fine)


__all__ = ["BasicBlock", "ResNet", "resnet18"]
