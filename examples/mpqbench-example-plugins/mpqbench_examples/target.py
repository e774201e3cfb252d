"""``numpy-ref``: a target that runs the integer model with NumPy, the smallest complete target.

It runs the reference executor itself (so it is bit-exact by construction: a real target runs its own
kernels, on a device, a simulator or under qemu, and the harness compares its outputs with the reference's)
and counts what it executed: MACs per image and the bytes of the weights at their packed bit widths, in
total and per layer. ``unavailable`` is where a target says what is missing (a compiler, a board) and how to
install it; the sweep records that reason and goes on.
"""

from __future__ import annotations

import math

from mpqbench import hookimpl
from mpqbench.api import Metric, Target, TargetReport
from mpqbench.integer import executor


def layer_counts(imodel) -> list[dict]:
    """Per conv/linear op: MACs per image and packed weight bytes."""
    out = []
    for op in imodel.ops:
        if op.kind not in ("conv", "linear"):
            continue
        w_shape = op.attrs["w_shape"]
        out_shape = imodel.tensors[op.output].shape
        positions = math.prod(out_shape[1:]) if op.kind == "conv" else 1
        macs = out_shape[0] * positions * math.prod(w_shape[1:])
        out.append({"layer": op.name, "macs": int(macs),
                    "weight_bytes": math.ceil(math.prod(w_shape) * op.attrs["w_bits"] / 8)})
    return out


class NumpyRef(Target):
    name = "numpy-ref"
    version = "0.1"
    description = "the reference integer executor (NumPy), with counted MACs and packed weight bytes"
    params = {"batch": 256}
    headline = ("macs", "weight_bytes")

    def unavailable(self, params=None):
        if params is not None and params["batch"] < 1:
            return f"numpy-ref: batch={params['batch']} must be at least 1"
        return None

    def deploy(self, run, imodel, inputs):
        with run.measure(f"deploy:{self.name}:execute"):
            logits, layers = executor.run(imodel, inputs, keep=True, batch=run.params["batch"])
        counts = layer_counts(imodel)
        metrics = [Metric("macs", sum(c["macs"] for c in counts), "MACs/image", "counted"),
                   Metric("weight_bytes", sum(c["weight_bytes"] for c in counts), "bytes", "counted",
                          "weights packed at their bit widths")]
        return TargetReport(outputs=logits, layers=layers, metrics=metrics, per_layer=counts,
                            conditions={"images": len(inputs), "batch": run.params["batch"]})


@hookimpl
def mpqbench_register_targets(register):
    register(NumpyRef())
