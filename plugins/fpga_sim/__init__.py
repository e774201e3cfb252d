"""The fpga-sim target: BISMO and BitFusion cycle models, bit-exact functional simulation, RTL cross-check."""

from mpqbench.api import Benchmark, BudgetKind, hookimpl
from mpqbench.plugins.fpga_sim.latency import layer_latency_us
from mpqbench.plugins.fpga_sim.target import FpgaSim


def _latency(cost, layer: str, w: int, a: int, params) -> float:
    """A layer's simulated latency (us) at ``w``/``a`` bits on the preset, from the shared cost model's
    geometry: the same cycle model the target reports with."""
    return layer_latency_us(cost.layers[layer].shape, w, a, params["preset"], params["batch"])


LATENCY = BudgetKind("latency_us@fpga-sim", "us", _latency,
                     "simulated latency on an fpga-sim preset (sum over conv/linear layers), e.g. "
                     "latency_us@fpga-sim:preset=bitfusion-isca18=w4", params={"preset": "bismo-pynq", "batch": 1})


@hookimpl
def mpqbench_register_targets(register):
    register(FpgaSim())


@hookimpl
def mpqbench_register_benchmarks(register):
    from mpqbench.plugins.fpga_sim import bench

    register(Benchmark("fpga-validate", bench.main, (bench.main.__doc__ or "").strip().splitlines()[0]))


@hookimpl
def mpqbench_register_budget_kinds(register):
    register(LATENCY)
