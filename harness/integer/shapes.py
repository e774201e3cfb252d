"""The GEMM/convolution shape of every conv/linear layer, one record for every consumer.

Hardware targets and cost models need the same few numbers per layer: channels, kernel, stride, groups,
input and output spatial size, MACs per image, weight bits and the bits of the tensor the layer reads.
:func:`op_shapes` reads them from an :class:`~mpqbench.integer.model.IntegerModel` (a deployed network),
:func:`layer_shapes` from a float ``nn.Module`` and an input shape by forward hooks (before any bit
widths are chosen, e.g. to tabulate a per-layer latency for a search); both give :class:`LayerShape`,
keyed by the layer (module) name, so a cost computed on one can be summed against the other.

Conventions: a linear layer is a 1x1 "convolution" over ``positions`` output vectors per image (1 for a
CNN classifier; the product of the leading dimensions otherwise) with ``in_channels`` = input features
(after any flatten).  ``macs = out_channels * positions * in_channels / groups * kh * kw`` per image.
As a GEMM per group: ``M = out_channels / groups`` (weights), ``K = in_channels / groups * kh * kw``,
``N = positions * batch`` (activations, im2col columns).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from mpqbench.integer.model import IntegerModel, Op

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn


@dataclass(frozen=True)
class LayerShape:
    name: str
    kind: str  # "conv" or "linear"
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    w_bits: int | None = None  #: None where no bit width is chosen yet (:func:`layer_shapes`)
    a_bits: int | None = None  #: bits of the tensor the layer reads
    a_signed: bool | None = None
    reads_input: bool = False  #: reads the network's input tensor (some accelerators lower it differently)

    @property
    def positions(self) -> int:
        """Output pixels (conv) or output vectors (linear) per image."""
        return self.out_hw[0] * self.out_hw[1]

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image."""
        return self.out_channels * self.positions * self.reduction

    @property
    def reduction(self) -> int:
        """Terms summed per output value: in_channels / groups * kh * kw."""
        return self.in_channels // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def params(self) -> int:
        return self.out_channels * self.reduction

    def gemm(self, batch: int = 1) -> tuple[int, int, int]:
        """(M, K, N) of one group's GEMM: weights M x K times activations K x N; ``groups`` of them."""
        return self.out_channels // self.groups, self.reduction, self.positions * batch

    def with_bits(self, w_bits: int, a_bits: int, a_signed: bool | None = None) -> "LayerShape":
        data = asdict(self)
        data.update(w_bits=int(w_bits), a_bits=int(a_bits))
        if a_signed is not None:
            data["a_signed"] = bool(a_signed)
        return LayerShape(**data)

    def geometry(self) -> tuple:
        """Everything but the name and the bits: equal geometries cost the same at equal bits."""
        return (self.kind, self.in_channels, self.out_channels, self.kernel, self.stride, self.padding, self.groups,
                self.in_hw, self.out_hw, self.reads_input)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def op_shape(imodel: IntegerModel, op: Op) -> LayerShape:
    """The shape of one conv/linear op; its input tensor's declared shape gives the spatial size."""
    inp = imodel.tensors[op.inputs[0]]
    common = {"name": op.name, "w_bits": int(op.attrs["w_bits"]), "a_bits": int(inp.bits), "a_signed": bool(inp.signed),
              "reads_input": op.inputs[0] == imodel.input}
    if op.kind == "conv":
        o, cg, kh, kw = (int(v) for v in op.attrs["w_shape"])
        c, h, w = (tuple(inp.shape) + (1, 1))[:3]
        (sh, sw), (ph, pw) = _pair(op.attrs["stride"]), _pair(op.attrs["padding"])
        groups = int(op.attrs.get("groups", 1))
        if cg * groups != c:
            raise ValueError(f"{op.name}: {cg} x {groups} groups input channels for a {c}-channel tensor")
        out_hw = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
        return LayerShape(kind="conv", in_channels=c, out_channels=o, kernel=(kh, kw), stride=(sh, sw),
                          padding=(ph, pw), groups=groups, in_hw=(h, w), out_hw=out_hw, **common)
    if op.kind == "linear":
        o, i = (int(v) for v in op.attrs["w_shape"])
        size = int(np.prod(inp.shape))
        if size % i:
            raise ValueError(f"{op.name}: {i} input features do not divide a tensor of {size} values")
        return LayerShape(kind="linear", in_channels=i, out_channels=o, in_hw=(1, size // i),
                          out_hw=(1, size // i), **common)
    raise ValueError(f"{op.name}: op kind {op.kind!r} has no GEMM shape")


def op_shapes(imodel: IntegerModel) -> dict[str, LayerShape]:
    """Every conv/linear op of ``imodel`` in execution order, keyed by op (layer) name."""
    return {op.name: op_shape(imodel, op) for op in imodel.ops if op.kind in ("conv", "linear")}


def layer_shapes(model: "nn.Module", input_shape: tuple[int, ...]) -> dict[str, LayerShape]:
    """Every ``nn.Conv2d``/``nn.Linear`` of ``model`` that runs on one input of ``input_shape`` (C, H, W),
    in execution order, keyed by module name; bits unset (see :meth:`LayerShape.with_bits`)."""
    import torch
    from torch import nn

    shapes: dict[str, LayerShape] = {}
    hooks = []
    image = torch.zeros(1, *input_shape)

    def hook(module, inputs, output, name):
        x = inputs[0]
        first = x is image
        if isinstance(module, nn.Conv2d):
            if isinstance(module.padding, str):
                raise ValueError(f"{name}: string padding {module.padding!r} is not supported")
            shapes[name] = LayerShape(
                name=name, kind="conv", in_channels=module.in_channels, out_channels=module.out_channels,
                kernel=_pair(module.kernel_size), stride=_pair(module.stride), padding=_pair(module.padding),
                groups=module.groups, in_hw=tuple(x.shape[-2:]), out_hw=tuple(output.shape[-2:]), reads_input=first)
        else:
            positions = output[0].numel() // module.out_features
            shapes[name] = LayerShape(name=name, kind="linear", in_channels=module.in_features,
                                      out_channels=module.out_features, in_hw=(1, positions), out_hw=(1, positions),
                                      reads_input=first)

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: hook(m, i, o, name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(image)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes
