"""Timing on a device: medians of CUDA-event intervals on a GPU, of host wall time on the CPU.

A GPU figure is ``measured`` latency: warm-up calls, then each call bracketed by two CUDA events and
synchronised, median over the calls, inputs rotated over several real batches (never zeros). The same
code on the CPU gives host wall time, which callers label as CPU wall time and never report as
latency. Eager PyTorch launches every kernel from the host, so a GPU layer's time includes the gaps
between its kernels' launches (im2col, GEMM, epilogue): that is what eager execution costs.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch

from mpqbench.plugins.cuda import kernels as K


@dataclass(frozen=True)
class Timing:
    median_ms: float
    calls: int
    clock: str  # "cuda-events" or "cpu-wall"


def clock_name(device: torch.device) -> str:
    return "cuda-events" if device.type == "cuda" else "cpu-wall"


def median_ms(fn: Callable[[int], object], device: torch.device, warmup: int, iters: int) -> Timing:
    """Median time of ``fn(i)`` for i = 0..iters-1 after ``warmup`` calls (``i`` selects the input)."""
    if iters < 1:
        raise ValueError("iters must be at least 1")
    for i in range(warmup):
        fn(i)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for i in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for i in range(iters):
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e3)
    return Timing(statistics.median(times), iters, clock_name(device))


def int8_peak(device: torch.device, size: int, warmup: int = 3, iters: int = 10) -> dict:
    """The int8 GEMM rate this device reaches: ``torch._int_mm`` on size^3 random int8 operands."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=gen).to(device)
    b = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=gen).to(device)
    t = median_ms(lambda i: K.int8_gemm(a, b, size, size), device, warmup, iters)
    return {"size": size, "ms": t.median_ms, "tops": 2 * size**3 / (t.median_ms * 1e-3) / 1e12, "clock": t.clock}


def float_peak(device: torch.device, size: int, dtype: torch.dtype, warmup: int = 3, iters: int = 10) -> dict:
    """The dense GEMM rate of ``dtype`` on size^3 random operands (TFLOP/s)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn((size, size), generator=gen).to(device, dtype)
    b = torch.randn((size, size), generator=gen).to(device, dtype)
    t = median_ms(lambda i: a @ b, device, warmup, iters)
    return {"size": size, "ms": t.median_ms, "tflops": 2 * size**3 / (t.median_ms * 1e-3) / 1e12, "clock": t.clock,
            "dtype": str(dtype).removeprefix("torch.")}


def layerwise(net, batches: list[torch.Tensor], device: torch.device, warmup: int, iters: int) -> dict:
    """Per-op and end-to-end medians of a network with ``prepare(x)``, ``forward(x, keep=True)`` (dict
    by tensor name) and ``step(i, inputs)``; ``batches`` are device-resident integer image batches,
    rotated call by call. Returns ``{"total": Timing, "ops": [Timing per op]}``."""
    imodel = net.imodel
    with torch.no_grad():
        kept = [net.forward(net.prepare(b), keep=True) for b in batches]
        total = median_ms(lambda i: net.forward(net.prepare(batches[i % len(batches)])), device, warmup, iters)
        ops = []
        for index, op in enumerate(imodel.ops):
            args = [[values[n] for n in op.inputs] for values in kept]
            ops.append(median_ms(lambda i, index=index, args=args: net.step(index, args[i % len(args)]),
                                 device, warmup, iters))
    return {"total": total, "ops": ops}
