"""What a model declares about its quantization: layers in order, bit-sharing groups, first/last.

Methods, the cost model and the harness's budget check all read the same :class:`QuantLayout`, so a
"unit" (a set of layers that get one weight bitwidth) means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterable, Literal, Sequence

from torch import nn

from mpqbench.errors import UserError
from mpqbench.quant.graph import analyze, trace

FeatureSpec = tuple[str, Literal["input", "output"]]


@dataclass(frozen=True)
class QuantLayout:
    """The quantization structure of one model instance.

    * ``layers``: quantizable conv/linear modules in execution order (their module names);
    * ``weight_groups``: units, in network order; the layers of a unit share a weight bitwidth (a residual
      block's downsample conv with the block's last conv, declared by the model). A method whose paper ties
      other layers runs on :meth:`regroup` of this layout, and its policies are checked against that;
    * ``act_groups``: layers that read the same tensor and so share an activation bitwidth (found in the
      traced graph);
    * ``first`` / ``last``: the layers that are kept at 8 bits unless a run searches them;
    * ``features``: per unit, the module whose input or output represents the unit's features (used by
      feature-based methods such as OMPQ): e.g. a block's output after its residual add and ReLU for the
      block's last conv.
    """

    layers: tuple[str, ...]
    weight_groups: tuple[tuple[str, ...], ...]
    act_groups: tuple[tuple[str, ...], ...]
    first: str
    last: str
    features: dict[str, FeatureSpec] = field(default_factory=dict, compare=False)

    def unit_name(self, group: tuple[str, ...]) -> str:
        return group[0]

    def regroup(self, groups: Iterable[Sequence[str]]) -> "QuantLayout":
        """This layout with other weight groups (a method's own units). ``groups`` must partition the layers;
        each is put in network order, and the units in the order of their first layer. Features are kept for
        the unit names that remain."""
        order = {layer: i for i, layer in enumerate(self.layers)}
        groups = [tuple(sorted(g, key=lambda layer: order.get(layer, -1))) for g in groups]
        if not all(groups) or sorted(x for g in groups for x in g) != sorted(self.layers):
            raise ValueError(f"weight groups {groups} do not partition the layers {self.layers}")
        groups.sort(key=lambda g: order[g[0]])
        units = {self.unit_name(g) for g in groups}
        return replace(self, weight_groups=tuple(groups),
                       features={u: f for u, f in self.features.items() if u in units})

    def act_group_of(self, layer: str) -> tuple[str, ...]:
        for g in self.act_groups:
            if layer in g:
                return g
        return (layer,)


def make_layout(model: nn.Module, ties: list[tuple[str, ...]] = (),
                features: dict[str, FeatureSpec] | None = None) -> QuantLayout:
    """Build a layout from the traced model plus the model's declarations (``ties``, ``features``)."""
    info = analyze(trace(model))
    layers = info.layers
    tied = {layer: tuple(t) for t in ties for layer in t}
    for layer in tied:
        if layer not in layers:
            raise UserError(f"layout ties unknown layer {layer!r}")
    groups, seen = [], set()
    for layer in layers:
        if layer in seen:
            continue
        group = tuple(x for x in layers if x in tied.get(layer, (layer,)))
        groups.append(group)
        seen.update(group)
    act_groups = tuple(p.layers for p in info.points.values() if len(p.layers) > 1)
    modules = dict(model.named_modules())
    for unit, (module, _) in (features or {}).items():
        if unit not in layers or module not in modules:
            raise UserError(f"layout feature for {unit!r} names unknown module {module!r}")
    return QuantLayout(layers, tuple(groups), act_groups, layers[0], layers[-1], dict(features or {}))
