"""``mpqbench bench arm-kernels``: instructions per MAC of the arm-qemu conv kernels.

Each kernel runs as the only op of a synthetic IntegerModel (random weights and requantisation
constants: the kernels' instruction counts do not depend on values) through the real runtime under
qemu, and the counts are those of its layer region, so they include everything the layer does
(weight unpacking, the requantisation epilogue, loop overhead), per image.  Its output is checked
against the reference executor.  The fp32 baseline (``fp32conv.c``) has the same tiling, is compiled
with the same flags and counted the same way.
"""

from __future__ import annotations

import argparse

import numpy as np

from mpqbench.integer import executor
from mpqbench.integer.fixedpoint import quantize_multipliers
from mpqbench.integer.model import IntegerModel, Op, TensorInfo
from mpqbench.integer.packing import pack
from mpqbench.plugins.arm_qemu import toolchain as tc
from mpqbench.plugins.arm_qemu.cycles import estimate_cycles
from mpqbench.plugins.arm_qemu.target import HERE, RUNTIME_FLAGS, RuntimeRun

SDOT_LIMIT = 1 / 16
FMLA_LIMIT = 1 / 4


def conv_model(cin: int, cout: int, size: int, w_bits: int, *, kernel: int = 3, stride: int = 1, a_bits: int = 8,
               seed: int = 0) -> IntegerModel:
    """One conv + ReLU between unsigned ``a_bits`` tensors, with random ``w_bits`` weights."""
    rng = np.random.default_rng(seed)
    pad = kernel // 2
    out = (size + 2 * pad - kernel) // stride + 1
    lo, hi = -(1 << (w_bits - 1)), (1 << (w_bits - 1)) - 1
    w = rng.integers(lo, hi + 1, (cout, cin, kernel, kernel))
    k = cin * kernel * kernel
    # an output step of ~3 standard deviations of the accumulator over 2^a_bits levels
    spread = 3 * np.sqrt(k) * max(abs(lo), hi) * (1 << a_bits) / 2
    mult, shift = quantize_multipliers(rng.uniform(0.5, 2.0, cout) * (1 << a_bits) / spread)
    tensors = {"x": TensorInfo("x", "q", (cin, size, size), bits=a_bits, signed=False),
               "y": TensorInfo("y", "q", (cout, out, out), bits=a_bits, signed=False)}
    op = Op("conv", "conv", ["x"], "y", {
        "w_bits": w_bits, "w_shape": [cout, cin, kernel, kernel], "in_zero_point": 0, "acc_shift": 0,
        "stride": [stride, stride], "padding": [pad, pad], "groups": 1, "out_zero_point": 0, "lo": 0,
        "hi": (1 << a_bits) - 1})
    arrays = {"conv.weight": pack(w, w_bits), "conv.bias": rng.integers(-1000, 1000, cout).astype(np.int32),
              "conv.mult": mult, "conv.shift": shift}
    return IntegerModel(tensors, [op], arrays, "x", "y")


def fp32_run(cin: int, cout: int, size: int, *, cpu: str, tb_profile: bool = False,
             cache_dir=None) -> tuple[tc.CountedRun, int]:
    """The counted fp32 NEON conv (3x3, stride 1, one image) and its MACs (layer region 0)."""
    binary = tc.cross_compile(HERE / "fp32conv.c", flags=RUNTIME_FLAGS, cache_dir=cache_dir)
    run = tc.run_counted(binary, [cin, cout, size, 3, 1], cpu=cpu, tb_profile=tb_profile, cache_dir=cache_dir)
    pixels = int(run.guest_stdout.split()[1])  # the tiles cover whole groups of 4 pixels
    return run, pixels * cout * cin * 9


def _modelled(run: tc.CountedRun, macs: int, core: str) -> str:
    """MACs per modelled cycle of the run's first layer region, as a table cell ('' without a core)."""
    if not core:
        return ""
    return f" {macs / estimate_cycles(run, core).cycles[0]:9.2f}"


def main(args: list[str], registry) -> int:
    """Instructions per MAC of the arm-qemu 3x3 conv kernels (int8 sdot, packed 4/3/2-bit, fp32 NEON)."""
    parser = argparse.ArgumentParser(prog="mpqbench bench arm-kernels")
    parser.add_argument("--shapes", default="16x28,32x14,64x7",
                        help="comma-separated CxS: C->C channels at SxS (default: the ResNet-20 stages)")
    parser.add_argument("--bits", default="8,4,3,2", help="weight bit widths (activations: 8-bit)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--cpu", default=tc.DEFAULT_CPU)
    parser.add_argument("--mca-core", default="", help="add llvm-mca's modelled MACs/cycle for this core "
                        "(e.g. neoverse-n1, cortex-a55)")
    opts = parser.parse_args(args)
    reason = tc.unavailable()
    if reason:
        print(reason)
        return 1
    print(f"arm-qemu conv kernels: 3x3, stride 1, padding 1, 8-bit activations; executed instructions per "
          f"image counted under {tc.qemu_version()} -cpu {opts.cpu}")
    print("(sdot limit 1/16 = 0.0625 instr/MAC; fp32 fmla limit 1/4; bytes: weights as stored in memory)")
    if opts.mca_core:
        print(f"MAC/cycle: MODELLED, llvm-mca model of {opts.mca_core} per executed block (arm_qemu/cycles.py)")
    print()
    header = f"{'shape':18s} {'kernel':16s} {'instr/MAC':>9s} {'x limit':>8s} {'instr/image':>12s} " \
             f"{'weight B':>9s} {'bit-exact':>9s}" + (f" {'MAC/cycle':>9s}" if opts.mca_core else "")
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for shape in opts.shapes.split(","):
        c, size = (int(v) for v in shape.lower().split("x"))
        label = f"{c}->{c} @{size}x{size}"
        x = rng.integers(0, 256, (opts.images, c, size, size))
        for bits in (int(b) for b in opts.bits.split(",")):
            imodel = conv_model(c, c, size, bits, seed=bits)
            run = RuntimeRun(imodel, x, cpu=opts.cpu, layers=False, tb_profile=bool(opts.mca_core))
            exact = bool(np.array_equal(run.outputs, executor.run(imodel, x)))
            row = run.per_op()[0]
            name = "int8 sdot" if bits == 8 else f"{bits}-bit packed sdot"
            print(f"{label:18s} {name:16s} {row['instr_per_mac']:9.4f} {row['instr_per_mac'] / SDOT_LIMIT:7.2f}x "
                  f"{row['instructions']:12,.0f} {row['weight_bytes']:9,d} {'yes' if exact else 'NO':>9s}"
                  + _modelled(run.counted, row["macs"] * opts.images, opts.mca_core))
            label = ""
        fp32, macs = fp32_run(c, c, size, cpu=opts.cpu, tb_profile=bool(opts.mca_core))
        instructions = fp32.layers[0]["total"]
        print(f"{'':18s} {'fp32 NEON fmla':16s} {instructions / macs:9.4f} {instructions / macs / FMLA_LIMIT:7.2f}x "
              f"{instructions:12,.0f} {c * c * 9 * 4:9,d} {'(checked)':>9s}" + _modelled(fp32, macs, opts.mca_core))
    return 0
