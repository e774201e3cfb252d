"""A third-party plugin as an outside package would write it (used by the tests through an entry point).

``example-half`` gives every searched layer 4 bits; ``example-broken`` raises in its search;
``example-sleepy`` blocks forever on seed 2 while ``$EXAMPLE_BLOCK`` is set (to test kill -9 resumes);
``example-killer`` kills its own process (SIGKILL, as the out-of-memory killer does) on seed 1 while
``$EXAMPLE_KILL`` is set; ``example-diverge`` makes its fine-tune's loss infinite.
Also a budget kind (``example_kbit``: thousands of weight bits), an executor (``example-reverse``: jobs in
reverse order, in this process) and a benchmark (``example-bench``), each without touching the core.
Targets: ``example-exact`` is the reference executor itself (unavailable while ``$EXAMPLE_OFF`` is set);
``example-wrong`` changes one value of the first conv's output, which must be caught as not bit-exact.
"""

import os
import signal
import time

import numpy as np

from mpqbench import hookimpl
from mpqbench.api import Benchmark, BitPolicy, BudgetKind, Executor, Method, Metric, Target, TargetReport
from mpqbench.integer import executor


class Half(Method):
    name = "example-half"
    version = "0.1"
    params = {"bits": 4}

    def uses_budget(self, params):
        return False

    def search(self, run):
        return BitPolicy.uniform(run.layout, run.params["bits"], run.params["bits"], run.fixed)


class Broken(Half):
    name = "example-broken"

    def search(self, run):
        raise RuntimeError("the example plugin fails on purpose")


class Sleepy(Half):
    name = "example-sleepy"

    def search(self, run):
        if os.environ.get("EXAMPLE_BLOCK") and run.seed == 2:
            time.sleep(3600)
        return super().search(run)


class Killer(Half):
    name = "example-killer"

    def search(self, run):
        if os.environ.get("EXAMPLE_KILL") and run.seed == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().search(run)


class Diverge(Half):
    name = "example-diverge"

    def train(self, run, policy):
        return run.finetune(policy, losses={"blow-up": lambda state: state.logits.sum() * float("inf")})


@hookimpl
def mpqbench_register_methods(register):
    for method in (Half(), Broken(), Sleepy(), Killer(), Diverge()):
        register(method)


@hookimpl
def mpqbench_register_budget_kinds(register):
    register(BudgetKind("example_kbit", "kbit", lambda cost, layer, w, a, params: cost.layers[layer].params * w / 1000,
                        "thousands of weight bits"))


class Reverse(Executor):
    name = "example-reverse"
    description = "runs jobs last first, in this process"

    def run(self, jobs, workers, params, on_start=None):
        for i in reversed(range(len(jobs))):
            if on_start:
                on_start(i)
            yield i, jobs[i]()


@hookimpl
def mpqbench_register_executors(register):
    register(Reverse())


def bench(args, registry):
    print(f"example benchmark ran with {args}")
    return 0


@hookimpl
def mpqbench_register_benchmarks(register):
    register(Benchmark("example-bench", bench, "prints one line"))


class Exact(Target):
    name = "example-exact"
    version = "0.1"
    headline = ("images",)

    def unavailable(self, params=None):
        return "example-exact: switched off by $EXAMPLE_OFF" if os.environ.get("EXAMPLE_OFF") else None

    def deploy(self, run, imodel, inputs):
        logits, layers = executor.run(imodel, inputs, keep=True)
        layers = {k: v.copy() for k, v in layers.items()}
        self.corrupt(imodel, layers)
        return TargetReport(outputs=layers[imodel.output], layers=layers,
                            metrics=[Metric("images", len(inputs), "images", "counted")])

    def corrupt(self, imodel, layers):
        pass


class Wrong(Exact):
    name = "example-wrong"

    def corrupt(self, imodel, layers):
        layers[imodel.ops[0].output].flat[0] += 1
        layers[imodel.output] = layers[imodel.output] + (np.arange(layers[imodel.output].size) == 0).reshape(
            layers[imodel.output].shape)


@hookimpl
def mpqbench_register_targets(register):
    register(Exact())
    register(Wrong())
