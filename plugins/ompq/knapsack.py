"""OMPQ's program solved exactly whatever its coefficients' range: a dynamic program in integer arithmetic.

maximise sum_i c_i b_i  subject to  sum_i cost_i b_i <= room,  b_i in the candidates

Every budget OMPQ runs under is linear in weight bits (activations are fixed), so this is a multiple-choice
knapsack. A general MILP solver cannot take it as OMPQ's formula writes it: c_i = mean(theta_j, j >= i) with
theta = exp(-beta gamma) spans e^-30 (beta = 10 on ResNet-20) to e^-600 (beta = 100, the official PTQ
setting) between units, and HiGHS, scaling the objective to [-1, 1], ranks anything under its 1e-6 tolerance by
noise. Here nothing is lost to scale:

* **Coefficients** become integers: C_i = c_i / min(c) * 2^60, written as a mantissa (60 bits) shifted by the
  binary exponent, so a span of e^-600 is a 900-bit integer and sums of them are exact.
* **Costs** become integers: cost_i / min(cost) as an exact fraction (denominator up to 2^20, e.g. parameter
  counts for a size budget, MACs for BitOPs), all scaled by the least common denominator. A cost that is not
  such a fraction to 1e-9 is a RuntimeError (a budget kind this solver cannot take exactly).
* **The program** is solved unit by unit over every reachable cost above the all-lowest policy (numpy arrays of
  Python integers): the optimum, not an approximation. Among policies of equal objective (only when
  coefficients are exactly equal, as with ``allocation=greedy``) the one spending more of the budget wins.

The state count is the budget's slack over the all-lowest policy in cost units (on 28x28 inputs: ResNet-20 about
1,000 at the 3-bit size and 300 at W3A8 BitOPs; MobileNetV2 137,000 and 1.1 million, seconds to a minute or
two); more than :data:`MAX_STATES` is a RuntimeError rather than a silent approximation.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from mpqbench.errors import UserError

PRECISION = 60
"""Significant bits kept of each coefficient."""
MAX_STATES = 4_000_000
"""Most cost states the program visits (memory: one byte per unit per state for the choices)."""
DENOMINATOR = 1 << 20
"""Largest denominator of a cost ratio."""


def integer_coefficients(log_c: np.ndarray) -> list[int]:
    """c_i / min(c) * 2^PRECISION as exact integers, from log c (so nothing underflows)."""
    out = []
    for value in (np.asarray(log_c, dtype=np.float64) - np.min(log_c)) / math.log(2):
        whole = math.floor(value)
        out.append(int(round(2.0 ** (value - whole) * 2**PRECISION)) << whole)
    return out


def integer_costs(cost: np.ndarray, room: float) -> tuple[list[int], int]:
    """Integer costs and capacity with the same ratios as ``cost`` and ``room`` (capacity rounded down)."""
    base = float(np.min(cost))
    if base <= 0:
        raise RuntimeError("ompq: every unit's cost per bit must be positive")
    ratios = [Fraction(float(c) / base).limit_denominator(DENOMINATOR) for c in cost]
    for r, c in zip(ratios, cost):
        if abs(float(r) - c / base) > 1e-9 * c / base:
            raise RuntimeError(f"ompq: unit costs are not in exact integer ratios ({c / base!r}); the exact "
                               "program cannot take this budget")
    scale = math.lcm(*(r.denominator for r in ratios))
    return [int(r * scale) for r in ratios], math.floor(room / base * scale * (1 + 1e-12))


def solve_exact(log_c: np.ndarray, cost: np.ndarray, room: float, candidates: tuple[int, ...]) -> list[int]:
    """The bits maximising sum c_i b_i with sum cost_i b_i <= room (see the module docstring)."""
    coef = integer_coefficients(log_c)
    weight, capacity = integer_costs(cost, room)
    low = candidates[0]
    slack = capacity - low * sum(weight)
    if slack < 0:
        raise UserError(f"ompq: no policy with weight bits in {set(candidates)} meets the budget")
    states = min(slack, sum(w * (candidates[-1] - low) for w in weight)) + 1
    if states > MAX_STATES:
        raise RuntimeError(f"ompq: the exact program would visit {states} cost states (limit {MAX_STATES})")
    best = np.full(states, -1, dtype=object)
    best[0] = 0
    picks = np.zeros((len(coef), states), dtype=np.int8)
    for i, (c, w) in enumerate(zip(coef, weight)):
        new = np.full(states, -1, dtype=object)
        for k, bits in enumerate(candidates):
            shift = w * (bits - low)
            if shift >= states:
                break
            source = best[:states - shift]
            value = source + c * (bits - low)
            better = (source >= 0) & (value > new[shift:])
            where = np.flatnonzero(better)
            new[where + shift] = value[where]
            picks[i, where + shift] = k
        best = new
    top = max(best)
    state = int(np.flatnonzero(best == top)[-1])  # equal objectives: the fuller budget
    bits = []
    for i in reversed(range(len(coef))):
        b = candidates[picks[i, state]]
        bits.append(b)
        state -= weight[i] * (b - low)
    return bits[::-1]
