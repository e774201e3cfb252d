"""A third-party plugin as an outside package would write it (used by the tests through an entry point).

``example-half`` gives every searched layer 4 bits; ``example-broken`` raises in its search;
``example-sleepy`` blocks forever on seed 2 while ``$EXAMPLE_BLOCK`` is set (to test kill -9 resumes).
Targets: ``example-exact`` is the reference executor itself (unavailable while ``$EXAMPLE_OFF`` is set);
``example-wrong`` changes one value of the first conv's output, which must be caught as not bit-exact.
"""

import os
import time

import numpy as np

from mpqbench import hookimpl
from mpqbench.api import Method, Metric, Target, TargetReport
from mpqbench.integer import executor
from mpqbench.quant.policy import BitPolicy


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


@hookimpl
def mpqbench_register_methods(register):
    for method in (Half(), Broken(), Sleepy()):
        register(method)


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
