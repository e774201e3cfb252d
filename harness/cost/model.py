"""CostModel: one implementation of size, BitOPs and average bits used by every method and table.

Conventions (the common protocol of MPQ papers): size counts conv/linear weights only, ``sum(n_l * b_l) / 8 / 2^20``
MiB; BitOPs ``sum(MACs_l * b_w,l * b_a,l)`` in G over conv/linear MACs; FP32 layers count 32 bits;
average weight bits are parameter-weighted. MACs are measured once by a forward pass of one image.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mpqbench.integer.shapes import LayerShape, layer_shapes
from mpqbench.quant.layout import QuantLayout
from mpqbench.quant.policy import BitPolicy

MIB = 2**20


@dataclass(frozen=True)
class LayerCost:
    """One conv/linear layer: weights, MACs per image, and its geometry (what a hardware cost model needs)."""

    params: int
    macs: int
    shape: LayerShape | None = None


class CostModel:
    def __init__(self, layers: dict[str, LayerCost], layout: QuantLayout):
        self.layers = layers
        self.layout = layout

    @classmethod
    def measure(cls, model: nn.Module, layout: QuantLayout, input_shape: tuple[int, int, int]) -> "CostModel":
        """Each layer's weights, MACs and geometry for one input of ``input_shape`` (C, H, W), by one forward
        pass (:func:`mpqbench.integer.shapes.layer_shapes`, the record the targets read as well)."""
        shapes = layer_shapes(model, input_shape)
        return cls({n: LayerCost(shapes[n].params, shapes[n].macs, shapes[n]) for n in layout.layers}, layout)

    @property
    def total_params(self) -> int:
        return sum(c.params for c in self.layers.values())

    @property
    def total_macs(self) -> int:
        return sum(c.macs for c in self.layers.values())

    def layer_cost(self, kind: str, layer: str, w: int, a: int) -> float:
        """One layer's share of a budget kind at ``w``-bit weights and ``a``-bit input activations; every
        kind is a sum over layers, which is what lets an integer program spend a budget layer by layer."""
        c = self.layers[layer]
        if kind == "size_mb":
            return c.params * w / 8 / MIB
        if kind == "bitops_g":
            return c.macs * w * a / 1e9
        if kind == "avg_bits":
            return c.params * w / self.total_params
        raise KeyError(kind)

    def total(self, kind: str, policy: BitPolicy) -> float:
        return sum(self.layer_cost(kind, n, policy[n].w, policy[n].a) for n in self.layers)

    def size_mb(self, policy: BitPolicy) -> float:
        return self.total("size_mb", policy)

    def bitops_g(self, policy: BitPolicy) -> float:
        return self.total("bitops_g", policy)

    def avg_bits(self, policy: BitPolicy) -> float:
        """Parameter-weighted average weight bits (the compression-rate convention: 32 / avg_bits)."""
        return self.total("avg_bits", policy)

    def mean_bits(self, policy: BitPolicy) -> float:
        """Plain mean of weight bits over layers (some papers report this instead)."""
        return sum(policy[n].w for n in self.layers) / len(self.layers)

    def mean_act_bits(self, policy: BitPolicy) -> float:
        return sum(policy[n].a for n in self.layers) / len(self.layers)

    def metrics(self, policy: BitPolicy) -> dict[str, float]:
        return {
            "size_mb": self.size_mb(policy),
            "bitops_g": self.bitops_g(policy),
            "avg_w_bits": self.avg_bits(policy),
            "mean_w_bits": self.mean_bits(policy),
            "mean_a_bits": self.mean_act_bits(policy),
            "params": self.total_params,
            "macs": self.total_macs,
        }

    def unit_params(self) -> dict[str, int]:
        """Weights per unit (layers sharing weight bits summed), keyed by unit name."""
        return {self.layout.unit_name(g): sum(self.layers[n].params for n in g) for g in self.layout.weight_groups}
