"""``mpqbench bench dfq-step``: one DFQ-diff search step (the softmax mixture) against FP32 and uniform LSQ steps.

Every variant does what a Trainer step does: channels-last input, forward, loss, backward, SGD (Nesterov) on
the weights. ``dfq-diff joint`` adds the expected-cost penalty and an Adam step on the logits on the same batch;
``dfq-diff bilevel`` adds, after the weights' step, a second forward/backward on a validation batch for the
logits' Adam step (``every=1``), as the method's default. The variants are timed round-robin (one step of each in
turn), so a load change on a shared machine hits them alike. The mixture's cost grows with |candidates|.
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
from mpqbench.plugins.dfq.cost import CostPenalty, fixed_cost, layer_cost_fns
from mpqbench.plugins.dfq.quantizer import attach, layer_choices
from mpqbench.quant.model import QuantModel


def make_step(model, x, y, logits=(), penalty: Callable[[], torch.Tensor] | None = None,
              val: tuple[torch.Tensor, torch.Tensor] | None = None) -> Callable[[], None]:
    """One training step of ``model`` as the Trainer runs it; with ``logits``, their Adam step on the same batch
    (joint) or, with ``val``, on a validation batch after the weights' step (bi-level)."""
    own = {id(p) for p in logits}
    sgd = torch.optim.SGD([p for p in model.parameters() if id(p) not in own], lr=1e-4, momentum=0.9, nesterov=True)
    adam = torch.optim.Adam(list(logits), lr=1e-3) if logits else None
    model.train()

    def loss_on(xb, yb):
        loss = F.cross_entropy(model(xb), yb)
        return loss + penalty() if penalty is not None else loss

    def step() -> None:
        loss = loss_on(x, y)
        for opt in filter(None, (sgd, adam)):
            opt.zero_grad(set_to_none=True)
        loss.backward()
        sgd.step()
        if adam and val is None:
            adam.step()
        if adam and val is not None:
            vloss = loss_on(*val)
            for opt in (sgd, adam):
                opt.zero_grad(set_to_none=True)
            vloss.backward()
            adam.step()

    return step


def main(args: list[str], registry) -> int:
    """DFQ-diff search step (joint, bi-level) vs FP32 and uniform LSQ steps, ResNet-20 batch 128."""
    parser = argparse.ArgumentParser(prog="mpqbench bench dfq-step")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--size", type=int, default=28, help="image side (1 channel, 10 classes)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the recipes train)")
    parser.add_argument("--candidates", default="2,3,4,5,6,7,8")
    parser.add_argument("--a", type=int, default=8, help="activation bits (not searched)")
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

    def batch():
        return (torch.rand(opts.batch, 1, opts.size, opts.size).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (opts.batch,)))

    (x, y), val = batch(), batch()
    policy = BitPolicy.uniform(layout, 4, opts.a, fixed)
    steps = {"fp32": make_step(fp32, x, y), "lsq uniform": make_step(QuantModel(fp32, layout, policy), x, y)}
    for update in ("joint", "bilevel"):
        qmodel = QuantModel(fp32, layout, policy)
        choices = attach(qmodel, fixed, candidates)
        searched = layer_choices(qmodel)
        penalty = CostPenalty(searched, layer_cost_fns(size, searched, opts.a), budget.value,
                              constant=fixed_cost(size, fixed))
        steps[f"dfq-diff {update}"] = make_step(qmodel, x, y, [c.logits for c in choices.values()], penalty,
                                                val if update == "bilevel" else None)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for i in range(opts.warmup + opts.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            if i >= opts.warmup:
                times[name].append(time.perf_counter() - start)
    print(f"{opts.model}, batch {opts.batch} of 1x{opts.size}x{opts.size}, channels-last; candidates {candidates} "
          f"(|B|={len(candidates)}), A{opts.a}; LSQ uniform is W4A{opts.a}; {torch.get_num_threads()} torch "
          f"threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; median of {opts.steps} "
          f"round-robin steps after {opts.warmup}")
    base, lsq = (statistics.median(times[k]) for k in ("fp32", "lsq uniform"))
    print(f"{'variant':<24}{'ms/step':>10}{'x FP32':>9}{'x LSQ':>8}")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"{name:<24}{1e3 * t:>10.1f}{t / base:>9.2f}{t / lsq:>8.2f}")
    return 0
