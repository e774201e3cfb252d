"""Deploying one IntegerModel on one target, in memory, and the harness's bit-exactness check against the
reference executor's outputs (computed once per run and shared by every target)."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpqbench.errors import Unavailable
from mpqbench.integer.model import IntegerModel
from mpqbench.plugin.objects import TargetReport
from mpqbench.plugin.params import resolve_defaults
from mpqbench.system.meter import measure


@dataclass
class DeployContext:
    """What a target sees of the run: its id, the target's parameters, the cache for built artifacts."""

    run_id: str
    params: dict[str, Any]
    cache: Path
    phases: dict[str, dict] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("mpqbench.pipeline.deploy"))

    @contextmanager
    def measure(self, phase: str):
        with measure(self.phases, phase):
            yield


def compare(imodel: IntegerModel, reference: tuple[np.ndarray, dict[str, np.ndarray]],
            report: TargetReport) -> dict[str, Any]:
    """``bit_exact``, the largest absolute logit difference, how many values differ, and the first
    tensor in execution order whose values differ (when the target reports per-tensor outputs)."""
    ref_logits, ref_layers = reference
    out = np.asarray(report.outputs, dtype=np.int64)
    if out.shape != ref_logits.shape:
        return {"bit_exact": False, "max_abs_diff": None, "mismatches": None,
                "first_divergent_layer": None, "error": f"output shape {out.shape} != {ref_logits.shape}"}
    diff = np.abs(out - ref_logits)
    first = None
    for op in imodel.ops:
        got = report.layers.get(op.output)
        if got is not None and not np.array_equal(np.asarray(got, dtype=np.int64).reshape(
                ref_layers[op.output].shape), ref_layers[op.output]):
            first = op.name
            break
    exact = bool(diff.max(initial=0) == 0)
    if not exact and first is None and report.layers:
        first = imodel.ops[-1].name
    return {"bit_exact": exact, "max_abs_diff": int(diff.max(initial=0)), "mismatches": int((diff > 0).sum()),
            "first_divergent_layer": first, "images": int(len(out))}


def deploy_target(ctx: DeployContext, target, imodel: IntegerModel, inputs: np.ndarray,
                  reference: tuple[np.ndarray, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Run one target and check it; unavailability and errors become the section's status (the full text
    in the record; the driver shows one line), never exceptions."""
    ctx.params = {**resolve_defaults(target.params), **ctx.params}
    reason = target.unavailable(ctx.params)
    if reason:
        return {"status": "unavailable", "reason": reason, "params": ctx.params}
    try:
        report: TargetReport = target.deploy(ctx, imodel, inputs)
    except Unavailable as exc:
        return {"status": "unavailable", "reason": str(exc), "params": ctx.params}
    except Exception as exc:  # a target's failure is recorded; the sweep goes on
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "params": ctx.params}
    return {
        "status": "done",
        "params": ctx.params,
        "check": compare(imodel, reference, report),
        "metrics": {m.name: asdict(m) for m in report.metrics},
        "headline": list(target.headline),
        "per_layer": report.per_layer,
        "conditions": report.conditions,
        "phases": ctx.phases,
    }
