"""ResNets: the CIFAR-style ResNet-20 and torchvision's ResNet-18 adapted to small images.

Both use torchvision's module names (``layerS.B.conv1``, ``...downsample.0``), so one layout function
declares their bit-sharing rules and OMPQ feature points.
"""

from __future__ import annotations

from torch import nn
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models.resnet import BasicBlock

from mpqbench.data.splits import ImageShape
from mpqbench.quant.layout import QuantLayout, make_layout

SMALL_IMAGE = 64
"""Below this input size the 7x7/stride-2 stem and max-pool of ImageNet ResNets are replaced."""


class ResNetCifar(nn.Module):
    """ResNet-20/32/44/56 of He et al. (2016) for 32x32 (and 28x28) images: three stages of 16/32/64 channels
    (``width`` times 1/2/4), ``n`` basic blocks each. Shortcuts that change shape use a 1x1 conv + BN
    projection (option B) rather than zero padding, so every shortcut is an operation the integer model
    supports."""

    def __init__(self, depth: int, shape: ImageShape, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("ResNet depth must be 6n + 2")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(shape.channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        stages, inplanes = [], width
        for planes, stride in ((width, 1), (2 * width, 2), (4 * width, 2)):
            blocks = []
            for i in range(n):
                s = stride if i == 0 else 1
                down = None
                if s != 1 or inplanes != planes:
                    down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, s, bias=False), nn.BatchNorm2d(planes))
                blocks.append(BasicBlock(inplanes, planes, s, down))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, shape.classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def resnet20(shape: ImageShape) -> nn.Module:
    return ResNetCifar(20, shape)


def resnet20_half(shape: ImageShape) -> nn.Module:
    """ResNet-20 at half width (8/16/32 channels, a quarter of the parameters): less redundancy to absorb
    quantization noise, so low-bit methods separate more."""
    return ResNetCifar(20, shape, width=8)


def resnet18(shape: ImageShape) -> nn.Module:
    """torchvision's ResNet-18; below 64x64 pixels the stem is a 3x3/stride-1 conv with no max-pool."""
    model = tv_resnet18(num_classes=shape.classes)
    if shape.size < SMALL_IMAGE:
        model.conv1 = nn.Conv2d(shape.channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif shape.channels != 3:
        model.conv1 = nn.Conv2d(shape.channels, 64, 7, 2, 3, bias=False)
    return model


def resnet_layout(model: nn.Module) -> QuantLayout:
    """Each block's downsample conv shares the weight bits of the block's second conv (its output is
    added to it). OMPQ features: a block's first conv -> its conv-BN-ReLU output (the second conv's
    input); the second conv -> the block's output after the residual add and ReLU; stem -> the first
    block's input; classifier -> logits."""
    ties, features = [], {"conv1": ("layer1.0", "input"), "fc": ("fc", "output")}
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            features[f"{name}.conv1"] = (f"{name}.conv2", "input")
            features[f"{name}.conv2"] = (name, "output")
            if module.downsample is not None:
                ties.append((f"{name}.conv2", f"{name}.downsample.0"))
    return make_layout(model, ties, features)
