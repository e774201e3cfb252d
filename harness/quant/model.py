"""QuantModel: a fake-quant copy of an FP32 model, driven by a BitPolicy."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mpqbench.quant.graph import GraphInfo, Point, quant_graph
from mpqbench.quant.layers import ActQuant, QuantConv2d, QuantLinear
from mpqbench.quant.layout import QuantLayout
from mpqbench.quant.policy import FLOAT_BITS, INPUT_BITS, BitPolicy
from mpqbench.quant.quantizers import AffineQuantizer, LSQQuantizer, Quantizer

ActFactory = Callable[[Point, int], Quantizer]


def lsq_activation(point: Point, bits: int) -> Quantizer:
    """Per-tensor LSQ, unsigned after ReLU: the default activation quantizer."""
    return LSQQuantizer(bits, signed=point.signed)


def affine_activation(point: Point, bits: int) -> Quantizer:
    """Per-tensor asymmetric min/max (EMA) quantizer, HAWQ-V3's activation quantizer."""
    return AffineQuantizer(bits)


def default_weight_quantizer(layer: nn.Module, bits: int) -> Quantizer:
    """Per-output-channel symmetric LSQ, the convention shared by every method (as in LSQ and HAWQ-V3)."""
    return LSQQuantizer(bits, signed=True, channels=layer.weight.shape[0])


def input_quantizer(bits: int) -> Quantizer:
    """The network input: images in [0, 1] on a fixed unsigned grid, so 8-bit codes are the raw pixels."""
    return AffineQuantizer(bits, fixed_range=(0.0, 1.0))


class QuantModel(nn.Module):
    """A traced copy of an FP32 model with quantized layers and activation points.

    ``apply_policy`` sets every quantizer's bitwidth in place (no rebuild), so methods can change
    bitwidths during training; ``set_weight_quantizer`` / ``set_act_quantizer`` swap in a method's own
    quantizer; :meth:`policy` reads the bits back from the quantizers, which is what the harness records
    and checks. The state dict round-trips: rebuild with the same policy, then ``load_state_dict``. The
    network is kept channels-last, as the FP32 model trains (NCHW convs cost a third more on the CPU).
    """

    def __init__(self, fp32: nn.Module, layout: QuantLayout, policy: BitPolicy | None = None,
                 act_quantizer: ActFactory = lsq_activation):
        super().__init__()
        net, info = quant_graph(fp32)
        self.net = net.to(memory_format=torch.channels_last)
        self.layout = layout
        self.info: GraphInfo = info
        for layer in self.layers().values():
            layer.weight_quantizer = default_weight_quantizer(layer, 8)
        for name, act in self.points().items():
            point = info.points[name]
            act.quantizer = input_quantizer(8) if name == info.input_point else act_quantizer(point, 8)
        if policy is not None:
            self.apply_policy(policy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def layers(self) -> dict[str, QuantConv2d | QuantLinear]:
        return {name: self.net.get_submodule(name) for name in self.info.layers}

    def points(self) -> dict[str, ActQuant]:
        return {name: self.net.get_submodule(f"actq.{name}") for name in self.info.points}

    def input_point(self, layer: str) -> str:
        """The quantization point a layer reads its input from."""
        return self.info.point_of(layer)

    def point_bits(self, policy: BitPolicy, point: str) -> int:
        """The bits of a quantization point: the most any layer reading it asks for; the network input's are
        always :data:`INPUT_BITS` (a policy built by ``BitPolicy`` never asks for fewer there)."""
        if point == self.info.input_point:
            return INPUT_BITS
        p = self.info.points[point]
        return max(policy[layer].a for layer in (p.layers or p.feeds))

    def apply_policy(self, policy: BitPolicy) -> None:
        policy.check(self.layout)
        for name, layer in self.layers().items():
            layer.weight_quantizer.set_bits(policy[name].w)
        for name, act in self.points().items():
            act.quantizer.set_bits(self.point_bits(policy, name))

    def set_weight_quantizer(self, layer: str, quantizer: Quantizer) -> None:
        self.layers()[layer].weight_quantizer = quantizer

    def set_act_quantizer(self, point: str, quantizer: Quantizer) -> None:
        self.points()[point].quantizer = quantizer

    def policy(self) -> BitPolicy:
        """The bits the model computes with, read from its quantizers: each layer's weight bits and the bits
        of the point it reads."""
        layers = self.layers()
        points = self.points()
        return BitPolicy({name: (layer.weight_quantizer.bits, points[self.input_point(name)].quantizer.bits)
                          for name, layer in layers.items()})

    def finalize(self) -> "QuantModel":
        """Collapse every quantizer that is not one uniform grid (see ``Quantizer.collapse``), in place."""
        for name, layer in self.layers().items():
            if not layer.weight_quantizer.single_grid:
                self.set_weight_quantizer(name, layer.weight_quantizer.collapse())
        for name, act in self.points().items():
            if not act.quantizer.single_grid:
                self.set_act_quantizer(name, act.quantizer.collapse())
        return self

    def mixed_grids(self) -> list[str]:
        """Layers and points whose quantizer is not a single grid (what the export refuses)."""
        return ([n for n, layer in self.layers().items() if not layer.weight_quantizer.single_grid]
                + [f"actq.{n}" for n, a in self.points().items() if not a.quantizer.single_grid])

    @property
    def is_float(self) -> bool:
        return all(q.weight_quantizer.bits >= FLOAT_BITS for q in self.layers().values())
