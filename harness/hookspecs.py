"""The one place where mpqbench's plugin hooks are specified.

Two kinds of hooks:

* registration hooks, called once at start-up with a ``register`` callback, through which a plugin adds
  methods, targets, models or data sets (each an object described in :mod:`mpqbench.api`);
* phase hooks, called once per run: bitwidth search, training and deployment. They are ``firstresult``
  hooks: the core answers them last by dispatching to the registered method or target, so a plugin may
  take over a phase, and cross-cutting concerns (timing, peak memory, logging) wrap them as hook wrappers.
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


@hookspec(firstresult=True)
def mpqbench_search(run):
    """Bitwidth search: return the run's :class:`mpqbench.policy.BitPolicy`."""


@hookspec(firstresult=True)
def mpqbench_train(run, policy):
    """Training: return the fine-tuned :class:`mpqbench.quant.model.QuantModel` (or an FP32 module)."""


@hookspec(firstresult=True)
def mpqbench_deploy(run, target, imodel, inputs):
    """Deployment: run the :class:`mpqbench.integer.model.IntegerModel` on ``target`` for the integer
    ``inputs`` and return a :class:`mpqbench.deploy.TargetReport`."""
