"""``mpqbench bench sdq-step``: one SDQ search step against an FP32 step and a uniform LSQ step, on this CPU.

Every variant does what a Trainer step does: channels-last input, forward, the loss, backward, SGD (Nesterov)
on the weights; the SDQ variants add what stage 1 adds: bit decay and the draw (``on_step``), the budget
regulariser in the loss (size budget at the uniform-3-bit size) and an Adam step on the DBPs. The variants are
timed round-robin (one step of each in turn), so a load change on a shared machine hits them alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch
from torch.nn import functional as F

from mpqbench.api import BitPolicy, ImageShape
from mpqbench.cost.budget import parse_budgets
from mpqbench.cost.model import CostModel
from mpqbench.plugins.sdq.losses import BudgetRegularizer, fixed_cost, layer_cost_fns
from mpqbench.plugins.sdq.quantizer import attach, layer_gates, step_all
from mpqbench.quant.model import QuantModel


def make_step(model, x, y, extra_params=(), before: Callable[[], None] = lambda: None,
              penalty: Callable[[], torch.Tensor] | None = None) -> Callable[[], None]:
    """One training step of ``model`` as the Trainer runs it, plus an Adam step on ``extra_params``."""
    extra_ids = {id(p) for p in extra_params}
    weights = [p for p in model.parameters() if id(p) not in extra_ids]
    sgd = torch.optim.SGD(weights, lr=1e-4, momentum=0.9, nesterov=True)
    adam = torch.optim.Adam(list(extra_params), lr=1e-3) if extra_params else None
    model.train()

    def step() -> None:
        before()
        loss = F.cross_entropy(model(x), y)
        if penalty is not None:
            loss = loss + penalty()
        sgd.zero_grad(set_to_none=True)
        if adam:
            adam.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()
        if adam:
            adam.step()

    return step


def time_round_robin(steps: dict[str, Callable[[], None]], n: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per step of each variant, one step of each in turn, after ``warmup`` rounds."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(warmup + n):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def report(times: dict[str, list[float]], header: str) -> None:
    print(header)
    base, lsq = (statistics.median(times[k]) for k in ("fp32", "lsq uniform"))
    print(f"{'variant':<24}{'ms/step':>10}{'x FP32':>9}{'x LSQ':>8}")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"{name:<24}{1e3 * t:>10.1f}{t / base:>9.2f}{t / lsq:>8.2f}")


def main(args: list[str], registry) -> int:
    """SDQ search step (stochastic and interpolated) vs FP32 and uniform LSQ steps, ResNet-20 batch 128."""
    parser = argparse.ArgumentParser(prog="mpqbench bench sdq-step")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--size", type=int, default=28, help="image side (1 channel, 10 classes)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the recipes train)")
    parser.add_argument("--candidates", default="2,3,4,5,6,7,8")
    parser.add_argument("--a", type=int, default=8, help="activation bits (fixed, as in SDQ)")
    opts = parser.parse_args(args)
    torch.set_num_threads(opts.threads)
    candidates = [int(b) for b in opts.candidates.split(",")]
    torch.manual_seed(0)
    entry = registry.model(opts.model)
    fp32 = entry.build(ImageShape(1, opts.size, 10)).to(memory_format=torch.channels_last)
    layout = entry.layout(fp32)
    fixed = {layout.first: (8, 8), layout.last: (8, 8)}
    cost = CostModel.measure(fp32, layout, (1, opts.size, opts.size))
    budget = parse_budgets("size_mb=w3")[0].resolve(cost, fixed)
    size = lambda layer, w, a: budget.layer_cost(cost, layer, w, a)  # noqa: E731
    x = torch.rand(opts.batch, 1, opts.size, opts.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (opts.batch,))
    steps = {"fp32": make_step(fp32, x, y),
             "lsq uniform": make_step(QuantModel(fp32, layout, BitPolicy.uniform(layout, 4, opts.a, fixed)), x, y)}
    for mode in ("stochastic", "interpolate"):
        qmodel = QuantModel(fp32, layout, BitPolicy.uniform(layout, max(candidates), opts.a, fixed))
        gates = attach(qmodel, fixed, candidates, mode=mode)
        searched = layer_gates(qmodel)
        reg = BudgetRegularizer(searched, layer_cost_fns(size, searched, opts.a), budget.value,
                                constant=fixed_cost(size, fixed))
        steps[f"sdq {mode}"] = make_step(qmodel, x, y, [g.dbp for g in gates.values()],
                                         lambda gates=gates: step_all(gates), reg)
    times = time_round_robin(steps, opts.steps, opts.warmup)
    report(times, f"{opts.model}, batch {opts.batch} of 1x{opts.size}x{opts.size}, channels-last; candidates "
                  f"{candidates}, A{opts.a}; LSQ uniform is W4A{opts.a}; {torch.get_num_threads()} torch threads, "
                  f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; median of {opts.steps} "
                  f"round-robin steps after {opts.warmup}")
    return 0
