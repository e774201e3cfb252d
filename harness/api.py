"""What plugin authors import: the objects plugins register (methods, targets, models, data sets, budget
kinds, benchmarks, executors, quantizers), what a target returns (:class:`Metric`, :class:`TargetReport`),
:class:`BitPolicy`, the errors a plugin raises, and ``hookimpl``.

A plugin module implements one of the registration hooks of :mod:`mpqbench.plugin.hookspecs` and calls
``register`` with instances of these classes. Parameters are declared with their defaults; the user
overrides them per run (``--methods ompq:beta=1``), they are part of the run's id, and the leaderboard
labels rows with every parameter that differs from its default.
"""

from mpqbench.data.splits import ImageShape
from mpqbench.errors import Unavailable, UserError, WorkerDied
from mpqbench.plugin.allocating import AllocationMethod
from mpqbench.plugin.hookspecs import hookimpl
from mpqbench.plugin.objects import (
                                     Benchmark,
                                     BudgetKind,
                                     DatasetEntry,
                                     Executor,
                                     Method,
                                     Metric,
                                     ModelEntry,
                                     QuantizerEntry,
                                     Target,
                                     TargetReport,
)
from mpqbench.quant.policy import BitPolicy

__all__ = ["AllocationMethod", "Benchmark", "BitPolicy", "BudgetKind", "DatasetEntry", "Executor", "ImageShape",
           "Method", "Metric", "ModelEntry", "QuantizerEntry", "Target", "TargetReport", "Unavailable", "UserError",
           "WorkerDied", "hookimpl"]
