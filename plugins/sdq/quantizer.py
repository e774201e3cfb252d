"""SDQ's stochastic bitwidth quantizer (stage 1 of Huang et al., ICML 2022, arXiv 2206.04459).

Each searched unit (layers sharing one weight bitwidth) owns one :class:`DBPGate`: the sorted candidate
bitwidths b_1 < ... < b_n, the unit's current level b_i (it starts at the top, b_n) and one differentiable
bitwidth parameter (DBP) beta_k per adjacent pair (b_k, b_{k+1}), the probability of the upper bitwidth. Only
the pair below the current level, (b_{i-1}, b_i), is active. Every layer of the unit holds an
:class:`SDQQuantizer` over the shared gate and one per-channel :class:`LSQQuantizer` per candidate bitwidth, so
a step is learned per bitwidth and a layer that decays finds the step it learned at the lower bitwidth.

**Forward** (training, ``mode="stochastic"``): m ~ Bernoulli(beta), drawn once per gate per step by
:meth:`DBPGate.step` (all layers of a unit switch together), and
``w_q = m * Q_{b_i}(w) + (1 - m) * Q_{b_{i-1}}(w)``: only the drawn quantizer's step gets a gradient, and the
weights see it through LSQ's straight-through rounding.

**Backward to the DBP** (``estimator``); beta' = beta clamped to [``clip``, 1 - ``clip``] inside the logit:

* ``"gumbel"`` (default; the paper relaxes the draw with a Gumbel-softmax-type estimator): straight-through
  binary Concrete. With u ~ U(0, 1), logistic noise g = log u - log(1 - u) and l = log beta' - log(1 - beta'),
  the forward uses the hard m = 1[l + g > 0] (exactly Bernoulli(beta), since P(g > -l) = sigmoid(l)) and the
  backward the soft m~ = sigmoid((l + g) / tau), so
  ``dL/dbeta = <dL/dw_q, Q_{b_i}(w) - Q_{b_{i-1}}(w)> * m~ (1 - m~) / (tau * beta' (1 - beta'))``.
* ``"straight"``: straight-through on the expectation, dm/dbeta := 1, so
  ``dL/dbeta = <dL/dw_q, Q_{b_i}(w) - Q_{b_{i-1}}(w)>``; for a loss linear in w_q its mean over draws is the
  exact gradient of the expected loss (the interpolation's gradient).

``clip`` (default 0.01; the hard draw uses beta itself) bounds the Gumbel factor m~ (1 - m~) / (tau beta'
(1 - beta')) by 1 / (4 tau clip (1 - clip)), about 25 at tau = 1. A new pair starts at beta = 1, where a clamp
at 1 - 1e-6 makes the factor about (1 - u) / u, heavy-tailed (one draw in a thousand above 800); one such spike
inflates Adam's second-moment estimate (decay 0.999) and can stall that DBP for the rest of a short search.
Both estimators use the same u, so they draw the same m. The paper's exact estimator (its Eq. 4-5) has not
been seen. Both take dL/dw_q at the drawn point, not at the mean: for a loss quadratic in w_q their mean over
draws is the exact gradient of the expected loss only at beta = 1/2, and elsewhere leans toward it by
(2 beta - 1) ||Q_{b_i} - Q_{b_{i-1}}||^2-type curvature terms, so the task loss alone does not pin beta at 1;
the budget drives decay.

**Interpolation** (``mode="interpolate"``, the ablation FracBits-style methods use):
``w_q = beta * Q_{b_i}(w) + (1 - beta) * Q_{b_{i-1}}(w)``, deterministic; its value is the stochastic
forward's expectation. Both steps learn.

**Evaluation** (``eval()``) and a gate at the lowest candidate: the current level b_i alone, the bitwidth the
layer ends with.

**Bit decay** (:meth:`DBPGate.step`, once per training step before the forward): beta is projected into [0, 1]
(the forward also clamps it, straight-through, so an optimizer overshoot never freezes it); if
``beta < threshold`` the level drops permanently to b_{i-1}, and the pair (b_{i-2}, b_{i-1}) becomes active with
its own DBP, untouched so far (value ``init``, fresh optimizer state: the DBPs are one vector, one entry per
pair); then the step's sample is drawn. At most one drop per step.

Paper-open details, as parameters: ``init`` (1.0: a new pair starts at its upper bitwidth), ``threshold`` (0.5:
a layer keeps b_i exactly when its expected bits round to b_i, the same rule the repair's scores use),
``estimator``, ``tau`` (1.0) and ``clip`` (0.01), ``mode``. The DBP is the probability itself (the paper calls
DBPs "probability factors"), not a logit.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from mpqbench.cost.allocation import searched_units
from mpqbench.errors import UserError
from mpqbench.quant.quantizers import LSQQuantizer, Quantizer

EPS = 1e-6
"""Clamp of the uniform noise, so its logistic transform stays finite."""
MODES = ("stochastic", "interpolate")
ESTIMATORS = ("gumbel", "straight")


def _st_clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Clamp in value, identity in gradient."""
    return x + (x.clamp(lo, hi) - x).detach()


def _initialized(q: LSQQuantizer) -> bool:
    """Whether ``q``'s current step has been initialised (one flag, or one per bitwidth)."""
    flags = q.initialized
    return bool(flags[q.bits] if flags.dim() else flags)


class DBPGate(nn.Module):
    """A unit's current bitwidth level and its DBPs; shared by the unit's :class:`SDQQuantizer` s."""

    def __init__(self, candidates: Sequence[int], *, init: float = 1.0, threshold: float = 0.5,
                 mode: str = "stochastic", estimator: str = "gumbel", tau: float = 1.0, clip: float = 0.01,
                 generator: torch.Generator | None = None):
        super().__init__()
        cands = tuple(sorted({int(b) for b in candidates}))
        if not cands:
            raise UserError("sdq: candidates must name at least one bitwidth")
        if mode not in MODES:
            raise UserError(f"sdq: unknown mode {mode!r} (known: {', '.join(MODES)})")
        if estimator not in ESTIMATORS:
            raise UserError(f"sdq: unknown estimator {estimator!r} (known: {', '.join(ESTIMATORS)})")
        if not 0.0 <= init <= 1.0 or not 0.0 <= threshold <= 1.0 or threshold > init:
            raise UserError(f"sdq: need 0 <= threshold <= init <= 1 (threshold={threshold}, init={init})")
        if not tau > 0:
            raise UserError(f"sdq: tau must be positive, not {tau}")
        if not 0 < clip < 0.5:
            raise UserError(f"sdq: clip must be in (0, 0.5), not {clip}")
        self.candidates = cands
        self.init, self.threshold = float(init), float(threshold)
        self.mode, self.estimator, self.tau, self.clip = mode, estimator, float(tau), float(clip)
        self.generator = generator
        self.dbp = nn.Parameter(torch.full((len(cands) - 1,), float(init)))
        """dbp[k]: probability of candidates[k + 1] in the pair (candidates[k], candidates[k + 1])."""
        self.register_buffer("level", torch.tensor(len(cands) - 1))
        self._u: torch.Tensor | None = None

    @property
    def bits(self) -> int:
        """The current level b_i: what the layer is evaluated at and ends with."""
        return self.candidates[int(self.level)]

    @property
    def active(self) -> bool:
        return int(self.level) > 0

    @property
    def pair(self) -> tuple[int, int] | None:
        """(b_{i-1}, b_i), or None at the lowest candidate."""
        i = int(self.level)
        return (self.candidates[i - 1], self.candidates[i]) if i > 0 else None

    def beta(self) -> torch.Tensor:
        """The active DBP clamped to [0, 1] (straight-through); 1 when no pair is left."""
        if not self.active:
            return self.dbp.new_ones(())
        return _st_clamp(self.dbp[int(self.level) - 1], 0.0, 1.0)

    def probs(self) -> dict[int, torch.Tensor]:
        """The distribution the forward draws from, differentiable in beta: {b_i: beta, b_{i-1}: 1 - beta}."""
        if not self.active:
            return {self.bits: self.dbp.new_ones(())}
        lo, hi = self.pair
        beta = self.beta()
        return {lo: 1 - beta, hi: beta}

    def expected_bits(self) -> torch.Tensor:
        return sum(p * b for b, p in self.probs().items())

    def set_bits(self, bits: int) -> None:
        """Move to candidate ``bits`` (the repair's answer before collapse); the pair below it becomes active."""
        if int(bits) not in self.candidates:
            raise ValueError(f"{bits} bits is not a candidate of {self.candidates}")
        self.level.fill_(self.candidates.index(int(bits)))

    def resample(self, u: torch.Tensor | float | None = None) -> None:
        """Draw this step's uniform noise (or set it, for tests): m = 1[u > 1 - beta]."""
        if u is None:
            u = torch.rand((), generator=self.generator)
        self._u = torch.as_tensor(u, dtype=self.dbp.dtype).clamp(EPS, 1 - EPS)

    @torch.no_grad()
    def decay(self) -> bool:
        """Project the DBP into [0, 1]; drop one level when it is below the threshold. True if it dropped."""
        self.dbp.clamp_(0.0, 1.0)
        if self.active and float(self.dbp[int(self.level) - 1]) < self.threshold:
            self.level.sub_(1)
            return True
        return False

    def step(self) -> bool:
        """Once per training step, before the forward: bit decay, then this step's draw."""
        dropped = self.decay()
        self.resample()
        return dropped

    def mask(self) -> torch.Tensor:
        """The weight of Q_{b_i} in this step's forward: the hard draw with the estimator's gradient, or beta."""
        beta = self.beta()
        if self.mode == "interpolate":
            return beta
        if self._u is None:
            raise RuntimeError("DBPGate.step() (or resample()) must run before a training forward")
        u = self._u.to(beta.device)
        hard = (u > 1 - beta.detach()).to(beta.dtype)
        if self.estimator == "straight":
            return hard + (beta - beta.detach())  # exactly hard in value
        b = _st_clamp(beta, self.clip, 1 - self.clip)
        soft = torch.sigmoid((torch.log(b) - torch.log1p(-b) + torch.log(u) - torch.log1p(-u)) / self.tau)
        return hard + (soft - soft.detach())

    def extra_repr(self) -> str:
        return (f"candidates={self.candidates}, bits={self.bits}, mode={self.mode}, estimator={self.estimator}, "
                f"tau={self.tau}, clip={self.clip}, init={self.init}, threshold={self.threshold}")


class SDQQuantizer(Quantizer):
    """A layer's weight quantizer switching between its gate's active pair; one LSQ step per candidate."""

    single_grid = False

    def __init__(self, gate: DBPGate, signed: bool = True, channels: int | None = None):
        super().__init__(gate.bits, signed)
        self.gate = gate
        self.grids = nn.ModuleDict({str(b): LSQQuantizer(b, signed, channels) for b in gate.candidates})

    @property
    def bits(self) -> int:
        return self.gate.bits

    @bits.setter
    def bits(self, value: int) -> None:
        gate = self._modules.get("gate")  # None while Quantizer.__init__ runs: the gate already holds the bits
        if gate is not None and int(value) != gate.bits:
            gate.set_bits(value)

    def set_bits(self, bits: int) -> None:
        self.gate.set_bits(bits)

    def grid(self, bits: int) -> LSQQuantizer:
        return self.grids[str(bits)]

    def _fake(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate
        if not (self.training and gate.active):
            return self.grid(gate.bits)(x)
        lo, hi = gate.pair
        m = gate.mask()
        return m * self.grid(hi)(x) + (1 - m) * self.grid(lo)(x)

    def scale(self) -> torch.Tensor:
        return self.grid(self.bits).scale()

    def collapse(self) -> LSQQuantizer:
        """An LSQ quantizer at the current level with the step learned there (initialised on its first batch
        if this bitwidth was never used, e.g. a level the repair chose below every trained one)."""
        grid = self.grid(self.bits)
        out = LSQQuantizer(grid.bits, grid.signed, grid.channels)
        if _initialized(grid):
            out.set_step(grid.step.detach().clone())
        return out.train(self.training)


def attach(qmodel, fixed: Mapping[str, tuple[int, int]], candidates: Sequence[int],
           **gate_options) -> dict[str, DBPGate]:
    """Put an :class:`SDQQuantizer` on every searched layer of a ``QuantModel``, one gate per unit (the layers of
    a unit share it); pinned layers keep their quantizers. Returns the gates by unit name."""
    layout = qmodel.layout
    units = set(searched_units(layout, fixed))
    layers = qmodel.layers()
    gates = {}
    for group in layout.weight_groups:
        unit = layout.unit_name(group)
        if unit not in units:
            continue
        gates[unit] = DBPGate(candidates, **gate_options)
        for layer in group:
            channels = layers[layer].weight.shape[0]
            qmodel.set_weight_quantizer(layer, SDQQuantizer(gates[unit], signed=True, channels=channels))
    return gates


def layer_gates(qmodel) -> dict[str, DBPGate]:
    """Layer name -> the gate of its SDQ quantizer (layers of one unit map to the same gate)."""
    return {name: layer.weight_quantizer.gate for name, layer in qmodel.layers().items()
            if isinstance(layer.weight_quantizer, SDQQuantizer)}


def step_all(gates: Mapping[str, DBPGate]) -> list[str]:
    """:meth:`DBPGate.step` on every gate (the per-step hook); returns the units that dropped a level."""
    return [unit for unit, gate in gates.items() if gate.step()]


def dbp_record(gates: Mapping[str, DBPGate]) -> dict[str, dict]:
    """Per unit: current bits, active pair, beta and expected bits (for ``run.extra``)."""
    return {u: {"bits": g.bits, "pair": list(g.pair) if g.pair else None, "beta": g.beta().item(),
                "expected_bits": g.expected_bits().item()} for u, g in gates.items()}
