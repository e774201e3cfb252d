"""DFQ-diff's relaxed weight quantizer: a softmax mixture of candidate bitwidths (Cheng et al., arXiv 1810.10351).

Each searched unit owns one :class:`BitLogits`: logits alpha over the sorted candidate bitwidths and a softmax
temperature T. Every layer of the unit holds a :class:`DFQQuantizer` over the shared logits and one per-channel
LSQ quantizer per candidate (a step learned per bitwidth), and its forward is the mixture

    w~ = sum_k p_k * Q_{b_k}(w),   p = softmax(alpha / T),

with LSQ's straight-through rounding inside each Q_{b_k}; the gradient reaches alpha exactly through p (no
estimator). The forward is the mixture in training and evaluation alike (the relaxed network being searched);
it costs |candidates| quantizations per layer. After the search :meth:`BitLogits.set_bits` fixes the unit's
bitwidth (argmax, or the repair's answer) and the forward becomes that one grid; :meth:`DFQQuantizer.collapse`
returns it as an ``LSQQuantizer`` with the step learned there.

The paper gives only its abstract's outline (per layer/structure bitwidths relaxed from a discrete to a
continuous space, optimised by gradient descent, weights only); the DARTS-style relaxation here is a
reconstruction. Paper-open details, as parameters: ``init`` (logits; default zeros, all candidates equally
likely, as in DARTS), ``temperature`` and its :class:`Anneal` schedule (default exponential from 1.0 to 0.1 over
the search, so the mixture ends close to its argmax and the discretisation gap is small; ``Anneal(1, 1)`` is
plain DARTS).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from mpqbench.cost.allocation import searched_units
from mpqbench.errors import UserError
from mpqbench.quant.quantizers import LSQQuantizer, Quantizer

SCHEDULES = ("exponential", "linear", "constant")


def _initialized(q: LSQQuantizer) -> bool:
    """Whether ``q``'s current step has been initialised (one flag, or one per bitwidth)."""
    flags = q.initialized
    return bool(flags[q.bits] if flags.dim() else flags)


class BitLogits(nn.Module):
    """A unit's logits over candidate bitwidths, shared by its :class:`DFQQuantizer` s."""

    def __init__(self, candidates: Sequence[int], *, init: Sequence[float] | None = None, temperature: float = 1.0):
        super().__init__()
        cands = tuple(sorted({int(b) for b in candidates}))
        if not cands:
            raise UserError("dfq-diff: candidates must name at least one bitwidth")
        if init is not None and len(init) != len(cands):
            raise UserError(f"dfq-diff: init has {len(init)} logits for {len(cands)} candidates")
        self.candidates = cands
        self.logits = nn.Parameter(torch.zeros(len(cands)) if init is None else torch.tensor(init, dtype=torch.float))
        self.temperature = float(temperature)
        self.register_buffer("chosen", torch.tensor(-1))
        """Index of the fixed bitwidth after :meth:`set_bits`; -1 while searching."""

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not value > 0:
            raise UserError(f"dfq-diff: temperature must be positive, not {value}")
        self._temperature = float(value)

    def weights(self) -> torch.Tensor:
        """p = softmax(logits / T), in candidate order."""
        return torch.softmax(self.logits / self.temperature, dim=0)

    def probs(self) -> dict[int, torch.Tensor]:
        p = self.weights()
        return {b: p[k] for k, b in enumerate(self.candidates)}

    def expected_bits(self) -> torch.Tensor:
        return (self.weights() * torch.tensor(self.candidates, dtype=self.logits.dtype,
                                              device=self.logits.device)).sum()

    @property
    def fixed(self) -> bool:
        return int(self.chosen) >= 0

    @property
    def argmax_bits(self) -> int:
        """The most likely candidate (ties: the fewest bits)."""
        return self.candidates[int(torch.argmax(self.logits.detach()))]

    @property
    def bits(self) -> int:
        """The fixed bitwidth, else the argmax."""
        return self.candidates[int(self.chosen)] if self.fixed else self.argmax_bits

    def set_bits(self, bits: int) -> None:
        """Fix the unit's bitwidth (discretisation): the forward becomes that candidate's grid."""
        if int(bits) not in self.candidates:
            raise ValueError(f"{bits} bits is not a candidate of {self.candidates}")
        self.chosen.fill_(self.candidates.index(int(bits)))

    def release(self) -> None:
        """Back to the mixture."""
        self.chosen.fill_(-1)

    def extra_repr(self) -> str:
        return f"candidates={self.candidates}, temperature={self.temperature:g}, bits={self.bits}"


class DFQQuantizer(Quantizer):
    """A layer's weight quantizer: the softmax mixture of its candidates' LSQ grids (one step per bitwidth)."""

    single_grid = False

    def __init__(self, choice: BitLogits, signed: bool = True, channels: int | None = None):
        super().__init__(choice.bits, signed)
        self.choice = choice
        self.grids = nn.ModuleDict({str(b): LSQQuantizer(b, signed, channels) for b in choice.candidates})

    @property
    def bits(self) -> int:
        return self.choice.bits

    @bits.setter
    def bits(self, value: int) -> None:
        choice = self._modules.get("choice")  # None while Quantizer.__init__ runs
        if choice is not None and int(value) != choice.bits:
            choice.set_bits(value)

    def set_bits(self, bits: int) -> None:
        self.choice.set_bits(bits)

    def grid(self, bits: int) -> LSQQuantizer:
        return self.grids[str(bits)]

    def _fake(self, x: torch.Tensor) -> torch.Tensor:
        if self.choice.fixed:
            return self.grid(self.bits)(x)
        p = self.choice.weights()
        return sum(p[k] * self.grid(b)(x) for k, b in enumerate(self.choice.candidates))

    def scale(self) -> torch.Tensor:
        return self.grid(self.bits).scale()

    def collapse(self) -> LSQQuantizer:
        """An LSQ quantizer at the unit's bits (fixed, else argmax) with the step learned there."""
        grid = self.grid(self.bits)
        out = LSQQuantizer(grid.bits, grid.signed, grid.channels)
        if _initialized(grid):
            out.set_step(grid.step.detach().clone())
        return out.train(self.training)


@dataclass(frozen=True)
class Anneal:
    """Softmax temperature over the search: ``start`` at step 0 to ``end`` at the last step, ``kind``
    exponential (geometric), linear or constant (``start`` throughout)."""

    start: float = 1.0
    end: float = 0.1
    kind: str = "exponential"

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise UserError(f"dfq-diff: unknown temperature schedule {self.kind!r} (known: {', '.join(SCHEDULES)})")
        if not (self.start > 0 and self.end > 0):
            raise UserError(f"dfq-diff: temperatures must be positive ({self.start}, {self.end})")

    def __call__(self, step: int, total: int) -> float:
        if self.kind == "constant" or total <= 1:
            return self.start
        t = min(max(step / (total - 1), 0.0), 1.0)
        if self.kind == "linear":
            return self.start + t * (self.end - self.start)
        return math.exp(math.log(self.start) + t * (math.log(self.end) - math.log(self.start)))


def set_temperature(choices: Mapping[str, BitLogits], temperature: float) -> None:
    for choice in choices.values():
        choice.temperature = temperature


def attach(qmodel, fixed: Mapping[str, tuple[int, int]], candidates: Sequence[int], *,
           init: Sequence[float] | None = None, temperature: float = 1.0) -> dict[str, BitLogits]:
    """Put a :class:`DFQQuantizer` on every searched layer of a ``QuantModel``, one :class:`BitLogits` per unit
    (shared by its layers); pinned layers keep their quantizers. Returns the logits by unit name."""
    layout = qmodel.layout
    units = set(searched_units(layout, fixed))
    layers = qmodel.layers()
    choices = {}
    for group in layout.weight_groups:
        unit = layout.unit_name(group)
        if unit not in units:
            continue
        choices[unit] = BitLogits(candidates, init=init, temperature=temperature)
        for layer in group:
            channels = layers[layer].weight.shape[0]
            qmodel.set_weight_quantizer(layer, DFQQuantizer(choices[unit], signed=True, channels=channels))
    return choices


def layer_choices(qmodel) -> dict[str, BitLogits]:
    """Layer name -> the logits of its DFQ quantizer (layers of one unit map to the same logits)."""
    return {name: layer.weight_quantizer.choice for name, layer in qmodel.layers().items()
            if isinstance(layer.weight_quantizer, DFQQuantizer)}
