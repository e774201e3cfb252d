"""``mpqbench bench cost-table``: size and BitOPs of every uniform policy of a model, a benchmark that prints
figures (no timing needed: a benchmark is any ``main(args, registry) -> int``)."""

from __future__ import annotations

import argparse

from mpqbench import hookimpl
from mpqbench.api import Benchmark, BitPolicy, ImageShape
from mpqbench.cost.model import CostModel


def main(args: list[str], registry) -> int:
    parser = argparse.ArgumentParser(prog="mpqbench bench cost-table", description=__doc__)
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--shape", default="1,8,10", help="channels,size,classes (default digits: 1,8,10)")
    opts = parser.parse_args(args)
    channels, size, classes = (int(v) for v in opts.shape.split(","))
    entry = registry.model(opts.model)
    net = entry.build(ImageShape(channels, size, classes))
    layout = entry.layout(net)
    cost = CostModel.measure(net, layout, (channels, size, size))
    fixed = {layout.first: (8, 8), layout.last: (8, 8)}
    print(f"{opts.model}: {cost.total_params} weights, {cost.total_macs} MACs/image")
    print(f"{'policy':>8} {'size KiB':>10} {'BitOPs M':>10}")
    for bits in (8, 6, 4, 3, 2):
        policy = BitPolicy.uniform(layout, bits, bits, fixed)
        print(f"{'W%dA%d' % (bits, bits):>8} {cost.size_mb(policy) * 1024:10.2f} {cost.bitops_g(policy) * 1e3:10.2f}")
    return 0


@hookimpl
def mpqbench_register_benchmarks(register):
    register(Benchmark("cost-table", main, "size and BitOPs of the uniform policies of a model"))
