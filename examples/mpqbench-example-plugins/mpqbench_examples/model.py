"""``lenet5``: LeCun et al.'s LeNet-5 (1998) for small grey images, as a model plugin.

Convolutions are padded (``same``) so 8x8 images survive both 2x2 max pools; the classic tanh and average
pooling are ReLU and max pooling, which the integer export supports (ReLU is the clamp of a requantised
op; a max pool is exact on integers), and each convolution is followed by batch normalisation (folded into
the integer model), without which a few tiny-recipe epochs do not train it. ``build(shape)`` returns a
fresh FP32 module, ``layout(module)`` its QuantLayout: the traced layers in order, plus, for feature-based
methods, where each unit's features are.
"""

from __future__ import annotations

from torch import nn

from mpqbench import hookimpl
from mpqbench.api import ImageShape, ModelEntry
from mpqbench.quant.layout import make_layout


class LeNet5(nn.Module):
    def __init__(self, shape: ImageShape):
        super().__init__()
        self.conv1 = nn.Conv2d(shape.channels, 6, 5, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=2, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        side = shape.size // 4
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, shape.classes)

    def forward(self, x):
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        x = self.relu3(self.fc1(x.flatten(1)))
        return self.fc3(self.relu4(self.fc2(x)))


def layout(model: nn.Module):
    features = {"conv1": ("relu1", "output"), "conv2": ("relu2", "output"), "fc1": ("relu3", "output"),
                "fc2": ("relu4", "output"), "fc3": ("fc3", "output")}
    return make_layout(model, [], features)


@hookimpl
def mpqbench_register_models(register):
    register(ModelEntry("lenet5", LeNet5, layout, "LeNet-5 with batch norm, ReLU and max pooling, padded convolutions"))
