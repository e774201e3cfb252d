"""The FP32 reference row: the shared FP32 checkpoint, unquantized (32-bit weights and activations)."""

from mpqbench import hookimpl
from mpqbench.api import Method
from mpqbench.quant.policy import BitPolicy
from mpqbench.quant.quantizers import FLOAT_BITS


class FP32(Method):
    name = "fp32"
    version = "1"
    description = "the FP32 starting point every method shares (no quantization, no fine-tune)"

    def uses_budget(self, params) -> bool:
        return False

    def search(self, run):
        return BitPolicy.uniform(run.layout, FLOAT_BITS, FLOAT_BITS)

    def train(self, run, policy):
        return run.fp32_model()


@hookimpl
def mpqbench_register_methods(register):
    register(FP32())
