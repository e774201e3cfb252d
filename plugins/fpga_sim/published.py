"""Published figures the ``fpga-validate`` benchmark compares with, and the BitFusion benchmark networks.

* ``data/bitfusion_sweep.csv``: the per-layer output of the BitFusion simulator as its repository ships it
  (``results/bitfusion-eyeriss-sim-sweep.csv``, 305 rows; SRAM/DRAM columns in bits).
* :func:`bitfusion_networks`: the eight networks of that sweep, layer by layer, as its ``benchmarks.py``
  builds them with dnnweaver2 (the WRPN variants of AlexNet and ResNet-18, which the sweep uses): shapes
  follow dnnweaver2's rules (SAME padding = kernel // 2 per side; 2x2 max pooling with stride 2, VALID),
  a layer's input bits are the data type of the tensor it reads (a conv/fc output is cast to its
  ``c_dtype``/``f_dtype``; pooling, concatenation, addition and flattening keep their input's type),
  ``Bin`` is 1 bit, and the layer reading the input tensor is lowered with im2col.
* BISMO peaks (binary TOPS) and BitFusion peak MACs per cycle as the papers state them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from mpqbench.integer.shapes import LayerShape

DATA = Path(__file__).with_name("data")

#: BISMO: "8x256x8 @ 200 MHz: 6.5 binary TOPS" (PYNQ-Z1, FPL'18), "15.4" (Ultra96, TRETS'19)
BISMO_PUBLISHED_TOPS = {"bismo-pynq": 6.5, "bismo-ultra96": 15.4}
#: BitFusion ISCA'18, 16x32 fusion units: MACs per cycle at 8-, 4- and 2-bit operands
BITFUSION_PUBLISHED_MACS = {8: 512, 4: 2048, 2: 8192}


@dataclass(frozen=True)
class SweepRow:
    network: str
    layer: str
    m: int
    bandwidth: int
    values: dict


def bitfusion_sweep() -> list[SweepRow]:
    with open(DATA / "bitfusion_sweep.csv", newline="") as fh:
        lines = [line for line in fh if not line.startswith("#")]
    rows = []
    for rec in csv.DictReader(lines):
        values = {k: int(v) for k, v in rec.items() if k not in ("network", "layer", "m", "bandwidth")}
        rows.append(SweepRow(rec["network"], rec["layer"], int(rec["m"]), int(rec["bandwidth"]), values))
    return rows


@dataclass(frozen=True)
class _T:
    """A dnnweaver2 tensor as far as the simulator cares: (H, W, C), bits, read straight from the input."""

    h: int
    w: int
    c: int
    bits: int
    is_input: bool = False


class _Net:
    def __init__(self):
        self.layers: dict[str, LayerShape] = {}

    def conv(self, name, t: _T, filters, k, stride=1, pad="SAME", c_bits=32, w_bits=32) -> _T:
        p = k // 2 if pad == "SAME" else 0
        oh, ow = (t.h - k + 2 * p) // stride + 1, (t.w - k + 2 * p) // stride + 1
        self.layers[f"{name}/Convolution"] = LayerShape(
            f"{name}/Convolution", "conv", t.c, filters, (k, k), (stride, stride), (p, p), 1, (t.h, t.w), (oh, ow),
            w_bits=w_bits, a_bits=t.bits, reads_input=t.is_input)
        return _T(oh, ow, filters, c_bits)

    def fc(self, name, t: _T, out, w_bits, f_bits=64) -> _T:
        self.layers[f"{name}/MatMul"] = LayerShape(f"{name}/MatMul", "linear", t.c, out, w_bits=w_bits, a_bits=t.bits,
                                                   reads_input=t.is_input)
        return _T(1, 1, out, f_bits)

    @staticmethod
    def pool(t: _T) -> _T:
        return _T((t.h - 2) // 2 + 1, (t.w - 2) // 2 + 1, t.c, t.bits)

    @staticmethod
    def concat(*ts: _T, bits=None) -> _T:
        return _T(ts[0].h, ts[0].w, sum(t.c for t in ts), bits or ts[0].bits)

    @staticmethod
    def flatten(t: _T) -> _T:
        return _T(1, 1, t.h * t.w * t.c, t.bits)


def _alexnet_wrpn(n: _Net):
    x = _T(227, 227, 3, 8, True)
    p1 = [n.pool(n.conv(f"conv1_{s}", x, 96, 11, 4, "VALID", 4, 8)) for s in "ab"]
    p2 = [n.pool(n.conv(f"conv2_{s}", p, 256, 5, 1, "SAME", 4, 4)) for s, p in zip("ab", p1)]
    c2 = n.concat(*p2, bits=4)
    c3 = [n.conv(f"conv3_{s}", c2, 384, 3, c_bits=4, w_bits=4) for s in "ab"]
    c4 = [n.conv(f"conv4_{s}", c, 384, 3, c_bits=4, w_bits=4) for s, c in zip("ab", c3)]
    p5 = [n.pool(n.conv(f"conv5_{s}", c, 256, 3, c_bits=4, w_bits=4)) for s, c in zip("ab", c4)]
    f = n.flatten(n.concat(*p5))
    f = n.fc("fc1", f, 8192, 4, 4)
    f = n.fc("fc2", f, 8192, 4, 8)
    n.fc("fc3", f, 1000, 8)


def _qnn(n: _Net, first_filters, bits, first_w, filters=(64, 128, 256)):
    x = _T(32, 32, 3, 8, True)
    t = n.conv("conv0", x, first_filters, 3, c_bits=bits, w_bits=first_w)
    t = n.pool(n.conv("conv1", t, first_filters, 3, c_bits=bits, w_bits=bits))
    t = n.pool(n.conv("conv3", n.conv("conv2", t, filters[1], 3, c_bits=bits, w_bits=bits), filters[1], 3,
                      c_bits=bits, w_bits=bits))
    t = n.pool(n.conv("conv5", n.conv("conv4", t, filters[2], 3, c_bits=bits, w_bits=bits), filters[2], 3,
                      c_bits=bits, w_bits=bits))
    t = n.fc("fc6", n.flatten(t), 1024, bits, bits)
    t = n.fc("fc7", t, 1024, bits, bits)
    n.fc("fc8", t, 10, bits)


def _lenet5(n: _Net):
    t = n.pool(n.conv("conv0", _T(32, 32, 1, 2, True), 32, 5, c_bits=2, w_bits=2))
    t = n.pool(n.conv("conv1", t, 64, 5, c_bits=2, w_bits=2))
    t = n.fc("fc1", n.flatten(t), 512, 2, 2)
    n.fc("fc2", t, 10, 2, 2)


def _vgg7(n: _Net):
    x = _T(32, 32, 3, 2, True)
    branches = []
    for s in "ab":
        t = n.pool(n.conv(f"conv1_{s}", x, 128, 3, c_bits=2, w_bits=2))
        t = n.pool(n.conv(f"conv2_{s}", t, 256, 3, c_bits=2, w_bits=2))
        branches.append(n.pool(n.conv(f"conv3_{s}", t, 512, 3, c_bits=2, w_bits=2)))
    n.fc("fc1", n.flatten(branches[0]), 1024, 2, 2)


def _resnet18_wrpn(n: _Net):
    t = n.pool(n.conv("conv1_a", _T(224, 224, 3, 8, True), 128, 7, 2, c_bits=4, w_bits=8))
    for module, width in zip(range(2, 6), (128, 256, 512, 1024)):
        prev = t
        for i in (1, 2):
            stride = 2 if (i == 1 and module > 2) else 1
            a = n.conv(f"module{module}/conv{module}_{i}_a", prev, width, 1, stride, c_bits=4, w_bits=4)
            b = n.conv(f"module{module}/conv{module}_{i}_b", a, width, 3, c_bits=4, w_bits=4)
            prev = b
        t = b  # add(conv_a, conv_b) keeps the shape and the 4-bit type


def bitfusion_networks() -> dict[str, dict[str, LayerShape]]:
    """The sweep's networks (batch 16 each): network -> {layer name as in the CSV: shape with bits}."""
    builders = {
        "AlexNet": _alexnet_wrpn,
        "SVHN": lambda n: _qnn(n, 64, 1, 1),
        "CIFAR10": lambda n: _qnn(n, 128, 2, 8, (128, 256, 512)),
        "LeNet-5": _lenet5,
        "VGG-7": _vgg7,
        "RESNET-18": _resnet18_wrpn,
        "RNN": lambda n: n.fc("matmul", _T(1, 1, 4096, 4, True), 4096, 4),
        "LSTM": lambda n: n.fc("matmul", _T(1, 1, 3600, 4, True), 3600, 4),
    }
    nets = {}
    for name, build in builders.items():
        net = _Net()
        build(net)
        nets[name] = net.layers
    return nets


#: HAQ's MobileNetV2 latency table (``lib/simulator/lookup_tables/qmobilenetv2_imagenet100_batch16_latency_table.npy``
#: in mit-han-lab/haq: 53 layers x 8 w-bits x 8 a-bits, batch 16, cloud BISMO, unit and configuration not
#: stated), summarised: totals at uniform bits and the bit-scaling of its first and last layers.
HAQ_MOBILENETV2 = {
    "layers": 53,
    "total": {8: 39624933, 4: 15716150, 2: 7063425, 1: 3433704},
    "first_w8a1_over_w1a1": 1.019, "first_w1a8_over_w1a1": 8.004,
    "last_w8a1_over_w1a1": 8.000, "last_w1a8_over_w1a1": 1.001,
    "per_layer_w8a8_over_w1a1": (8.00, 48.3),
}
