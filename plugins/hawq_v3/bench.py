"""``mpqbench bench hawq-trace``: HAWQ-V3's search cost, dominated by the Hutchinson trace estimate."""

from __future__ import annotations

import argparse
import functools
import os

import torch
from torch.nn import functional as F

from mpqbench.cost.allocation import allocate, searched_units
from mpqbench.cost.budget import parse_budgets
from mpqbench.cost.model import CostModel
from mpqbench.data.loader import to_float
from mpqbench.data.splits import ImageShape
from mpqbench.plugin.params import resolve_defaults
from mpqbench.plugins.hawq_v3 import HAWQV3, sensitivity, unit_layout
from mpqbench.system.meter import measure


def main(args: list[str], registry) -> int:
    """HAWQ-V3 Hutchinson trace cost (per Hessian-vector product) on ResNet-18 at 224x224, batch 32, on this CPU."""
    parser = argparse.ArgumentParser(prog="mpqbench bench hawq-trace")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, default=224, help="image side (3 channels, 1000 classes)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=4, help="Hessian-vector products timed (>= 2)")
    parser.add_argument("--budget", default="bitops_g=72", help="HAWQ-V3's ResNet-18 mixed row by default")
    opts = parser.parse_args(args)
    if opts.iters < 2:
        parser.error("--iters must be at least 2")
    torch.manual_seed(0)
    entry = registry.model(opts.model)
    model = entry.build(ImageShape(3, opts.size, 1000)).eval()
    cost = CostModel.measure(model, entry.layout(model), (3, opts.size, opts.size))
    defaults = resolve_defaults(HAWQV3.params)
    layout = unit_layout(cost.layout, defaults["share"])
    fixed = {layout.first: (8, 8), layout.last: (8, 8)}
    budget = parse_budgets(opts.budget)[0].resolve(cost, fixed)
    units = searched_units(layout, fixed)
    x = to_float(torch.randint(0, 256, (opts.batch, 3, opts.size, opts.size), dtype=torch.uint8))
    y = torch.randint(0, 1000, (opts.batch,))
    timed = {}
    for n in (1, opts.iters):  # the difference isolates the cost of one Hessian-vector product
        phases: dict = {}
        found = sensitivity(model, layout, cost, units, [lambda: F.cross_entropy(model(x), y)], defaults["candidates"],
                            iters=n, tol=0.0, quantizer=defaults["perturbation"], seed=0,
                            timer=functools.partial(measure, phases))
        timed[n] = phases
    with measure(phases, "search:solver"):
        result = allocate(layout, cost, budget, fixed, found["scores"], defaults["candidates"], defaults["a"],
                          maximize=False)
    one, many = timed[1]["search:trace"]["seconds"], phases["search:trace"]["seconds"]
    per_hvp = (many - one) / (opts.iters - 1)
    setup = one - per_hvp
    rest = phases["search:delta"]["seconds"] + phases["search:solver"]["seconds"]
    print(f"HAWQ-V3 search on {opts.model}, {opts.batch} images of 3x{opts.size}x{opts.size}, 1000 classes: random "
          "weights, images and labels (the cost does not depend on their values)")
    print(f"{len(units)} units, candidates {defaults['candidates']}, activations follow weights, budget "
          f"{budget.text}; {torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"first-order graph (forward + backward, create_graph) {setup:8.2f} s")
    print(f"one Hutchinson iteration (Hessian-vector product)    {per_hvp:8.2f} s   ({opts.iters} iterations vs 1)")
    print(f"peak RSS during the estimate                         {phases['search:trace']['peak_rss_mb']:8.0f} MB")
    print(f"perturbations Delta, all units and candidates        {phases['search:delta']['seconds']:8.2f} s")
    print(f"integer program                                      {phases['search:solver']['seconds']:8.2f} s")
    print(f"search at the plugin's iters={defaults['iters']} (an upper bound: tol={defaults['tol']:g} may stop "
          f"earlier): {setup + defaults['iters'] * per_hvp + rest:.1f} s for this batch of {opts.batch} "
          f"(the plugin's default batch is {defaults['batch']})")
    bits = list(result.bits.values())
    print(f"policy: {cost.size_mb(result.policy):.2f} MB, {cost.bitops_g(result.policy):.1f} GBitOPs; "
          f"{bits.count(4)} units at 4 bits, {bits.count(8)} at 8")
    return 0
