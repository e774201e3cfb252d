"""torchvision's MobileNetV2 adapted to 28x28 / 32x32 images."""

from __future__ import annotations

from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.ops.misc import Conv2dNormActivation

from mpqbench.data.splits import ImageShape
from mpqbench.models.resnets import SMALL_IMAGE
from mpqbench.quant.layout import QuantLayout, make_layout


def mobilenetv2(shape: ImageShape) -> nn.Module:
    """Below 64x64 pixels the stem and the first 24-channel block use stride 1 instead of 2 (the usual
    CIFAR adaptation: total stride 8, so 28x28 ends at 4x4); the stem reads ``shape.channels``."""
    model = mobilenet_v2(num_classes=shape.classes)
    stem = model.features[0][0]
    stride = 1 if shape.size < SMALL_IMAGE else 2
    model.features[0][0] = nn.Conv2d(shape.channels, stem.out_channels, 3, stride, 1, bias=False)
    if shape.size < SMALL_IMAGE:
        depthwise = model.features[2].conv[1][0]
        depthwise.stride = (1, 1)
    return model


def mobilenet_layout(model: nn.Module) -> QuantLayout:
    """No shared weight bits. OMPQ features: every conv -> its conv-BN-activation output; a block's
    projection conv -> the block's output (after the residual add where there is one); classifier ->
    logits."""
    features = {}
    for name, module in model.named_modules():
        if isinstance(module, Conv2dNormActivation):
            features[f"{name}.0"] = (name, "output")
        elif isinstance(module, InvertedResidual):
            project = len(module.conv) - 2
            features[f"{name}.conv.{project}"] = (name, "output")
    features["classifier.1"] = ("classifier.1", "output")
    return make_layout(model, [], features)
