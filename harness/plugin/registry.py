"""Loading plugins (entry-point group ``mpqbench``) and the registry of what they provide."""

from __future__ import annotations

import importlib.metadata
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pluggy

from mpqbench.errors import UserError
from mpqbench.plugin import hookspecs
from mpqbench.plugin.fingerprint import source_hash

log = logging.getLogger("mpqbench.registry")
GROUP = "mpqbench"
KINDS = {  # kind -> registration hook
    "method": "mpqbench_register_methods",
    "target": "mpqbench_register_targets",
    "model": "mpqbench_register_models",
    "dataset": "mpqbench_register_datasets",
    "budget kind": "mpqbench_register_budget_kinds",
    "benchmark": "mpqbench_register_benchmarks",
    "executor": "mpqbench_register_executors",
    "quantizer": "mpqbench_register_quantizers",
}


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str
    provides: list[str] = field(default_factory=list)
    error: str | None = None


class Registry:
    """Everything plugins registered, by kind and name, each remembered with the plugin that gave it."""

    def __init__(self, pm: pluggy.PluginManager, plugins: list[PluginInfo]):
        self.pm = pm
        self.plugins = plugins
        self.tables: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
        self.origin: dict[int, PluginInfo] = {}
        by_name = {p.name: p for p in plugins}
        for kind, hook_name in KINDS.items():
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                self._call(kind, impl, by_name.get(impl.plugin_name))

    def _call(self, kind: str, impl, info: PluginInfo | None) -> None:
        table = self.tables[kind]

        def register(obj):
            if not getattr(obj, "name", ""):
                raise UserError(f"plugin {info.name if info else '?'} registered a {kind} without a name")
            if obj.name in table:
                raise UserError(f"two plugins register a {kind} named {obj.name!r}")
            table[obj.name] = obj
            if info:
                self.origin[id(obj)] = info
                info.provides.append(f"{kind} {obj.name}")

        try:
            impl.function(register=register)
        except UserError:
            raise
        except Exception as exc:  # a buggy plugin is reported, the others still register
            if info:
                info.error = f"{type(exc).__name__}: {exc}"
            log.warning("plugin %s failed to register: %s", impl.plugin_name, exc)

    def get(self, kind: str, name: str):
        table = self.tables[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none loaded"
            raise UserError(f"unknown {kind} {name!r} (known: {known})")
        return table[name]

    @property
    def methods(self) -> dict[str, Any]:
        return self.tables["method"]

    @property
    def targets(self) -> dict[str, Any]:
        return self.tables["target"]

    def method(self, name: str):
        return self.get("method", name)

    def target(self, name: str):
        return self.get("target", name)

    def model(self, name: str):
        return self.get("model", name)

    def dataset(self, name: str):
        return self.get("dataset", name)

    def fingerprint(self, obj) -> dict[str, str]:
        """Name, version and source hash of a registered method or target (part of its runs' ids)."""
        info = self.origin.get(id(obj))
        module = info.module if info else type(obj).__module__
        return {"name": obj.name, "version": obj.version, "source": source_hash(module.partition(":")[0])}


def disabled_from_env() -> set[str]:
    return {n.strip() for n in os.environ.get("MPQBENCH_DISABLE", "").split(",") if n.strip()}


def load_registry(disabled: set[str] | frozenset[str] | None = None) -> Registry:
    """Create the plugin manager, load every entry point of group ``mpqbench`` except ``disabled`` (and
    ``$MPQBENCH_DISABLE``), check that every hook implementation matches a hook specification (a misspelt
    ``mpqbench_`` hook is an error, not silence), and collect what they register. A plugin that fails to
    import is listed with its error and skipped; the rest still load."""
    from mpqbench.pipeline.instrument import Instrument, Meter

    disabled = set(disabled or ()) | disabled_from_env()
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    pm.register(Instrument(), name="core.stage")
    pm.register(Meter(), name="core.meter")
    plugins = []
    for ep in sorted(importlib.metadata.entry_points(group=GROUP), key=lambda e: e.name):
        if ep.name in disabled or pm.get_plugin(ep.name) is not None:
            continue
        dist = ep.dist
        info = PluginInfo(ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")
        plugins.append(info)
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # a broken third-party plugin must not take the others down
            info.error = f"{type(exc).__name__}: {exc}"
            log.warning("plugin %s failed to load: %s", ep.name, info.error)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise UserError(f"a plugin implements an unknown hook: {exc}") from None
    return Registry(pm, plugins)
