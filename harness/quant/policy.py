"""BitPolicy: per-layer weight and activation bitwidths, the output of every bitwidth search."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Iterator

MIN_BITS, MAX_BITS = 2, 8
"""The bitwidths a quantized layer may use."""
FLOAT_BITS = 32
"""Bits that mean "left in floating point" (the FP32 reference row)."""
INPUT_BITS = 8
"""Bits of the network input, which the first layer reads: images are 8-bit pixels and the integer model takes
them as they are, so a quantized policy never gives the first layer fewer activation bits (a searched first
layer's weights still take any bitwidth)."""


@dataclass(frozen=True)
class LayerBits:
    w: int
    a: int


class BitPolicy(Mapping[str, LayerBits]):
    """Layer name -> (weight bits, activation bits). Activation bits are those of the layer's *input*,
    as in HAWQ-V3 and the BitOPs formula. Immutable; JSON as ``{"layer": [w, a], ...}``."""

    def __init__(self, bits: Mapping[str, tuple[int, int] | LayerBits]):
        self._bits = {k: v if isinstance(v, LayerBits) else LayerBits(int(v[0]), int(v[1]))
                      for k, v in bits.items()}

    def __getitem__(self, layer: str) -> LayerBits:
        return self._bits[layer]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)

    def __repr__(self) -> str:
        return f"BitPolicy({self.to_json()})"

    def to_json(self) -> dict[str, list[int]]:
        return {k: [v.w, v.a] for k, v in self._bits.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, list[int]] | str) -> "BitPolicy":
        if isinstance(data, str):
            data = json.loads(data)
        return cls({k: (v[0], v[1]) for k, v in data.items()})

    @classmethod
    def uniform(cls, layout, w: int, a: int, fixed: Mapping[str, tuple[int, int]] | None = None) -> "BitPolicy":
        """Every layer at (w, a), except the ``fixed`` ones (e.g. first/last at 8 bits); the input rule of
        :meth:`from_unit_bits` applies."""
        return cls.from_unit_bits(layout, {layout.unit_name(g): w for g in layout.weight_groups}, a, fixed)

    @classmethod
    def from_unit_bits(cls, layout, weight_bits: Mapping[str, int], act_bits: Mapping[str, int] | int,
                       fixed: Mapping[str, tuple[int, int]] | None = None) -> "BitPolicy":
        """Expand per-unit weight bits to layers; ``act_bits`` per layer or one value for all. Layers that
        read the same tensor get the largest activation bitwidth any of them asks for, or the pinned one
        when one of them is ``fixed``; the first layer's input is never under :data:`INPUT_BITS`."""
        fixed = fixed or {}
        w = {layer: weight_bits[layout.unit_name(g)] for g in layout.weight_groups for layer in g}
        a = {layer: act_bits if isinstance(act_bits, int) else act_bits[layer] for layer in layout.layers}
        a[layout.first] = max(a[layout.first], INPUT_BITS)
        for g in layout.act_groups:
            pinned = [fixed[layer][1] for layer in g if layer in fixed]
            shared = max(pinned) if pinned else max(a[layer] for layer in g)
            a.update({layer: shared for layer in g})
        return cls({layer: fixed.get(layer, (w[layer], a[layer])) for layer in layout.layers})

    @property
    def is_float(self) -> bool:
        return all(v.w >= FLOAT_BITS for v in self._bits.values())

    def check(self, layout, fixed: Mapping[str, tuple[int, int]] | None = None) -> None:
        """Raise ValueError unless the policy is complete and consistent with the layout's sharing rules."""
        if set(self._bits) != set(layout.layers):
            missing = sorted(set(layout.layers) - set(self._bits))
            extra = sorted(set(self._bits) - set(layout.layers))
            raise ValueError(f"policy does not match the model's layers (missing {missing}, unknown {extra})")
        if self.is_float:
            return
        for layer, b in self._bits.items():
            for bits in (b.w, b.a):
                if not MIN_BITS <= bits <= MAX_BITS:
                    raise ValueError(f"layer {layer}: {bits} bits outside [{MIN_BITS}, {MAX_BITS}]")
        for g in layout.weight_groups:
            if len({self._bits[x].w for x in g}) > 1:
                raise ValueError(f"layers {g} must share a weight bitwidth")
        for g in layout.act_groups:
            if len({self._bits[x].a for x in g}) > 1:
                raise ValueError(f"layers {g} read the same tensor and must share an activation bitwidth")
        for layer, (w, a) in (fixed or {}).items():
            if (self._bits[layer].w, self._bits[layer].a) != (w, a):
                raise ValueError(f"layer {layer} must stay at W{w}A{a}")

