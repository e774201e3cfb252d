"""The model DDQ learns in: the run's QuantModel with :class:`DDQQuantizer` on every searched slot.

* **Weights.** Every layer of a searched unit (no layer pinned by the run) gets its own quantizer (own
  levels, own per-channel range); the layers of one unit share one vector of gate logits (the same
  Parameter), so they always have the bitwidth the layout ties them to and the repair scores the unit once.
* **Activations.** A point is searched when no layer reading it (directly, or through a pool: ``feeds``) is
  pinned; the network input and points read by pinned layers keep the recipe's quantizer at the pinned
  bits. Points with the same readers (a pool's input and output) share gate logits, as the policy gives
  them one bitwidth.
* Pinned layers keep the core's per-channel LSQ at their pinned bits.

:meth:`SearchModel.weight_source` / :meth:`act_source` give, per layer, what the expected-cost penalty sees:
the quantizer whose gates decide a bitwidth, or the fixed bitwidth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from torch import nn

from mpqbench.plugins.ddq.quantizer import DDQQuantizer
from mpqbench.quant.model import QuantModel


@dataclass
class SearchModel:
    model: QuantModel
    weights: dict[str, DDQQuantizer] = field(default_factory=dict)
    """Searched layer -> its weight quantizer."""
    units: dict[str, DDQQuantizer] = field(default_factory=dict)
    """Searched unit -> the quantizer holding its (shared) gates."""
    unit_layers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    acts: dict[str, DDQQuantizer] = field(default_factory=dict)
    """Searched point -> its activation quantizer."""
    act_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Gate-sharing activation points: first point -> every point of the group."""

    def quantizers(self) -> list[DDQQuantizer]:
        return [*self.weights.values(), *self.acts.values()]

    def weight_source(self, layer: str) -> DDQQuantizer | int:
        q = self.model.layers()[layer].weight_quantizer
        return q if isinstance(q, DDQQuantizer) else int(q.bits)

    def act_source(self, layer: str) -> DDQQuantizer | int:
        q = self.model.points()[self.model.input_point(layer)].quantizer
        return q if isinstance(q, DDQQuantizer) else int(q.bits)

    def act_layers(self) -> list[str]:
        """Layers whose input point is searched (the layers an activation-bit average runs over)."""
        return [layer for layer in self.model.layout.layers if self.model.input_point(layer) in self.acts]

    def group_readers(self, point: str) -> int:
        """How many layers read the points of an activation group directly (its weight in the average)."""
        return sum(len(self.model.info.points[p].layers) for p in self.act_groups[point])

    def level_range_params(self, weights_only: bool = False) -> list[nn.Parameter]:
        """Levels (when learned) and ranges of the DDQ quantizers, each once."""
        qs = self.weights.values() if weights_only else self.quantizers()
        return _unique(p for q in qs for p in (q.levels, q.range) if p.requires_grad)

    def gate_params(self) -> list[nn.Parameter]:
        """The learnable gate logits, each shared vector once."""
        return _unique(q.gate_logit for q in self.quantizers() if q.gate_logit.requires_grad)


def _unique(params) -> list[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def build(model: QuantModel, fixed: Mapping[str, Any], *, weight_kwargs: Mapping[str, Any],
          act_kwargs: Mapping[str, Any], weight_bits: int, act_bits: int, freeze_weights: bool,
          freeze_acts: bool, graded: bool = False) -> SearchModel:
    """Swap DDQ quantizers into ``model`` (in place): searched weights start at ``weight_bits`` and searched
    points at ``act_bits``, each frozen there when asked (fixed-precision DDQ, or activations not learned);
    learnable gates start open with graded logits when ``graded`` (:meth:`DDQQuantizer.open_graded`)."""
    sm = SearchModel(model)
    layers = model.layers()
    for group in model.layout.weight_groups:
        if any(layer in fixed for layer in group):
            continue
        unit = model.layout.unit_name(group)
        for layer in group:
            q = DDQQuantizer.for_weight(layers[layer], bits=weight_bits, **weight_kwargs)
            if layer != group[0]:
                q.gate_logit = sm.weights[group[0]].gate_logit
            model.set_weight_quantizer(layer, q)
            sm.weights[layer] = q
        sm.units[unit] = sm.weights[group[0]]
        sm.unit_layers[unit] = tuple(group)
    info = model.info
    leaders: dict[tuple[str, ...], str] = {}
    for name, point in info.points.items():
        readers = point.layers or point.feeds
        if name == info.input_point or not readers or any(layer in fixed for layer in readers):
            continue
        q = DDQQuantizer.for_activation(point.signed, bits=act_bits, **act_kwargs)
        key = tuple(sorted(readers))
        if key in leaders:
            q.gate_logit = sm.acts[leaders[key]].gate_logit
            sm.act_groups[leaders[key]] += (name,)
        else:
            leaders[key] = name
            sm.act_groups[name] = (name,)
        model.set_act_quantizer(name, q)
        sm.acts[name] = q
    for q, frozen in [*((q, freeze_weights) for q in sm.weights.values()),
                      *((q, freeze_acts) for q in sm.acts.values())]:
        if frozen:
            q.freeze()
        elif graded:
            q.open_graded()
    return sm
