"""The deploy contract: what a target returns, and the harness's bit-exactness check against the
reference executor."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pluggy

from mpqbench.errors import Unavailable
from mpqbench.integer.model import IntegerModel
from mpqbench.meter import measure
from mpqbench.params import resolve_defaults

How = Literal["measured", "counted", "simulated", "modelled"]


@dataclass
class Metric:
    """One cost figure, with its unit and how it was obtained: ``measured`` on real hardware,
    ``counted`` exactly (e.g. executed instructions), ``simulated`` by a cycle-level model, or
    ``modelled`` analytically (e.g. an llvm-mca estimate)."""

    name: str
    value: float
    unit: str
    how: How
    note: str = ""


@dataclass
class TargetReport:
    """What a target returns: int32 logits for the inputs, optionally per-tensor outputs (keyed by the
    IntegerModel's tensor names) so the harness can name the first layer that diverges, its cost
    metrics (total and per layer) and the exact conditions of the run."""

    outputs: np.ndarray
    metrics: list[Metric]
    layers: dict[str, np.ndarray] = field(default_factory=dict)
    per_layer: list[dict[str, Any]] = field(default_factory=list)
    conditions: dict[str, Any] = field(default_factory=dict)


@dataclass
class DeployContext:
    """What a target sees of the run: its id, the target's parameters, the cache for built artifacts."""

    run_id: str
    params: dict[str, Any]
    cache: Path
    hook: pluggy.HookRelay
    phases: dict[str, dict] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("mpqbench.deploy"))

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
    """Run one target through the deploy hook and check it; unavailability and errors become the
    section's status rather than exceptions."""
    ctx.params = {**resolve_defaults(target.params), **ctx.params}
    reason = target.unavailable()
    if reason:
        return {"status": "unavailable", "reason": reason, "params": ctx.params}
    try:
        report: TargetReport = ctx.hook.mpqbench_deploy(run=ctx, target=target, imodel=imodel, inputs=inputs)
    except Unavailable as exc:
        return {"status": "unavailable", "reason": str(exc), "params": ctx.params}
    except Exception as exc:  # a target's failure is recorded; the sweep goes on
        ctx.log.warning("target %s failed: %s", target.name, exc)
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
