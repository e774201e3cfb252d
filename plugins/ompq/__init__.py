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
   c_i = mean(theta_j, j = i..L) in network order (the official ``feature_extract.py``).
5. **Program**: maximise sum_i c_i b_i over b_i in ``candidates`` within the run's budget, solved exactly by
   :func:`mpqbench.cost.allocation.allocate` (the official code runs SLSQP and rounds, which can overshoot). A
   linear objective under one budget row lands on a vertex: nearly every unit at its lowest or highest
   candidate. Expect min/max-heavy policies and read nothing into intermediate bitwidths.
6. **Activations**: every searched layer's input at ``a`` bits (the paper's fixed 8/6/5; with first/last
   searched their inputs take ``a`` too, where the official PTQ code keeps them at 8); fine-tuning is the
   shared recipe.

Controls (``allocation``), so that the ORM signal can be judged at the same budget:

* ``greedy``: c_i = 1 for every unit, the exact limit beta -> 0 (theta_i -> 1, so every suffix mean is 1:
  no residual preference for early layers). The program then maximises the plain sum of unit bitwidths;
  a unit's bit costs its parameter count (size, average bits) or MACs x ``a`` (BitOPs), so bits are cut from
  the largest units first: size-greedy. Ties between equal-cost units are broken arbitrarily by the solver.
  No features are computed.
* ``random``: the units in a random order, each drawing its bits uniformly from the candidates that still
  let the undecided units (held at the lowest candidate, the cheapest completion) meet the budget. Always
  feasible without rejection; the per-unit draw is uniform, the joint law is not uniform over all feasible
  policies (later units see less room, which the random order spreads evenly). Seeded by the run's seed.

``run.extra["ompq"]`` keeps the units, the feature batch and BN mode, the ORM matrix (4 decimals), gamma,
theta, c, the chosen bits, objective and solver status; search time splits into ``search:features``,
``search:orm`` and ``search:solver`` (``search:random`` for the random control).
"""

from __future__ import annotations

from typing import Callable, ContextManager

import numpy as np
import torch
from torch import nn

from mpqbench import hookimpl
from mpqbench.api import Benchmark, Method
from mpqbench.cost.allocation import Allocation, Fixed, allocate, check_bits, lowest_policy, searched_units, unit_policy
from mpqbench.cost.budget import Budget
from mpqbench.cost.model import CostModel
from mpqbench.data.loader import to_float
from mpqbench.errors import UserError
from mpqbench.plugin.params import Choice
from mpqbench.plugins.ompq.orm import BN_MODES, extract_features, feature_batch, importance, orm_matrix, rounded
from mpqbench.quant.layout import QuantLayout

Timer = Callable[[str], ContextManager]


def orm_signal(model: nn.Module, layout: QuantLayout, units: list[str], images: torch.Tensor, bn: str, beta: float,
               timer: Timer) -> dict[str, np.ndarray]:
    """Features (phase ``search:features``), then ORM, gamma, theta and c (``search:orm``)."""
    with timer("search:features"):
        features = extract_features(model, layout, units, images, bn)
    with timer("search:orm"):
        orm = orm_matrix([features[u] for u in units])
        gamma, theta, c = importance(orm, beta)
    return {"orm": orm, "gamma": gamma, "theta": theta, "c": c}


def solve(layout: QuantLayout, cost: CostModel, budget: Budget | None, fixed: Fixed, units: list[str],
          c: np.ndarray, candidates: tuple[int, ...], act_bits: int, timer: Timer) -> Allocation:
    """Maximise sum_i c_i b_i within the budget (phase ``search:solver``)."""
    scores = {u: {b: float(ci) * b for b in candidates} for u, ci in zip(units, c)}
    with timer("search:solver"):
        return allocate(layout, cost, budget, fixed, scores, candidates, act_bits, maximize=True)


def random_bits(run, units: list[str], candidates: tuple[int, ...], act_bits: int,
                rng: np.random.Generator) -> dict[str, int]:
    """A random feasible allocation (see the module docstring): sequential uniform draws in random order."""
    if run.budget is None:
        raise UserError("ompq needs a budget (pass --budgets KIND=VALUE)")

    def fits(bits: dict[str, int]) -> bool:
        return run.budget.met(run.cost, unit_policy(run.layout, run.fixed, bits, act_bits))

    bits = {u: candidates[0] for u in units}
    if not fits(bits):
        raise UserError(f"ompq: no policy with weight bits in {set(candidates)} meets budget {run.budget.text}")
    for i in rng.permutation(len(units)):
        unit = units[i]
        bits[unit] = int(rng.choice([b for b in candidates if fits({**bits, unit: b})]))
    return bits


class OMPQ(Method):
    name = "ompq"
    version = "1"
    description = "ORM (linear CKA) importance from one batch, integer program over weight bits (Ma et al. 2023)"
    params = {"beta": 10.0, "candidates": (2, 3, 4, 5, 6, 7, 8), "a": 8, "batch": 32, "bn": Choice(*BN_MODES),
              "allocation": Choice("orm", "greedy", "random")}

    def check(self, params) -> None:
        check_bits(self.name, params["candidates"], params["a"])
        if not params["beta"] >= 0:
            raise UserError(f"ompq: beta={params['beta']} must be >= 0")
        if params["batch"] < 2:
            raise UserError(f"ompq: batch={params['batch']} must be at least 2")

    def smallest_policy(self, params, layout, fixed):
        return lowest_policy(layout, fixed, params["candidates"], params["a"])

    def search(self, run):
        p = run.params
        candidates = check_bits(self.name, p["candidates"], p["a"])
        units = searched_units(run.layout, run.fixed)
        record = run.extra["ompq"] = {"allocation": p["allocation"], "units": units}
        if p["allocation"] == "random":
            with run.measure("search:random"):
                bits = random_bits(run, units, candidates, p["a"], np.random.default_rng(run.seed))
            policy = unit_policy(run.layout, run.fixed, bits, p["a"])
            record.update(bits=bits, measured=run.budget.measure(run.cost, policy))
            return policy
        c = np.ones(len(units))
        if p["allocation"] == "orm":
            indices = feature_batch(len(run.data.train), p["batch"], run.seed)
            signal = orm_signal(run.fp32_model(), run.layout, units, to_float(run.data.train.x[indices]), p["bn"],
                                p["beta"], run.measure)
            c = signal["c"]
            record.update(batch_indices=indices.tolist(), bn=p["bn"], orm=np.round(signal["orm"], 4).tolist(),
                          gamma=rounded(dict(zip(units, signal["gamma"]))),
                          theta=rounded(dict(zip(units, signal["theta"]))))
        record["c"] = rounded(dict(zip(units, c)))
        result = solve(run.layout, run.cost, run.budget, run.fixed, units, c, candidates, p["a"], run.measure)
        record.update(result.record())
        return result.policy


@hookimpl
def mpqbench_register_methods(register):
    register(OMPQ())


@hookimpl
def mpqbench_register_benchmarks(register):
    from mpqbench.plugins.ompq import bench

    register(Benchmark("ompq-search", bench.main, (bench.main.__doc__ or "").strip().splitlines()[0]))
