"""The one place where mpqbench's plugin hooks are specified (marker ``mpqbench``, every hook prefixed
``mpqbench_``; ``hookimpl`` is re-exported from :mod:`mpqbench.api`).

Two kinds of hooks, and only two:

* **registration** hooks, called once at start-up with a ``register`` callback, through which a plugin adds
  methods, targets, models, data sets, budget kinds, benchmarks, executors or quantizers;
* one **cross-cutting** hook, :func:`mpqbench_stage`, that every stage of every run goes through, so timing,
  peak memory, logging or caching wrap all stages at once (``hookimpl(wrapper=True)``).

What a method or a target *does* is its object's contract (:class:`mpqbench.api.Method`,
:class:`mpqbench.api.Target`), not a hook: phase hooks that any plugin could take over applied to every
method of a sweep at once, with nothing scoping a takeover to the method it was written for.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("mpqbench")
hookimpl = pluggy.HookimplMarker("mpqbench")


@hookspec
def mpqbench_register_methods(register):
    """Register MPQ methods: call ``register(method)`` with an :class:`mpqbench.api.Method` per method."""


@hookspec
def mpqbench_register_targets(register):
    """Register hardware targets: ``register(target)`` with an :class:`mpqbench.api.Target`."""


@hookspec
def mpqbench_register_models(register):
    """Register models: ``register(entry)`` with an :class:`mpqbench.api.ModelEntry`."""


@hookspec
def mpqbench_register_datasets(register):
    """Register data sets: ``register(entry)`` with an :class:`mpqbench.api.DatasetEntry`."""


@hookspec
def mpqbench_register_budget_kinds(register):
    """Register budget kinds: ``register(kind)`` with an :class:`mpqbench.api.BudgetKind` (a per-layer cost in
    some unit, e.g. a target's latency), usable as ``--budgets NAME=VALUE``."""


@hookspec
def mpqbench_register_benchmarks(register):
    """Register benchmarks: ``register(bench)`` with an :class:`mpqbench.api.Benchmark`, run by
    ``mpqbench bench NAME``."""


@hookspec
def mpqbench_register_executors(register):
    """Register executors: ``register(executor)`` with an :class:`mpqbench.api.Executor`, chosen by
    ``mpqbench run --executor NAME``."""


@hookspec
def mpqbench_register_quantizers(register):
    """Register activation quantizers: ``register(entry)`` with an :class:`mpqbench.api.QuantizerEntry`
    (``build(point, bits) -> Quantizer``), selectable by a recipe's ``act_quantizer``."""


@hookspec(firstresult=True)
def mpqbench_stage(run, stage, call):
    """Run one stage of a run (``search``, ``train``, ``finalize``, ``evaluate``, ``export``,
    ``integer_eval``, ``deploy:<target>``): the core answers last by returning ``call()``; wrappers see
    ``run`` (the :class:`mpqbench.pipeline.context.RunContext`) and the stage's name."""
