"""One cell of the grid, as a one-way pipeline of stages:

``context -> search -> train -> finalize -> final policy -> evaluate -> export -> integer_eval -> deploy``

Every stage goes through the ``mpqbench_stage`` hook (timed and memory-metered by the core's wrapper). The
budget, size and BitOPs are measured on the policy read back from the finalized model, and both that and
the searched policy are recorded. The reference executor runs once; its outputs on the deploy images are
what every target is compared with, on the in-memory integer model. Nothing here writes the store: the cell
returns its record and artifacts to the driver.
"""

from __future__ import annotations

import io
import traceback
from pathlib import Path

import numpy as np
import torch

from mpqbench.errors import UserError
from mpqbench.integer import executor
from mpqbench.integer.export import export
from mpqbench.integer.fixedpoint import ExportError
from mpqbench.integer.model import IntegerModel
from mpqbench.pipeline.context import RunContext
from mpqbench.pipeline.deploy import DeployContext, deploy_target
from mpqbench.pipeline.preflight import Plan, load_data
from mpqbench.pipeline.record import RunRecord, now, pack_correct
from mpqbench.pipeline.spec import Component, RunSpec
from mpqbench.quant.model import QuantModel
from mpqbench.quant.policy import BitPolicy
from mpqbench.system.environment import environment
from mpqbench.train.checkpoints import Checkpoint, cached_predictions
from mpqbench.train.loop import accuracy, predict, resolve_device

Artifacts = dict[str, bytes]


def build_context(spec: RunSpec, plan: Plan, registry, cache: Path, data_root: str | None = None,
                  device: str = "cpu") -> RunContext:
    """Everything a run needs; the FP32 checkpoint was trained by its own job before this cell."""
    data = load_data(registry, spec, data_root, cache)
    entry = registry.model(spec.model)
    checkpoint = Checkpoint(spec.model, data, spec.recipe, spec.recipe.fp32_seed_for(spec.seed), cache)
    fp32, meta = checkpoint.load(entry, data)
    run = RunContext(spec=spec, method=registry.method(spec.method.name), params=spec.method.kwargs, data=data,
                     recipe=spec.recipe, seed=spec.seed, budget=plan.budget, fixed=dict(plan.fixed), fp32=fp32,
                     layout=plan.layout, cost=plan.cost, registry=registry, cache=cache,
                     device=resolve_device(device))
    run.extra["fp32_checkpoint"] = meta
    return run


def execute(record: RunRecord, spec: RunSpec, plan: Plan, registry, cache: Path, *, targets: list[Component],
            data_root: str | None, deploy_images: int, device: str) -> Artifacts:
    """Run the cell into ``record``; a failure is recorded with its error, never raised."""
    artifacts: Artifacts = {}
    torch.manual_seed(spec.seed)
    try:
        run = build_context(spec, plan, registry, cache, data_root, device)
        _pipeline(run, record, artifacts, registry, targets, deploy_images)
        record.status = "done"
    except Exception as exc:  # recorded, and the sweep goes on
        record.status = "failed"
        record.error = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, (UserError, ExportError)):
            record.traceback = traceback.format_exc(limit=8)
    record.finished = now()
    record.environment = environment()
    return artifacts


def _pipeline(run: RunContext, record: RunRecord, artifacts: Artifacts, registry, targets: list[Component],
              deploy_images: int) -> None:
    def stage(name: str, call):
        return registry.pm.hook.mpqbench_stage(run=run, stage=name, call=call)

    method = run.method
    with run.seeded("search"):
        searched: BitPolicy = stage("search", lambda: method.search(run))
    _check(searched, run, "search returned")
    record.searched_policy = searched.to_json()
    try:
        with run.seeded("train"):
            model = stage("train", lambda: method.train(run, searched))
            model = stage("finalize", lambda: method.finalize(run, model))
    finally:
        record.training = {name: t.history for name, t in run.trainers.items()}
        record.phases = run.phases
        record.extra = run.extra
    final = model.policy() if isinstance(model, QuantModel) else searched
    _check(final, run, "the finalized model has")
    record.policy = final.to_json()
    record.layers = {name: [c.params, c.macs] for name, c in run.cost.layers.items()}
    metrics = dict(run.cost.metrics(final))
    if run.budget:
        record.budget = run.budget.record(run.cost, final)
    test = run.data.test

    def evaluate():
        fp32_meta = run.extra["fp32_checkpoint"]
        return cached_predictions(run.fp32, fp32_meta, test, run.cache), predict(model, test)

    fp32_preds, preds = stage("evaluate", evaluate)
    metrics.update(fp32_top1=accuracy(fp32_preds, test.y), top1=accuracy(preds, test.y), test_images=len(test))
    record.correct = {"fp32_top1": pack_correct(fp32_preds == test.y), "top1": pack_correct(preds == test.y)}
    if isinstance(model, QuantModel) and not model.is_float:
        model = model.cpu()
        shape = (run.data.shape.channels, run.data.shape.size, run.data.shape.size)
        imodel = stage("export", lambda: export(model, shape, {"run_id": record.id, "policy": record.policy}))
        artifacts["integer_model.npz"] = imodel.to_bytes()
        head = min(deploy_images, len(test)) if targets else 0
        x = test.x.numpy()

        def integer_eval():
            if not head:
                return None, executor.run(imodel, x)
            ref = executor.run(imodel, x[:head], keep=True)
            return ref, np.concatenate([ref[0], executor.run(imodel, x[head:])])

        reference, logits = stage("integer_eval", integer_eval)
        int_preds = torch.from_numpy(logits.argmax(1))
        metrics.update(int_top1=accuracy(int_preds, test.y), int_agreement=accuracy(int_preds, preds),
                       weight_bytes=imodel.weight_bytes())
        metrics["int_minus_fq"] = metrics["int_top1"] - metrics["top1"]
        record.correct["int_top1"] = pack_correct(int_preds == test.y)
        record.targets = deploy_all(imodel, x[:head], reference, registry, targets, record.id, run.cache, stage)
    metrics["drop"] = metrics["fp32_top1"] - metrics["top1"]
    record.metrics = metrics


def _check(policy: BitPolicy, run: RunContext, what: str) -> None:
    try:
        policy.check(run.layout, run.fixed)
    except ValueError as exc:
        raise RuntimeError(f"{run.method.name}: {what} an invalid policy: {exc}") from None


def deploy_all(imodel: IntegerModel, inputs: np.ndarray, reference, registry, targets: list[Component],
               run_id: str, cache: Path, stage=None) -> dict[str, dict]:
    """Every target on the in-memory integer model, checked against the reference outputs; one section per
    target with the target plugin's fingerprint (so a changed target is redeployed)."""
    sections = {}
    for component in targets:
        target = registry.target(component.name)
        ctx = DeployContext(run_id=run_id, params=component.kwargs, cache=cache)

        def call(target=target, ctx=ctx):
            return deploy_target(ctx, target, imodel, inputs, reference)

        sections[component.name] = stage(f"deploy:{component.name}", call) if stage else call()
        sections[component.name]["plugin"] = registry.fingerprint(target)
    return sections


def redeploy(npz: bytes, dataset_inputs: np.ndarray, registry, targets: list[Component], run_id: str,
             cache: Path) -> dict[str, dict]:
    """Targets on a stored run's integer model (a finished run missing them, or ``verify``)."""
    imodel = IntegerModel.load(io.BytesIO(npz))
    reference = executor.run(imodel, dataset_inputs, keep=True)
    return deploy_all(imodel, dataset_inputs, reference, registry, targets, run_id, cache)

