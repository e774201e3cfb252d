"""Running one cell of the grid: context, search, train, export, integer accuracy, deployment."""

from __future__ import annotations

import functools
import logging
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch

from mpqbench.api import Method, Target
from mpqbench.checkpoints import fp32_checkpoint
from mpqbench.config import Component, RunSpec
from mpqbench.context import RunContext
from mpqbench.cost import CostModel
from mpqbench.data.splits import DataSplits
from mpqbench.deploy import DeployContext, deploy_target
from mpqbench.environment import environment
from mpqbench.errors import UserError
from mpqbench.integer import executor
from mpqbench.integer.export import export
from mpqbench.integer.fixedpoint import ExportError
from mpqbench.integer.model import IntegerModel
from mpqbench.meter import measure
from mpqbench.params import resolve_defaults
from mpqbench.policy import BitPolicy
from mpqbench.quant.model import QuantModel
from mpqbench.registry import Registry, source_hash
from mpqbench.store import RunStore
from mpqbench.train import accuracy, predict, resolve_device

log = logging.getLogger("mpqbench.runner")
RECORD_SCHEMA = 1


@functools.lru_cache(maxsize=8)
def _dataset(registry: Registry, name: str, root: str | None, cache: Path) -> DataSplits:
    return registry.dataset(name).load(root, cache / "data")


def load_data(registry: Registry, spec: RunSpec, root: str | None, cache: Path) -> DataSplits:
    data = _dataset(registry, spec.dataset, root, cache)
    return data.subset(spec.recipe.train_subset, spec.recipe.test_subset)


def fingerprint(plugin: Method | Target) -> dict[str, str]:
    return {"name": plugin.name, "version": plugin.version, "source": source_hash(plugin)}


def fixed_layers(layout, bits: int | None) -> dict[str, tuple[int, int]]:
    """The layers a run pins: first and last at W``bits``A``bits``, or none when they are searched."""
    return {} if bits is None else {layout.first: (bits, bits), layout.last: (bits, bits)}


def build_context(spec: RunSpec, registry: Registry, cache: Path, data_root: str | None = None,
                  device: str = "cpu") -> RunContext:
    """Everything a run needs; the FP32 checkpoint is trained here on first use (phase ``fp32``)."""
    device = resolve_device(device)
    method = registry.method(spec.method.name)
    entry = registry.model(spec.model)
    data = load_data(registry, spec, data_root, cache)
    phases: dict = {}
    with measure(phases, "fp32"):
        fp32, meta = fp32_checkpoint(entry, data, spec.recipe, spec.recipe.fp32_seed_for(spec.seed), cache,
                                     device)
    layout = entry.layout(fp32)
    cost = CostModel.measure(fp32, layout, (data.shape.channels, data.shape.size, data.shape.size))
    fixed = fixed_layers(layout, spec.first_last_bits)
    budget = spec.budget.resolve(cost, fixed) if spec.budget else None
    run = RunContext(spec=spec, method=method, params=spec.method.kwargs, data=data,
                     recipe=spec.recipe, seed=spec.seed, budget=budget, fixed=fixed, fp32=fp32, layout=layout,
                     cost=cost, hook=registry.pm.hook, cache=cache, phases=phases, device=device)
    run.extra["fp32_checkpoint"] = meta
    return run


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_record(spec: RunSpec, registry: Registry) -> dict:
    method = registry.method(spec.method.name)
    fp = fingerprint(method)
    return {
        "schema": RECORD_SCHEMA,
        "id": spec.run_id(fp),
        "status": "running",
        "label": spec.method.label(resolve_defaults(method.params)),
        "spec": spec.identity(),
        "plugin": fp,
        "started": _now(),
    }


def execute(spec: RunSpec, registry: Registry, store: RunStore, targets: list[Component], cache: Path,
            data_root: str | None = None, deploy_images: int = 256, device: str = "cpu") -> dict:
    """Run one cell and write its record; a failure is recorded with its error, never raised."""
    record = new_record(spec, registry)
    torch.manual_seed(spec.seed)
    try:
        run = build_context(spec, registry, cache, data_root, device)
        _search_and_train(run, record, store)
        record["status"] = "done"
    except Exception as exc:  # recorded, and the sweep goes on
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, (UserError, ExportError)):
            record["traceback"] = traceback.format_exc(limit=8)
        log.warning("run %s (%s) failed: %s", record["id"], record["label"], record["error"])
    record["finished"] = _now()
    record["environment"] = environment()
    if record["status"] == "done":
        deploy_missing(record, registry, store, targets, cache, data_root, deploy_images, write=False)
    store.write(record)
    return record


def _search_and_train(run: RunContext, record: dict, store: RunStore) -> None:
    hook = run.hook
    policy: BitPolicy = hook.mpqbench_search(run=run)
    try:
        policy.check(run.layout, run.fixed)
    except ValueError as exc:
        raise RuntimeError(f"method returned an invalid policy: {exc}") from None
    record["policy"] = policy.to_json()
    record["layers"] = {name: [c.params, c.macs] for name, c in run.cost.layers.items()}
    metrics = dict(run.cost.metrics(policy))
    if run.budget:
        record["budget"] = {"text": run.budget.text, "kind": run.budget.kind, "value": run.budget.value,
                            "measured": run.budget.measure(run.cost, policy),
                            "met": run.budget.met(run.cost, policy)}
    model = hook.mpqbench_train(run=run, policy=policy)
    test = run.data.test
    with measure(run.phases, "evaluate"):
        fp32_preds = predict(run.fp32, test)
        preds = predict(model, test)
    metrics.update(fp32_top1=accuracy(fp32_preds, test.y), top1=accuracy(preds, test.y), test_images=len(test))
    if isinstance(model, QuantModel) and not model.is_float:
        model = model.cpu()
        shape = (run.data.shape.channels, run.data.shape.size, run.data.shape.size)
        with measure(run.phases, "export"):
            imodel = export(model, shape, {"run_id": record["id"], "policy": policy.to_json()})
        imodel.save(store.artifact(record["id"], "integer_model.npz"))
        with measure(run.phases, "integer_eval"):
            logits = executor.run(imodel, test.x.numpy())
        int_preds = torch.from_numpy(logits.argmax(1))
        metrics.update(int_top1=accuracy(int_preds, test.y),
                       int_agreement=accuracy(int_preds, preds),
                       weight_bytes=imodel.weight_bytes())
        metrics["int_minus_fq"] = metrics["int_top1"] - metrics["top1"]
    metrics["drop"] = metrics["fp32_top1"] - metrics["top1"]
    record["metrics"] = metrics
    record["phases"] = run.phases
    record["extra"] = dict(run.extra)


def deploy_missing(record: dict, registry: Registry, store: RunStore, targets: list[Component], cache: Path,
                   data_root: str | None, images: int, write: bool = True) -> None:
    """Deploy the run's stored IntegerModel on every requested target that has no finished report from
    the current plugin with the same parameters (so a target that was unavailable or failed is retried,
    and one whose code changed is redeployed). Target failures are recorded in the target's section."""
    if not targets or "int_top1" not in record.get("metrics", {}):
        return
    sections = record.setdefault("targets", {})

    def current(t: Component) -> bool:
        section = sections.get(t.name, {})
        return (section.get("status") == "done" and section.get("params") == t.kwargs
                and section.get("plugin") == fingerprint(registry.target(t.name)))

    todo = [t for t in targets if not current(t)]
    if not todo:
        return
    imodel = IntegerModel.load(store.artifact(record["id"], "integer_model.npz"))
    spec_data = _dataset(registry, record["spec"]["dataset"], data_root, cache)
    inputs = spec_data.test.x[:images].numpy()
    reference = executor.run(imodel, inputs, keep=True)
    for component in todo:
        target = registry.target(component.name)
        ctx = DeployContext(run_id=record["id"], params=component.kwargs, cache=cache, hook=registry.pm.hook)
        sections[component.name] = deploy_target(ctx, target, imodel, inputs, reference)
        sections[component.name]["plugin"] = fingerprint(target)
    if write:
        store.write(record)
