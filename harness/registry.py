"""Loading plugins (entry-point group ``mpqbench``) and the registry of what they provide."""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from mpqbench import hookspecs
from mpqbench.api import DatasetEntry, Method, ModelEntry, Target
from mpqbench.errors import UserError
from mpqbench.phases import Dispatch, Instrument

log = logging.getLogger("mpqbench.registry")
GROUP = "mpqbench"
SOURCE_SUFFIXES = {".py", ".c", ".h", ".S"}


@dataclass
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str
    provides: list[str] = field(default_factory=list)
    error: str | None = None


def source_hash(obj: Any) -> str:
    """sha256 of the source files of the package (folder) defining ``obj``'s class or module, so a run's
    id changes whenever the code that produced it does."""
    module = inspect.getmodule(obj if inspect.ismodule(obj) else type(obj))
    folder = Path(inspect.getfile(module)).parent
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class Registry:
    """Methods, targets, models and data sets by name, each remembered with the plugin that gave it."""

    def __init__(self, pm: pluggy.PluginManager, plugins: list[PluginInfo]):
        self.pm = pm
        self.plugins = plugins
        self.methods: dict[str, Method] = {}
        self.targets: dict[str, Target] = {}
        self.models: dict[str, ModelEntry] = {}
        self.datasets: dict[str, DatasetEntry] = {}
        by_name = {p.name: p for p in plugins}
        for kind, table, hook in (
            ("method", self.methods, pm.hook.mpqbench_register_methods),
            ("target", self.targets, pm.hook.mpqbench_register_targets),
            ("model", self.models, pm.hook.mpqbench_register_models),
            ("dataset", self.datasets, pm.hook.mpqbench_register_datasets),
        ):
            for impl in hook.get_hookimpls():
                info = by_name.get(impl.plugin_name)

                def register(obj, kind=kind, table=table, info=info):
                    if not getattr(obj, "name", ""):
                        raise UserError(f"plugin {info.name if info else '?'} registered a {kind} without a name")
                    if obj.name in table:
                        raise UserError(f"two plugins register a {kind} named {obj.name!r}")
                    table[obj.name] = obj
                    if info:
                        info.provides.append(f"{kind} {obj.name}")

                try:
                    impl.function(register=register)
                except UserError:
                    raise
                except Exception as exc:  # a buggy plugin is reported, the others still register
                    if info:
                        info.error = f"{type(exc).__name__}: {exc}"
                    log.warning("plugin %s failed to register: %s", impl.plugin_name, exc)

    def _get(self, table: dict, kind: str, name: str):
        if name not in table:
            known = ", ".join(sorted(table)) or "none loaded"
            raise UserError(f"unknown {kind} {name!r} (known: {known})")
        return table[name]

    def method(self, name: str) -> Method:
        return self._get(self.methods, "method", name)

    def target(self, name: str) -> Target:
        return self._get(self.targets, "target", name)

    def model(self, name: str) -> ModelEntry:
        return self._get(self.models, "model", name)

    def dataset(self, name: str) -> DatasetEntry:
        return self._get(self.datasets, "dataset", name)


def disabled_from_env() -> set[str]:
    return {n.strip() for n in os.environ.get("MPQBENCH_DISABLE", "").split(",") if n.strip()}


def load_registry(disabled: set[str] | None = None) -> Registry:
    """Create the plugin manager, load every entry point of group ``mpqbench`` except ``disabled`` (and
    ``$MPQBENCH_DISABLE``), and collect what they register. A plugin that fails to import is listed
    with its error and skipped; the rest still load."""
    disabled = set(disabled or ()) | disabled_from_env()
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    pm.register(Dispatch(), name="core.dispatch")
    pm.register(Instrument(), name="core.instrument")
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
    return Registry(pm, plugins)
