"""Uniform LSQ baselines: one bitwidth for every searched layer, fine-tuned with the shared recipe.

``uniform:w=4`` is W4A4 (``:a=8`` for W4A8). Without ``w`` the method takes the run's budget and uses the
largest uniform bitwidth that meets it, so a uniform row stands beside every MPQ row at the same budget.
First/last layers follow the run's setting (8 bits by default).
"""

from mpqbench import hookimpl
from mpqbench.api import Method
from mpqbench.errors import UserError
from mpqbench.quant.policy import MAX_BITS, MIN_BITS, BitPolicy


class Uniform(Method):
    name = "uniform"
    version = "1"
    description = "LSQ at one bitwidth (w, a); without w, the largest uniform bitwidth within the budget"
    params = {"w": None, "a": None}

    def uses_budget(self, params) -> bool:
        return params["w"] is None

    def check(self, params) -> None:
        for key in ("w", "a"):
            bits = params[key]
            if bits is not None and (not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS):
                raise UserError(f"uniform: {key}={bits} is not a bitwidth in [{MIN_BITS}, {MAX_BITS}]")

    def smallest_policy(self, params, layout, fixed):
        return BitPolicy.uniform(layout, MIN_BITS, params["a"] or MIN_BITS, fixed)

    def search(self, run):
        w, a = run.params["w"], run.params["a"]
        if w is not None:
            return BitPolicy.uniform(run.layout, w, a or w, run.fixed)
        for bits in range(MAX_BITS, MIN_BITS - 1, -1):
            policy = BitPolicy.uniform(run.layout, bits, a or bits, run.fixed)
            if run.budget.met(run.cost, policy):
                return policy
        raise UserError(f"uniform: no uniform bitwidth meets budget {run.budget.text}")


@hookimpl
def mpqbench_register_methods(register):
    register(Uniform())
