"""QuantModel: a fake-quant copy of an FP32 model, driven by a BitPolicy."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mpqbench.errors import UserError
from mpqbench.models.layout import QuantLayout
from mpqbench.policy import BitPolicy
from mpqbench.quant.graph import GraphInfo, Point, quant_graph
from mpqbench.quant.layers import ActQuant, QuantConv2d, QuantLinear
from mpqbench.quant.quantizers import FLOAT_BITS, AffineQuantizer, LSQQuantizer, Quantizer

ACT_QUANTIZERS: dict[str, Callable[[Point, int], Quantizer]] = {
    "lsq": lambda point, bits: LSQQuantizer(bits, signed=point.signed),
    "affine": lambda point, bits: AffineQuantizer(bits),
}


def default_weight_quantizer(layer: nn.Module, bits: int) -> Quantizer:
    """Per-output-channel symmetric LSQ, the convention shared by every method (METHODS.md section 7)."""
    return LSQQuantizer(bits, signed=True, channels=layer.weight.shape[0])


def input_quantizer(bits: int) -> Quantizer:
    """The network input: images in [0, 1] on a fixed unsigned grid, so 8-bit codes are the raw pixels."""
    return AffineQuantizer(bits, fixed_range=(0.0, 1.0))


class QuantModel(nn.Module):
    """A traced copy of an FP32 model with quantized layers and activation points.

    ``apply_policy`` sets every quantizer's bitwidth in place (no rebuild), so methods can change
    bitwidths during training; ``set_weight_quantizer`` / ``set_act_quantizer`` swap in a method's own
    quantizer. The state dict round-trips: rebuild with the same policy, then ``load_state_dict``.
    """

    def __init__(self, fp32: nn.Module, layout: QuantLayout, policy: BitPolicy | None = None,
                 act_quantizer: str = "lsq"):
        super().__init__()
        if act_quantizer not in ACT_QUANTIZERS:
            raise UserError(f"unknown activation quantizer {act_quantizer!r} (known: {', '.join(ACT_QUANTIZERS)})")
        net, info = quant_graph(fp32)
        self.net = net
        self.layout = layout
        self.info: GraphInfo = info
        for layer in self.layers().values():
            layer.weight_quantizer = default_weight_quantizer(layer, 8)
        for name, act in self.points().items():
            point = info.points[name]
            act.quantizer = input_quantizer(8) if name == info.input_point else ACT_QUANTIZERS[act_quantizer](point, 8)
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

    @property
    def is_float(self) -> bool:
        return all(q.weight_quantizer.bits >= FLOAT_BITS for q in self.layers().values())
