"""OMPQ: Orthogonal Mixed Precision Quantization (Ma et al., AAAI 2023, arXiv 2109.07865).

One batch of features, no search iterations: how *unlike* the other units a unit's features are decides its
importance, and one integer program spends the budget.

1. **Units**: the layout's weight groups (a downsample conv shares its block's second conv's bits). First and
   last layers are searched only when the run does not pin them (``--first-last search``: the paper's PTQ
   setting; pinned at W8A8: its QAT setting).
2. **Features**: ``batch`` training images drawn by the run's seed (indices recorded), no augmentation (the
   official batch is augmented; a fixed one makes the search reproducible), through the FP32 model without
   gradients; per unit the tensor its layout feature point names. ``bn``: ``eval`` (running statistics,
   default) or ``train`` (batch statistics, as the official code, which never calls ``eval()``).
3. **ORM** between units i and j = linear CKA of their flattened features, in float64
   (:func:`mpqbench.plugins.ompq.orm.orm_matrix`).
4. **Importance**: gamma_i = sum_{j != i} ORM_ij, theta_i = exp(-beta gamma_i), objective coefficient
   c_i = mean(theta_j, j = i..L) in network order (the official ``feature_extract.py``). Computed in log space
   and normalised by the largest (a positive scale leaves the program's argmax unchanged): theta itself
   underflows to 0 once beta gamma passes ~745, and on ResNet-20 gamma is 14-16, so at the official PTQ beta
   of 100 every theta is 0 and the program would silently return all-lowest bits. Even where nothing
   underflows, a large beta makes the most orthogonal unit's theta dwarf the others (10^3-10^6 x at beta = 10
   on ResNet-20): when that unit is the last, c_i ~ 1/(L-i+1) is a function of position alone (compare
   ``allocation=position``); when it is an early one, every later c is that tiny fraction of it, and only an
   exact solver still ranks the later units (below). NaN or inf features are a RuntimeError.
5. **Program** (``solver``):

   * ``exact`` (default): maximise sum_i c_i b_i over b_i in ``candidates`` within the run's budget, solved
     exactly by a dynamic program in integer arithmetic (:mod:`.knapsack`), so coefficients e^-600 apart
     (beta = 100) still order the units and the budget is spent: a general MILP solver ranks coefficients
     under its tolerance (1e-6 of the largest) by noise. A linear objective under one budget row lands on a
     vertex: nearly every unit at its lowest or highest candidate. Expect min/max-heavy policies and read
     nothing into intermediate bitwidths.
   * ``slsqp-round``: the official procedure (:func:`slsqp_round`), which does not solve its own program:
     SLSQP on x_i = b_i / 8 from all ones, then rounding. It can return a policy over the budget; that
     policy is kept (``measured`` and ``budget_met`` in the record) and the harness records the run as not
     meeting the budget. Needs contiguous candidates and a budget linear in weight bits (size, average bits,
     BitOPs at fixed ``a``).

   ``candidates`` (``4-8`` or ``4/5/6/7/8``): the official code searches 4-8 bits in its QAT setting and 2-4
   in its PTQ setting; the default 2-8 spans both.
6. **Activations**: every searched layer's input at ``a`` bits (the paper's fixed 8/6/5; with first/last
   searched their inputs take ``a`` too, where the official PTQ code keeps them at 8); fine-tuning is the
   shared recipe.

Controls (``allocation``), so that the ORM signal can be judged at the same budget and with either solver:

* ``greedy``: c_i = 1 for every unit, the exact limit beta -> 0 (theta_i -> 1, so every suffix mean is 1:
  no residual preference for early layers). The program then maximises the plain sum of unit bitwidths;
  a unit's bit costs its parameter count (size, average bits) or MACs x ``a`` (BitOPs), so bits are cut from
  the largest units first: size-greedy. Ties between equal-cost units are broken arbitrarily by the solver.
  No features are computed.
* ``position``: c_i = 1/(L-i+1), the beta -> infinity limit when the last unit is the most orthogonal (its
  theta alone survives in every suffix mean): layer position and nothing else. No features are computed.
* ``reversed``: the ORM's theta assigned to the units in reverse network order (the last unit gets the first
  unit's theta), then the same suffix means: the same values, detached from the units they measure.
* ``random``: the units in a random order, each drawing its bits uniformly from the candidates that still
  let the undecided units (held at the lowest candidate, the cheapest completion) meet the budget. Always
  feasible without rejection; the per-unit draw is uniform, the joint law is not uniform over all feasible
  policies (later units see less room, which the random order spreads evenly). Seeded by the run's seed. No
  solver: ``solver`` must stay ``exact``.

``run.extra["ompq"]`` keeps the units, the allocation and solver, the feature batch and BN mode, the ORM matrix
(4 decimals), gamma, log theta, log c (unnormalised: the official scale), the normalised c the exact program
maximises or the SLSQP trace, the chosen bits, the budget measured and the solver status; search time splits
into ``search:features``, ``search:orm`` and ``search:solver`` (``search:random`` for the random control).
"""

from __future__ import annotations

import math
from typing import Callable, ContextManager

import numpy as np
import torch
from scipy.optimize import minimize
from torch import nn

from mpqbench import hookimpl
from mpqbench.api import AllocationMethod, Benchmark
from mpqbench.cost.allocation import Allocation, check_bits, unit_policy
from mpqbench.cost.budget import Budget
from mpqbench.data.loader import to_float
from mpqbench.errors import UserError
from mpqbench.plugin.params import Choice
from mpqbench.plugins.ompq.knapsack import solve_exact
from mpqbench.plugins.ompq.orm import (
    BN_MODES,
    extract_features,
    feature_batch,
    importance,
    orm_matrix,
    rounded,
    suffix_log_mean,
)
from mpqbench.quant.layout import QuantLayout

Timer = Callable[[str], ContextManager]

def orm_signal(model: nn.Module, layout: QuantLayout, units: list[str], images: torch.Tensor, bn: str, beta: float,
               timer: Timer) -> dict[str, np.ndarray]:
    """Features (phase ``search:features``), then ORM, gamma, log theta and log c (``search:orm``). NaN or inf
    features are a RuntimeError: the ORM would count such a unit as orthogonal to all (zero norm)."""
    with timer("search:features"):
        features = extract_features(model, layout, units, images, bn)
    bad = [u for u in units if not torch.isfinite(features[u]).all()]
    if bad:
        raise RuntimeError(f"ompq: the FP32 features of unit(s) {', '.join(bad)} hold NaN or inf")
    with timer("search:orm"):
        orm = orm_matrix([features[u] for u in units])
        gamma, log_theta, log_c = importance(orm, beta)
    return {"orm": orm, "gamma": gamma, "log_theta": log_theta, "log_c": log_c}


def log_coefficients(allocation: str, n: int, signal: dict[str, np.ndarray] | None) -> np.ndarray:
    """log c per unit, in network order, for ``orm`` and its controls (see the module docstring)."""
    if allocation == "greedy":
        return np.zeros(n)
    if allocation == "position":  # suffix means of a theta that is 1 at the last unit and 0 elsewhere
        return -np.log(np.arange(n, 0, -1, dtype=np.float64))
    if allocation == "reversed":
        return suffix_log_mean(signal["log_theta"][::-1])
    return signal["log_c"]


def normalised(log_c: np.ndarray) -> np.ndarray:
    """c / max(c), for the record (the program itself reads log c)."""
    return np.exp(log_c - log_c.max())


def solve(run, units: list[str], log_c: np.ndarray, candidates: tuple[int, ...], act_bits: int) -> Allocation:
    """Maximise sum_i c_i b_i within the budget, exactly (phase ``search:solver``); the objective is reported
    with c normalised to a largest of 1. ``run`` is the RunContext, or anything with its ``layout``, ``cost``,
    ``budget``, ``fixed`` and ``measure`` (the search benchmark, tests)."""
    with run.measure("search:solver"):
        if len(candidates) == 1:
            bits = {u: candidates[0] for u in units}
        else:
            cost, room = linear_budget(run, units, candidates, act_bits)
            bits = dict(zip(units, solve_exact(log_c, cost / 8, room, candidates)))
    policy = unit_policy(run.layout, run.fixed, bits, act_bits)
    if not run.budget.met(run.cost, policy):
        raise RuntimeError(f"ompq: the exact program's policy misses {run.budget.text} (a bug)")
    objective = float(normalised(log_c) @ np.array([bits[u] for u in units]))
    return Allocation(bits, policy, objective, "optimal (exact dynamic program)", 0.0,
                      run.budget.measure(run.cost, policy))


def needed_budget(run) -> Budget:
    if run.budget is None:
        raise UserError("ompq needs a budget (pass --budgets KIND=VALUE)")
    return run.budget


def linear_budget(run, units: list[str], candidates: tuple[int, ...], act_bits: int) -> tuple[np.ndarray, float]:
    """The run's budget as the official constraint writes it, ``room - sum_i cost_i x_i >= 0`` with
    x_i = b_i / 8: cost_i is unit i's cost per unit of x (its parameters in MiB for ``size_mb``), room the budget
    less what does not scale with searched weight bits (the pinned first/last layers). Read off the harness's
    own measure of real policies, so the constraint is what ``budget_met`` checks; a kind that is not linear in
    weight bits is a UserError."""
    budget = needed_budget(run)
    low, high = candidates[0], candidates[-1]

    def measure(bits: dict[str, int]) -> float:
        return budget.measure(run.cost, unit_policy(run.layout, run.fixed, bits, act_bits))

    lowest = {u: low for u in units}
    base = measure(lowest)
    per_bit = {u: (measure({**lowest, u: high}) - base) / (high - low) for u in units}
    probes = [{**lowest, u: b} for u in units for b in candidates[1:-1]] + [{u: high for u in units}]
    for bits in probes:
        if not math.isclose(measure(bits), base + sum(per_bit[u] * (bits[u] - low) for u in units), rel_tol=1e-9):
            raise UserError(f"ompq needs a budget linear in weight bits; {budget.kind.name} is not")
    slope = np.array([per_bit[u] for u in units])
    return 8 * slope, budget.value - (base - low * slope.sum())


def slsqp_round(log_c: np.ndarray, cost: np.ndarray, room: float, low: int, high: int) -> tuple[np.ndarray, dict]:
    """The official search step for step: minimise -sum_i c_i x_i (analytic gradient -c) over x_i = b_i / 8 in
    [low/8, high/8] subject to ``room - cost . x >= 0``, by scipy SLSQP from x0 = all ones (clipped into the
    bounds) with default options (100 iterations, ftol 1e-6), then b = np.around(8 x) (half to even), with no
    check of the budget. ``c = exp(log_c)`` on the official, unnormalised scale, because SLSQP's stopping test
    is absolute: with c ~ 1e-61 (beta = 10 on ResNet-20) or exactly 0 (beta gamma > ~745) it stops as soon as
    it is feasible, after one step that projects all-ones onto the budget, cutting every unit in proportion to
    its cost: bits set by layer sizes, not by the ORM. Rounding up can then overshoot the budget. The official
    ResNet-18 script alone rounds differently (the floor/ceil combination closest below the continuous
    solution's size), which this does not reproduce. Returns the bits and the SLSQP trace for the record."""
    c = np.exp(log_c)
    result = minimize(lambda x: -float(c @ x), np.ones(len(c)), jac=lambda x: -c, method="SLSQP",
                      bounds=[(low / 8, high / 8)] * len(c),
                      constraints={"type": "ineq", "fun": lambda x: np.array([room - cost @ x])})
    bits = np.around(8 * result.x).astype(int)
    return bits, {"continuous_bits": rounded(8 * result.x), "iterations": int(result.nit),
                  "success": bool(result.success), "message": str(result.message), "max_c": float(c.max())}


def random_bits(run, units: list[str], candidates: tuple[int, ...], act_bits: int,
                rng: np.random.Generator) -> dict[str, int]:
    """A random feasible allocation (see the module docstring): sequential uniform draws in random order."""
    budget = needed_budget(run)

    def fits(bits: dict[str, int]) -> bool:
        return budget.met(run.cost, unit_policy(run.layout, run.fixed, bits, act_bits))

    bits = {u: candidates[0] for u in units}
    if not fits(bits):
        raise UserError(f"ompq: no policy with weight bits in {set(candidates)} meets budget {budget.text}")
    for i in rng.permutation(len(units)):
        unit = units[i]
        bits[unit] = int(rng.choice([b for b in candidates if fits({**bits, unit: b})]))
    return bits


class OMPQ(AllocationMethod):
    name = "ompq"
    version = "3"
    description = "ORM (linear CKA) importance from one batch, integer program over weight bits (Ma et al. 2023)"
    params = {"beta": 10.0, "candidates": (2, 3, 4, 5, 6, 7, 8), "a": 8, "batch": 32, "bn": Choice(*BN_MODES),
              "allocation": Choice("orm", "greedy", "random", "position", "reversed"),
              "solver": Choice("exact", "slsqp-round")}

    def check(self, params) -> None:
        candidates = check_bits(self.name, params["candidates"], params["a"])
        if not 0 <= params["beta"] < math.inf:
            raise UserError(f"ompq: beta={params['beta']} must be >= 0 and finite")
        if params["batch"] < 2:
            raise UserError(f"ompq: batch={params['batch']} must be at least 2")
        if params["solver"] == "slsqp-round":
            if params["allocation"] == "random":
                raise UserError("ompq: allocation=random draws its own bits; it takes no solver=slsqp-round")
            if len(candidates) < 2 or candidates != tuple(range(candidates[0], candidates[-1] + 1)):
                raise UserError(f"ompq: solver=slsqp-round rounds to integers, so candidates must be a range of at "
                                f"least two bitwidths (e.g. 4-8), not {'/'.join(map(str, candidates))}")

    def search(self, run):
        p = run.params
        candidates, units = self.candidates_and_units(run)
        record = run.extra["ompq"] = {"allocation": p["allocation"], "solver": p["solver"], "units": units}
        if p["allocation"] == "random":
            with run.measure("search:random"):
                bits = random_bits(run, units, candidates, p["a"], np.random.default_rng(run.seed))
            policy = unit_policy(run.layout, run.fixed, bits, p["a"])
            record.update(bits=bits, measured=run.budget.measure(run.cost, policy))
            return policy
        signal = None
        if p["allocation"] in ("orm", "reversed"):
            indices = feature_batch(len(run.data.train), p["batch"], run.seed)
            signal = orm_signal(run.fp32_model(), run.layout, units, to_float(run.data.train.x[indices]), p["bn"],
                                p["beta"], run.measure)
            record.update(batch_indices=indices.tolist(), bn=p["bn"], orm=np.round(signal["orm"], 4).tolist(),
                          gamma=rounded(dict(zip(units, signal["gamma"]))),
                          log_theta=rounded(dict(zip(units, signal["log_theta"]))))
        log_c = log_coefficients(p["allocation"], len(units), signal)
        record["log_c"] = rounded(dict(zip(units, log_c)))
        if p["solver"] == "slsqp-round":
            with run.measure("search:solver"):
                cost, room = linear_budget(run, units, candidates, p["a"])
                found, trace = slsqp_round(log_c, cost, room, candidates[0], candidates[-1])
            bits = dict(zip(units, found.tolist()))
            policy = unit_policy(run.layout, run.fixed, bits, p["a"])
            record.update(bits=bits, slsqp=trace, measured=run.budget.measure(run.cost, policy),
                          budget_met=run.budget.met(run.cost, policy))
            return policy
        record["c"] = rounded(dict(zip(units, normalised(log_c))))
        result = solve(run, units, log_c, candidates, p["a"])
        record.update(result.record())
        return result.policy


@hookimpl
def mpqbench_register_methods(register):
    register(OMPQ())


@hookimpl
def mpqbench_register_benchmarks(register):
    from mpqbench.plugins.ompq import bench

    register(Benchmark("ompq-search", bench.main, (bench.main.__doc__ or "").strip().splitlines()[0]))
