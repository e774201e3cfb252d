"""``mpqbench bench ompq-search``: OMPQ's search cost, phase by phase, on an ImageNet-size network."""

from __future__ import annotations

import argparse
import functools
import os
import statistics
from types import SimpleNamespace

import torch

from mpqbench.cost.allocation import searched_units
from mpqbench.cost.budget import parse_budgets
from mpqbench.cost.model import CostModel
from mpqbench.data.loader import to_float
from mpqbench.data.splits import ImageShape
from mpqbench.plugin.params import resolve_defaults
from mpqbench.plugins.ompq import OMPQ, orm_signal, solve
from mpqbench.system.meter import measure

PHASES = ("search:features", "search:orm", "search:solver")


def main(args: list[str], registry) -> int:
    """OMPQ search time (features + ORM + solver) on ResNet-18 at 224x224, batch 32, on this CPU."""
    parser = argparse.ArgumentParser(prog="mpqbench bench ompq-search")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224, help="image side (3 channels, 1000 classes)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--budget", default="size_mb=6.7", help="the paper's ResNet-18 QAT target by default")
    parser.add_argument("--beta", type=float, default=OMPQ.params["beta"])
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args(args)
    torch.manual_seed(0)
    entry = registry.model(opts.model)
    shape = ImageShape(3, opts.size, 1000)
    model = entry.build(shape).eval()
    layout = entry.layout(model)
    cost = CostModel.measure(model, layout, (3, opts.size, opts.size))
    fixed = {layout.first: (8, 8), layout.last: (8, 8)}
    budget = parse_budgets(opts.budget)[0].resolve(cost, fixed)
    units = searched_units(layout, fixed)
    defaults = resolve_defaults(OMPQ.params)
    candidates, a = defaults["candidates"], defaults["a"]
    images = torch.randint(0, 256, (opts.batch, 3, opts.size, opts.size), dtype=torch.uint8)
    runs = []
    for _ in range(opts.repeat):
        phases: dict = {}
        timer = functools.partial(measure, phases)
        log_c = orm_signal(model, layout, units, to_float(images), defaults["bn"], opts.beta, timer)["log_c"]
        problem = SimpleNamespace(layout=layout, cost=cost, budget=budget, fixed=fixed, measure=timer)
        result = solve(problem, units, log_c, candidates, a)
        runs.append(phases)
    print(f"OMPQ search on {opts.model}, {opts.batch} images of 3x{opts.size}x{opts.size}, 1000 classes: random "
          "weights and random images (the cost does not depend on their values)")
    print(f"{len(units)} units searched (first/last at W8A8), candidates {candidates[0]}..{candidates[-1]}, "
          f"A{a}, beta {opts.beta:g}, budget {budget.text}; {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'phase':10s} {'median s':>9s} {'min s':>7s} {'max s':>7s} {'peak RSS MB':>12s}   ({opts.repeat} runs)")
    totals = [sum(r[p]["seconds"] for p in PHASES) for r in runs]
    for phase in PHASES:
        secs = [r[phase]["seconds"] for r in runs]
        peak = max(r[phase]["peak_rss_mb"] for r in runs)
        print(f"{phase.partition(':')[2]:10s} {statistics.median(secs):9.3f} {min(secs):7.3f} {max(secs):7.3f} "
              f"{peak:12.0f}")
    print(f"{'total':10s} {statistics.median(totals):9.3f} {min(totals):7.3f} {max(totals):7.3f}")
    metrics = cost.metrics(result.policy)
    print(f"policy: {metrics['size_mb']:.2f} MB, {metrics['bitops_g']:.1f} GBitOPs, "
          f"{metrics['avg_w_bits']:.2f} average weight bits; bits per unit {list(result.bits.values())}")
    return 0
