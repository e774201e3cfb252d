"""Benchmarks: commands that print figures. Speed and memory targets live here, not in unit tests."""

from __future__ import annotations

import importlib

from mpqbench.errors import UserError

BENCHMARKS: dict[str, str] = {
    # name -> "module:function"; each function(args: list[str], registry) -> exit code, docstring's
    # first line is its description.
    "executor": "mpqbench.integer.bench:main",
    "ompq-search": "mpqbench.plugins.ompq.bench:main",
    "hawq-trace": "mpqbench.plugins.hawq_v3.bench:main",
    "arm-kernels": "mpqbench.plugins.arm_qemu.bench:main",
}


def _load(name: str):
    module, _, function = BENCHMARKS[name].partition(":")
    return getattr(importlib.import_module(module), function)


def run_benchmark(name: str, args: list[str], registry) -> int:
    if name == "list" or name not in BENCHMARKS:
        if name != "list":
            raise UserError(f"unknown benchmark {name!r} (known: {', '.join(sorted(BENCHMARKS)) or 'none'})")
        for key in sorted(BENCHMARKS):
            print(f"{key:20s} {(_load(key).__doc__ or '').strip().splitlines()[0]}")
        return 0
    return _load(name)(args, registry)
