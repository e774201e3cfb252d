"""The ``arm-qemu`` target: the IntegerModel runs in a C runtime cross-compiled for AArch64 (NEON
``sdot`` kernels, packed low-bit weights) under qemu-aarch64, and every instruction is counted.

What it reports (never wall time under emulation as a latency):

* ``instructions`` (counted): executed guest instructions of the network per image, i.e. the sum of
  the layer regions the runtime brackets with marker instructions (loading, input copies and output
  writes are outside them; ``instructions_run`` is the whole process), with per-class totals;
* ``macs`` per image from the shapes, ``instr_per_mac`` (the ``sdot`` limit is 1/16);
* ``weight_bytes``: the weights as the runtime holds them (packed at 2..8 bits for the sdot kernels),
  ``activation_bytes``: every layer's input and output tensors once per image (compulsory traffic in
  the runtime's storage types, not a cache simulation);
* optionally ``est_cycles`` (``mca_core=<cpu>``): an llvm-mca estimate, labelled as modelled;
* per layer: the same figures, keyed by the IntegerModel's op names.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

from mpqbench.api import Metric, Target, TargetReport, Unavailable
from mpqbench.integer.model import IntegerModel
from mpqbench.plugins.arm_qemu import layout as lay
from mpqbench.plugins.arm_qemu import toolchain as tc
from mpqbench.plugins.arm_qemu.cycles import estimate_cycles

HERE = Path(__file__).parent
RUNTIME_SOURCES = (HERE / "runtime.c", HERE / "kernels.c")
RUNTIME_DEPS = (HERE / "runtime.h",)
#: ``-fno-schedule-insns``: GCC's pre-register-allocation scheduler hoists the weight unpacking of a
#: whole 16-channel block ahead of its sdots and spills accumulators; without it the tiles keep all
#: 16 accumulators in registers.  ``-frename-registers`` removes most register-to-register moves the
#: allocator leaves in the packed-weight loops (both checked in the disassembly: GCC 12).
RUNTIME_FLAGS = (*tc.DEFAULT_CROSS_FLAGS, "-fno-schedule-insns", "-frename-registers")


def build_runtime(cache_dir: Path | str | None = None) -> Path:
    """The static aarch64 runtime, cross-compiled on demand and cached by content."""
    return tc.cross_compile(RUNTIME_SOURCES, flags=RUNTIME_FLAGS, deps=RUNTIME_DEPS, cache_dir=cache_dir)


def runtime_source_hash() -> str:
    """Recorded with every result: the counts belong to this exact runtime source."""
    digest = hashlib.sha256()
    for path in (*RUNTIME_SOURCES, *RUNTIME_DEPS):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


class RuntimeRun:
    """One counted run of the runtime on a batch: outputs, and counts per op of the IntegerModel."""

    def __init__(self, imodel: IntegerModel, inputs: np.ndarray, *, cpu: str = tc.DEFAULT_CPU,
                 layers: bool = True, tb_profile: bool = False, cache_dir: Path | str | None = None):
        self.images = len(inputs)
        binary = build_runtime(cache_dir)
        with tempfile.TemporaryDirectory(prefix="mpqbench-arm-io-") as tmp:
            work = Path(tmp)
            self.layout = lay.write_model(imodel, work / "model.bin")
            lay.write_inputs(work / "inputs.bin", self.layout, imodel, inputs, layers)
            fetch = ["outputs.bin", "layers.bin"] if layers else ["outputs.bin"]
            start = time.perf_counter()
            self.counted = tc.run_counted(
                binary, ["model.bin", "inputs.bin"], cpu=cpu, cache_dir=cache_dir,
                files={"model.bin": work / "model.bin", "inputs.bin": work / "inputs.bin"},
                fetch=fetch, fetch_dir=work, tb_profile=tb_profile)
            self.emulation_seconds = time.perf_counter() - start
            self.outputs = lay.read_outputs(work / "outputs.bin", self.layout, imodel, self.images)
            self.layers = lay.read_layers(work / "layers.bin", self.layout, imodel, self.images) if layers else {}
        n_ops = len(self.layout.ops)
        if self.counted.marks != (n_ops * self.images, self.images) or len(self.counted.layers) != (
                n_ops if self.images else 0):
            raise tc.GuestError(f"arm-qemu: the runtime executed {self.counted.marks} markers for "
                                f"{self.images} images x {n_ops} ops")

    def per_op(self) -> list[dict]:
        """Per op: name, kernel, instructions by class per image, MACs, bytes, instructions per MAC."""
        rows = []
        for ol, counts in zip(self.layout.ops, self.counted.layers):
            per_image = {k: v / self.images for k, v in counts.items()}
            rows.append({
                "layer": ol.op.name, "output": ol.op.output, "op": ol.op.kind,
                "kernel": lay.KERNEL_NAMES[ol.kernel], "w_bits": ol.op.attrs.get("w_bits"),
                "instructions": per_image["total"],
                "by_class": {k: v for k, v in per_image.items() if k != "total"},
                "macs": ol.macs, "weight_bytes": ol.weight_bytes,
                "activation_bytes": self.activation_bytes(ol),
                "instr_per_mac": per_image["total"] / ol.macs if ol.macs else None,
            })
        return rows

    def activation_bytes(self, ol: lay.OpLayout) -> int:
        """The op's input and output tensors once, real elements in the runtime's storage types."""
        return sum(self.layout.tensors[name].real_bytes for name in (*ol.op.inputs, ol.op.output))


class ArmQemu(Target):
    name = "arm-qemu"
    version = "1.0"
    description = ("AArch64 C runtime (NEON sdot, packed 2-8-bit weights) under qemu-aarch64 7.2, "
                   "executed instructions counted exactly per layer")
    params = {"cpu": tc.DEFAULT_CPU, "layers": True, "mca_core": ""}
    headline = ("instr_per_mac", "instructions", "weight_bytes")

    def unavailable(self, params=None) -> str | None:
        return tc.unavailable()

    def deploy(self, run, imodel: IntegerModel, inputs) -> TargetReport:
        if imodel.has_level_tables:
            raise Unavailable("arm-qemu: learned level tables are not supported")
        params = run.params  # resolved by the harness: defaults plus the user's overrides
        cache = Path(run.cache) / "arm"
        result = RuntimeRun(imodel, np.asarray(inputs), cpu=params["cpu"], layers=bool(params["layers"]),
                            tb_profile=bool(params["mca_core"]), cache_dir=cache)
        rows = result.per_op()
        n = max(result.images, 1)
        network = {k: sum(c[k] for c in result.counted.layers) / n for k in tc.CLASSES}
        macs = sum(r["macs"] for r in rows)
        metrics = [
            Metric("instructions", network["total"], "instructions/image", "counted",
                   "network layers only (between the runtime's layer markers)"),
            Metric("instr_per_mac", network["total"] / macs if macs else float("nan"), "instructions/MAC",
                   "counted", "sdot limit 1/16 = 0.0625"),
            Metric("macs", macs, "MACs/image", "counted", "from the layer shapes"),
            Metric("weight_bytes", sum(r["weight_bytes"] for r in rows), "bytes", "counted",
                   "weights as the runtime stores them (packed at their bit width for the sdot kernels)"),
            Metric("activation_bytes", sum(r["activation_bytes"] for r in rows), "bytes/image", "counted",
                   "each layer's input and output tensors once (compulsory, runtime storage types)"),
            Metric("instructions_run", result.counted.total, "instructions", "counted",
                   f"whole process for {result.images} images: start-up, I/O and layers"),
        ]
        metrics += [Metric(f"instr_{k}", v, "instructions/image", "counted", "network layers, by class")
                    for k, v in network.items() if k != "total"]
        if params["mca_core"]:
            estimate = estimate_cycles(result.counted, params["mca_core"])
            for k, row in enumerate(rows):
                row["est_cycles"] = estimate.cycles.get(k, 0.0) / n
            metrics.append(Metric("est_cycles", sum(r["est_cycles"] for r in rows), "cycles/image", "modelled",
                                  estimate.label))
        conditions = {
            **result.counted.conditions(),
            "compiler_flags": list(RUNTIME_FLAGS),
            "runtime_sources_sha256": runtime_source_hash(),
            "images": result.images,
            "layer_markers": "hint #0x7c before each op, hint #0x7d after the last (insncount.c)",
            "emulation_host_seconds": round(result.emulation_seconds, 2),
        }
        return TargetReport(outputs=result.outputs, metrics=metrics, layers=result.layers, per_layer=rows,
                            conditions=conditions)
