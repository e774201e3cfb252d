"""A MODELLED cycle estimate for a counted run: llvm-mca's steady-state cycles of every executed
translated block (TB) of a named core, times how often the block ran, per layer region.

est_cycles(region) = sum over TBs of executions(TB, region) x cycles_per_iteration(TB, core), with
the TB profile from insncount.c (``tbprof``) and the blocks' instructions from the static binary's
disassembly.  The blocks that make up :data:`COVERAGE` of the instructions executed in layers are
modelled one by one; the rest (rare paths, and everything outside layers: start-up, I/O) are charged
at the modelled cycles per instruction of the others.  What the model ignores: caches and memory,
branch prediction, the transitions between blocks (each is modelled as if repeated back to back,
right for loop bodies), and it is LLVM's scheduling model, not the core (cortex-a72/a76/a78/x1 share
the A57 model: never present those as different cores).  Always labelled "modelled".
"""

from __future__ import annotations

import functools
import re
import shutil
from collections import defaultdict
from dataclasses import dataclass

from mpqbench.plugins.arm_qemu import toolchain as tc

COVERAGE = 0.995
_LINE = re.compile(r"^\s*([0-9a-f]+):\t(.*)$")
_TARGET = re.compile(r"\b[0-9a-f]+ <[^>]*>")


@dataclass(frozen=True)
class CycleEstimate:
    cycles: dict[int, float]  #: region (-1: outside layers, k: layer k) -> cycles over the whole run
    coverage: float           #: share of executed instructions in individually modelled blocks
    label: str


@functools.lru_cache(maxsize=8)
def _disassembly(binary: str, sha256: str) -> dict[int, str]:
    """Address -> instruction text, ready for llvm-mca (branch targets become ``.``, comments dropped).
    ``sha256`` is part of the cache key only."""
    insns = {}
    for line in tc.disassemble(binary).splitlines():
        match = _LINE.match(line)
        if match:
            insns[int(match.group(1), 16)] = _TARGET.sub(".", match.group(2).split("//")[0]).strip()
    return insns


@functools.lru_cache(maxsize=4096)
def _block_cycles(asm: str, core: str) -> tc.McaEstimate | None:
    try:
        return tc.mca_cycles(asm, core)
    except tc.ToolchainError:  # an instruction the model does not know: charged at the average
        return None


def estimate_cycles(run: tc.CountedRun, core: str) -> CycleEstimate:
    """Cycles per region of a run made with ``tb_profile=True``."""
    if not run.tb_profile:
        raise ValueError("arm-qemu: the cycle model needs a run with tb_profile=True")
    if shutil.which(tc.MCA) is None:
        raise tc.ToolchainError(f"arm-qemu: {tc.MCA} not found (apt-get install llvm-14), needed for mca_core")
    insns = _disassembly(run.binary, run.binary_sha256)
    executions: dict[tuple[int, int], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for vaddr, n, region, count in run.tb_profile:
        executions[(vaddr, n)][region] += count
    # blocks ranked by their instructions executed inside layers (start-up and I/O are not modelled)
    in_layers = {b: b[1] * sum(c for r, c in regions.items() if r >= 0) for b, regions in executions.items()}
    ranked = sorted((b for b in in_layers if in_layers[b]), key=lambda b: -in_layers[b])
    total = sum(in_layers.values())
    per_block, modelled_insns, modelled_cycles, label = {}, 0, 0.0, f"modelled: llvm-mca model of {core}"
    for vaddr, n in ranked:
        if modelled_insns >= COVERAGE * total:
            break
        lines = [insns.get(vaddr + 4 * i) for i in range(n)]
        estimate = _block_cycles("\n".join(lines), core) if all(lines) else None
        if estimate is None:
            continue
        per_block[(vaddr, n)] = estimate.cycles_per_iteration
        modelled_insns += in_layers[(vaddr, n)]
        modelled_cycles += estimate.cycles_per_iteration * in_layers[(vaddr, n)] / n
        label = estimate.label
    if total and not modelled_insns:
        raise tc.ToolchainError(f"arm-qemu: {tc.MCA} could model none of the executed blocks for {core}")
    cpi = modelled_cycles / modelled_insns if modelled_insns else 0.0
    by_region: dict[int, float] = defaultdict(float)
    for block, regions in executions.items():
        for region, count in regions.items():
            by_region[region] += count * per_block.get(block, block[1] * cpi)
    coverage = modelled_insns / total if total else 0.0
    return CycleEstimate(dict(by_region), coverage,
                         f"{label}, per translated block x executions ({coverage:.1%} of the layers' "
                         "instructions in modelled blocks); no caches, no branch mispredictions")
