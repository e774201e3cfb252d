"""Per-layer cycles and latency of a network on a simulated accelerator, for the target and for budgets.

:func:`layer_latency_us` is the per-layer cost a search can spend (``latency_us@fpga-sim``): it takes the
same :class:`~mpqbench.integer.shapes.LayerShape` that :func:`mpqbench.integer.shapes.layer_shapes` derives
from a float model and :func:`mpqbench.integer.shapes.op_shapes` from a deployed IntegerModel, so the sum
over layers at a policy's bits equals the latency the ``fpga-sim`` target reports for the deployed model
(conv/linear layers only: adds, pooling and requantisation run outside the array and are not counted).
Every figure is simulated (an analytical cycle model, deterministic), in microseconds at the preset's
clock, for one batch of ``batch`` images.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from mpqbench.integer.model import IntegerModel
from mpqbench.integer.shapes import LayerShape, op_shapes
from mpqbench.plugins.fpga_sim import bismo, bitfusion
from mpqbench.plugins.fpga_sim.presets import BismoConfig, BitFusionConfig, Config
from mpqbench.plugins.fpga_sim.presets import preset as get_preset


def config(preset: str | Config) -> Config:
    return get_preset(preset) if isinstance(preset, str) else preset


def layer_result(shape: LayerShape, preset: str | Config, batch: int = 1, w_bits: int | None = None,
                 a_bits: int | None = None):
    """The model's full result for one layer (a :class:`.bismo.BismoResult` or :class:`.bitfusion.BitFusionResult`)."""
    cfg = config(preset)
    if batch < 1:
        raise ValueError(f"batch {batch} < 1")
    if isinstance(cfg, BismoConfig):
        return bismo.layer(shape, cfg, batch, w_bits, a_bits)
    if isinstance(cfg, BitFusionConfig):
        return bitfusion.layer(shape, cfg, batch, w_bits, a_bits)
    raise TypeError(f"unknown accelerator configuration {cfg!r}")


def layer_cycles(shape: LayerShape, w: int, a: int, preset: str | Config, batch: int = 1) -> int:
    return layer_result(shape, preset, batch, w, a).cycles


def layer_latency_us(shape: LayerShape, w: int, a: int, preset: str | Config, batch: int = 1) -> float:
    """Simulated latency in microseconds of one conv/linear layer at ``w``-bit weights and ``a``-bit input
    activations, for a batch of ``batch`` images on ``preset`` (a preset name or a configuration)."""
    cfg = config(preset)
    return layer_cycles(shape, w, a, cfg, batch) / cfg.f_mhz


def latency_table(shapes: dict[str, LayerShape], preset: str | Config, batch: int = 1,
                  w_bits: Iterable[int] = range(2, 9), a_bits: Iterable[int] = range(2, 9)) -> dict[str, np.ndarray]:
    """Per layer, the latency (us) for every (w, a) pair: an array indexed [w index, a index]."""
    w_bits, a_bits = list(w_bits), list(a_bits)
    return {name: np.array([[layer_latency_us(s, w, a, preset, batch) for a in a_bits] for w in w_bits])
            for name, s in shapes.items()}


def network_rows(imodel: IntegerModel, preset: str | Config, batch: int = 1) -> list[dict]:
    """One row per conv/linear op of ``imodel``: its shape, bits, cycles, latency and the model's details."""
    cfg = config(preset)
    rows = []
    for name, shape in op_shapes(imodel).items():
        r = layer_result(shape, cfg, batch)
        row = {"layer": name, "op": shape.kind, "w_bits": shape.w_bits, "a_bits": shape.a_bits,
               "macs": shape.macs, "gemm_mkn": list(shape.gemm(batch)), "groups": shape.groups,
               "cycles": r.cycles, "latency_us": r.cycles / cfg.f_mhz, "how": "simulated"}
        row.update({f"{cfg.arch}.{k}": v for k, v in r.row().items() if k != "cycles"})
        rows.append(row)
    return rows
