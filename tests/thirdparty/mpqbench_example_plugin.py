"""A third-party plugin as an outside package would write it (used by the tests through an entry point).

``example-half`` gives every searched layer 4 bits; ``example-broken`` raises in its search;
``example-sleepy`` blocks forever on seed 2 while ``$EXAMPLE_BLOCK`` is set (to test kill -9 resumes).
"""

import os
import time

from mpqbench import hookimpl
from mpqbench.api import Method
from mpqbench.policy import BitPolicy


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
