"""One bitwidth per unit under the run's budget: a real integer program, solved by HiGHS (``scipy.optimize.milp``).

A method scores every (unit, bits) pair (the sensitivity baseline: the measured drop, minimised; HAWQ-V3:
``trace_i * Delta_i(b)``, minimised); :func:`allocate` returns the best policy whose cost, measured exactly as
the harness measures it (``Budget.met`` on the final :class:`BitPolicy`), meets the budget. Scores must lie
within the solver's tolerance of each other (about 1e-6 of the largest): OMPQ's span many decades and it
solves its own, simpler program exactly instead (``mpqbench.plugins.ompq.knapsack``).

Formulation
-----------
* **Choice.** Binary ``x[u,b]`` for every searched unit ``u`` and candidate ``b``, ``sum_b x[u,b] = 1``;
  objective ``sum score[u][b] * x[u,b]``. Scores are shifted per unit (one choice per unit, so a constant)
  and scaled to [-1, 1] for the solver; the reported objective is in the method's own units.
* **Budget.** Every budget kind is a sum over layers of a term ``f_l(w_l, a_l)`` (size and average bits
  ignore ``a``, BitOPs is ``MACs_l * w * a``), read from the budget kind (:meth:`Budget.layer_cost`), so the
  program has no cost formula of its own. Layers the run pins (``fixed``) are constants. The row is
  ``sum f <= value``.
* **Activation bits.** A layer's activation bits are those of the tensor it reads: the largest request of the
  layers reading it (``layout.act_groups``, as :meth:`BitPolicy.from_unit_bits` sets them). Requests are a
  fixed ``act_bits`` or, with ``act_bits=None`` (HAWQ-V3), the requesting layer's own weight bits.

  - fixed ``act_bits``, or a tensor also read by a pinned layer (its bits win, and a searched reader may not
    ask for more: ``x[u,b] = 0`` above them, else the policy would break the pin): ``a`` is a constant and
    the term is linear in ``x``;
  - a tensor read only by layers of one unit: ``a = w_u``, the term ``f_l(b, b)`` is linear in ``x[u,b]``;
  - a tensor read by layers of several units (a residual block's first conv and its downsample conv, which
    shares the *second* conv's unit): ``a = max_u w_u`` and the downsample's cost ``w_u2 * max(w_u1, w_u2)``
    is a product of two units' choices. Modelled exactly: ``y[a]`` one-hot over the candidates with, for
    every threshold ``t`` above the lowest, ``Y(>=t) >= X_u(>=t)`` for each reader unit and
    ``Y(>=t) <= sum_u X_u(>=t)`` (cumulative sums of ``y`` and ``x``), so ``Y(>=t) = 1`` iff some reader
    has ``>= t`` bits: ``y`` is the max. Each reading layer gets ``z[b,a] >= 0`` with row sums ``x[u,b]``
    and column sums ``y[a]``; for one-hot ``x`` and ``y`` the outer product is the only such matrix, so
    ``sum_ba f_l(b, a) * z[b,a]`` is the layer's exact cost. ``y`` and ``z`` are continuous: integral ``x``
    forces them integral, and branch-and-bound runs on ``x`` alone.

After solving, the policy is measured with ``Budget.met``; if HiGHS's tolerances (feasibility 1e-7 on the
normalised row, integrality 1e-6) let it overshoot, the right-hand side is tightened by the overshoot and the
program solved again, so the answer always meets the budget as the harness checks it. A larger overshoot
than tolerances explain is a modelling error and raises.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from mpqbench.cost.budget import Budget
from mpqbench.cost.model import CostModel
from mpqbench.errors import UserError
from mpqbench.quant.layout import QuantLayout
from mpqbench.quant.policy import INPUT_BITS, MAX_BITS, MIN_BITS, BitPolicy

Fixed = Mapping[str, tuple[int, int]]
RESOLVES = 3
"""Solves allowed when the solver's tolerances let a policy overshoot the budget."""
MAX_TOLERANCE_OVERSHOOT = 1e-4
"""Relative overshoot that tolerances can explain; more means the program's cost model is wrong."""


def check_bits(owner: str, candidates: Sequence[int], act_bits: int | None) -> tuple[int, ...]:
    """The candidate set, sorted and unique; a bitwidth outside [2, 8] is the user's error."""
    cands = tuple(sorted({int(b) for b in candidates}))
    if not cands:
        raise UserError(f"{owner}: candidates must name at least one bitwidth")
    for bits in (*candidates, *(() if act_bits is None else (act_bits,))):
        if bits != int(bits) or not MIN_BITS <= bits <= MAX_BITS:
            raise UserError(f"{owner}: bitwidth {bits} is not an integer in [{MIN_BITS}, {MAX_BITS}]")
    return cands


def searched_units(layout: QuantLayout, fixed: Fixed) -> list[str]:
    """Units whose bits a method chooses, in network order: those with no pinned layer."""
    units = []
    for group in layout.weight_groups:
        pinned = [layer for layer in group if layer in fixed]
        if pinned and len(pinned) < len(group):
            raise ValueError(f"the run pins {pinned} but not the rest of their unit {group}")
        if not pinned:
            units.append(layout.unit_name(group))
    if not units:
        raise UserError("the run pins every layer: there is nothing to search")
    return units


def unit_policy(layout: QuantLayout, fixed: Fixed, bits: Mapping[str, int], act_bits: int | None) -> BitPolicy:
    """The policy for per-unit weight ``bits``: pinned layers as the run fixes them; a searched layer asks for
    ``act_bits`` on its input, or for its own weight bits when ``act_bits`` is None (HAWQ-V3)."""
    weights = {u: bits[u] if u in bits else fixed[layer][0] for layer, u in _units_of(layout).items()}
    acts = {layer: fixed[layer][1] if layer in fixed else act_bits or weights[u]
            for layer, u in _units_of(layout).items()}
    return BitPolicy.from_unit_bits(layout, weights, acts, fixed)


def lowest_policy(layout: QuantLayout, fixed: Fixed, candidates: Sequence[int], act_bits: int | None) -> BitPolicy:
    """Every searched unit at its lowest candidate: the cheapest policy such a method can return under any
    budget kind (every kind grows with the bits), for the pre-run feasibility check."""
    low = min(candidates)
    return unit_policy(layout, fixed, {u: low for u in searched_units(layout, fixed)}, act_bits)


def _units_of(layout: QuantLayout) -> dict[str, str]:
    """Layer -> the name of its unit."""
    return {layer: layout.unit_name(g) for g in layout.weight_groups for layer in g}


@dataclass(frozen=True)
class Allocation:
    bits: dict[str, int]
    """Weight bits per searched unit."""
    policy: BitPolicy
    objective: float
    """Sum of the chosen scores, in the method's units."""
    status: str
    gap: float | None
    measured: float
    """The policy's budget measure (<= the budget)."""

    def record(self) -> dict:
        return {"bits": dict(self.bits), "objective": self.objective, "solver_status": self.status,
                "mip_gap": self.gap, "measured": self.measured}


class _Program:
    """Variables with [0, upper] bounds and sparse linear rows, in the form ``scipy.optimize.milp`` takes."""

    def __init__(self):
        self.integer: list[int] = []
        self.upper: list[float] = []
        self.entries: list[tuple[int, int, float]] = []
        self.lo: list[float] = []
        self.hi: list[float] = []

    def var(self, integer: bool) -> int:
        self.integer.append(int(integer))
        self.upper.append(1.0)
        return len(self.upper) - 1

    def row(self, coefs: Mapping[int, float], lo: float, hi: float) -> None:
        r = len(self.lo)
        self.entries.extend((r, col, value) for col, value in coefs.items())
        self.lo.append(lo)
        self.hi.append(hi)

    def constraint(self) -> LinearConstraint:
        rows, cols, vals = zip(*self.entries)
        matrix = coo_array((vals, (rows, cols)), shape=(len(self.lo), len(self.upper))).tocsr()
        return LinearConstraint(matrix, self.lo, self.hi)


def allocate(layout: QuantLayout, cost: CostModel, budget: Budget | None, fixed: Fixed,
             scores: Mapping[str, Mapping[int, float]], candidates: Sequence[int], act_bits: int | None, *,
             maximize: bool, time_limit: float = 60.0) -> Allocation:
    """The policy optimising ``sum scores[unit][bits]`` over the searched units within ``budget`` (see the
    module docstring for the program). An unreachable budget is a UserError."""
    if budget is None:
        raise UserError("this method needs a budget (pass --budgets KIND=VALUE)")
    cands = tuple(sorted(candidates))
    units = searched_units(layout, fixed)
    unit_of = _units_of(layout)

    @functools.cache
    def term(layer: str, w: int, a: int) -> float:
        return budget.layer_cost(cost, layer, w, a)

    prog = _Program()
    x = {(u, b): prog.var(integer=True) for u in units for b in cands}
    for u in units:
        prog.row({x[u, b]: 1.0 for b in cands}, 1.0, 1.0)
    load: dict[int, float] = defaultdict(float)
    constant = 0.0
    maxima: dict[tuple[str, ...], dict[int, int]] = {}

    def at_least(u: str, t: int) -> dict[int, float]:
        return {x[u, b]: 1.0 for b in cands if b >= t}

    def max_of(readers: list[str]) -> dict[int, int]:
        y = {a: prog.var(integer=False) for a in cands}
        prog.row({v: 1.0 for v in y.values()}, 1.0, 1.0)
        for t in cands[1:]:
            y_ge = {y[a]: 1.0 for a in cands if a >= t}
            for u in readers:
                prog.row({**y_ge, **{k: -v for k, v in at_least(u, t).items()}}, 0.0, np.inf)
            prog.row({**y_ge, **{k: -v for u in readers for k, v in at_least(u, t).items()}}, -np.inf, 0.0)
        return y

    for layer in layout.layers:
        if layer in fixed:
            constant += term(layer, *fixed[layer])
            continue
        u = unit_of[layer]
        group = layout.act_group_of(layer)
        pinned = {fixed[m][1] for m in group if m in fixed} or ({INPUT_BITS} if layout.first in group else set())
        if len(pinned) > 1:
            raise ValueError(f"the run pins different activation bits on layers reading one tensor: {group}")
        if pinned or act_bits is not None:
            a = max(pinned) if pinned else act_bits
            if pinned and act_bits is not None and act_bits > a:
                raise UserError(f"activation bits {act_bits} exceed the {a} bits pinned on the input of {layer}")
            for b in cands:
                if pinned and act_bits is None and b > a:
                    prog.upper[x[u, b]] = 0.0
                load[x[u, b]] += term(layer, b, a)
            continue
        readers = list(dict.fromkeys(unit_of[m] for m in group))
        if readers == [u] or len({term(layer, cands[0], a) for a in cands}) == 1:
            for b in cands:
                load[x[u, b]] += term(layer, b, b)
            continue
        if group not in maxima:
            maxima[group] = max_of(readers)
        y = maxima[group]
        z = {(b, a): prog.var(integer=False) for b in cands for a in cands}
        for b in cands:
            prog.row({**{z[b, a]: 1.0 for a in cands}, x[u, b]: -1.0}, 0.0, 0.0)
        for a in cands:
            prog.row({**{z[b, a]: 1.0 for b in cands}, y[a]: -1.0}, 0.0, 0.0)
        for (b, a), v in z.items():
            load[v] += term(layer, b, a)

    c = np.zeros(len(prog.upper))
    shifted = {(u, b): scores[u][b] - min(scores[u][k] for k in cands) for u in units for b in cands}
    span = max(abs(v) for v in shifted.values()) or 1.0
    for key, value in shifted.items():
        c[x[key]] = (-value if maximize else value) / span
    cols = sorted(load)
    budget_row = coo_array(([load[k] / budget.value for k in cols], ([0] * len(cols), cols)),
                           shape=(1, len(prog.upper))).tocsr()
    structure = prog.constraint()
    rhs = 1.0 - constant / budget.value
    for _ in range(RESOLVES):
        res = milp(c, integrality=np.array(prog.integer), bounds=Bounds(0.0, np.array(prog.upper)),
                   constraints=[structure, LinearConstraint(budget_row, -np.inf, rhs)],
                   options={"time_limit": time_limit, "mip_rel_gap": 0.0})
        if res.x is None:
            if res.status == 2:
                raise UserError(f"no policy with weight bits in {set(cands)} meets budget {budget.text}")
            raise RuntimeError(f"integer program failed: {res.message}")
        bits = {u: max(cands, key=lambda b: res.x[x[u, b]]) for u in units}
        policy = unit_policy(layout, fixed, bits, act_bits)
        measured = budget.measure(cost, policy)
        if budget.met(cost, policy):
            return Allocation(bits, policy, float(sum(scores[u][bits[u]] for u in units)), res.message,
                              res.get("mip_gap"), measured)
        overshoot = (measured - budget.value) / budget.value
        if overshoot > MAX_TOLERANCE_OVERSHOOT:
            raise RuntimeError(f"the integer program's cost model misses {budget.text} by {overshoot:.2g} (a bug)")
        rhs -= overshoot + 1e-9
    raise RuntimeError(f"integer program kept overshooting budget {budget.text} after {RESOLVES} solves")
