"""The core's own plugin objects, registered like any other plugin (entry point ``core``): the built-in
budget kinds, executors, activation quantizers and benchmarks."""

from __future__ import annotations

from mpqbench.cost.kinds import KINDS
from mpqbench.plugin.hookspecs import hookimpl
from mpqbench.plugin.objects import Benchmark, QuantizerEntry
from mpqbench.quant.model import affine_activation, lsq_activation


@hookimpl
def mpqbench_register_budget_kinds(register):
    for kind in KINDS:
        register(kind)


@hookimpl
def mpqbench_register_executors(register):
    from mpqbench.pipeline.executors import LocalExecutor, ProcessExecutor

    register(LocalExecutor())
    register(ProcessExecutor())


@hookimpl
def mpqbench_register_quantizers(register):
    register(QuantizerEntry("lsq", lsq_activation, "per-tensor LSQ (learned step), unsigned after ReLU"))
    register(QuantizerEntry("affine", affine_activation, "per-tensor asymmetric min/max with an EMA range"))


@hookimpl
def mpqbench_register_benchmarks(register):
    from mpqbench.integer.bench import main as executor_bench
    from mpqbench.train.bench import main as qat_step

    register(Benchmark("executor", executor_bench, "reference integer executor throughput on a test split"))
    register(Benchmark("qat-step", qat_step, "QAT step time against an FP32 step (W8A8, W4A4), one process"))
