"""A small CNN for fast tests and plugin authors' smoke runs."""

from __future__ import annotations

from torch import nn

from mpqbench.data.splits import ImageShape
from mpqbench.quant.layout import QuantLayout, make_layout


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU layers (the last two stride 2), global average pool, linear classifier."""

    def __init__(self, shape: ImageShape, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(shape.channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, 2, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * width)
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, shape.classes)

    def forward(self, x):
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(self.pool(x).flatten(1))


def small_cnn(shape: ImageShape) -> nn.Module:
    return SmallCNN(shape)


def small_cnn_layout(model: nn.Module) -> QuantLayout:
    features = {"conv1": ("relu1", "output"), "conv2": ("relu2", "output"), "conv3": ("relu3", "output"),
                "fc": ("fc", "output")}
    return make_layout(model, [], features)
