"""The built-in models, registered as an ordinary plugin (entry point ``models``)."""

from mpqbench import hookimpl
from mpqbench.api import ModelEntry
from mpqbench.models.mobilenet import mobilenet_layout, mobilenetv2
from mpqbench.models.resnets import resnet18, resnet20, resnet20_half, resnet_layout
from mpqbench.models.small_cnn import small_cnn, small_cnn_layout

MODELS = (
    ModelEntry("resnet20", resnet20, resnet_layout, "CIFAR-style ResNet-20 (0.27 M params)"),
    ModelEntry("resnet20-half", resnet20_half, resnet_layout, "ResNet-20, half width: 8/16/32 channels (68 k params)"),
    ModelEntry("resnet18", resnet18, resnet_layout, "torchvision ResNet-18, small-image stem below 64 px"),
    ModelEntry("mobilenetv2", mobilenetv2, mobilenet_layout, "torchvision MobileNetV2, stride 8 below 64 px"),
    ModelEntry("small-cnn", small_cnn, small_cnn_layout, "3-conv CNN for tests"),
)


@hookimpl
def mpqbench_register_models(register):
    for entry in MODELS:
        register(entry)
