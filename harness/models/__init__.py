"""The built-in networks (ResNet-20/18, MobileNetV2, a small CNN) and the layouts they declare."""
