"""The objects plugins register (methods, targets, models, data sets) and what a target returns.

Plugin authors import them through :mod:`mpqbench.api`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from torch import nn

    from mpqbench.cost.model import CostModel
    from mpqbench.data.splits import DataSplits, ImageShape
    from mpqbench.integer.model import IntegerModel
    from mpqbench.pipeline.context import RunContext
    from mpqbench.pipeline.deploy import DeployContext
    from mpqbench.quant.graph import Point
    from mpqbench.quant.layout import QuantLayout
    from mpqbench.quant.policy import BitPolicy
    from mpqbench.quant.quantizers import Quantizer


class Method:
    """An MPQ method. Subclasses set ``name``/``version``/``params`` and implement :meth:`search`.

    The contract, in the order the core calls it: :meth:`check`, :meth:`units` and :meth:`smallest_policy`
    before any run (bad parameters and budgets the method can never meet are refused in one line), then per run
    :meth:`search` -> :meth:`train` -> :meth:`finalize`. ``train`` defaults to the shared fine-tune recipe
    (LSQ QAT from the common FP32 checkpoint), so a method that only searches bitwidths is compared on equal
    terms; methods that learn bitwidths while training override it (and book that time with
    ``run.searching()``). The policy recorded and checked against the budget is the one read back from the
    finalized model, not the one ``search`` returned.
    """

    name: str = ""
    version: str = "0"
    description: str = ""
    params: Mapping[str, Any] = {}

    def uses_budget(self, params: Mapping[str, Any]) -> bool:
        """Whether a run of this method needs a budget (and is repeated once per budget)."""
        return True

    def check(self, params: Mapping[str, Any]) -> None:
        """Raise :class:`mpqbench.errors.UserError` for parameter values no run could use (before any run)."""

    def units(self, params: Mapping[str, Any], layout: "QuantLayout") -> "QuantLayout":
        """The layout this method's runs use: the model's, or the method's own bit-sharing groups (e.g.
        HAWQ-V3 ties a residual downsample to its block's first conv where the model ties it to the second).
        Everything of the run, its preflight, search, fine-tune and the harness's policy checks, sees it."""
        return layout

    def smallest_policy(self, params: Mapping[str, Any], layout: "QuantLayout",
                        fixed: Mapping[str, tuple[int, int]]) -> "BitPolicy | None":
        """The cheapest policy the method can return with ``params`` (e.g. every unit at its lowest candidate
        bitwidth), so the sweep refuses a budget it can never meet before spending any time; None when the
        method can reach the core's own cheapest policy."""
        return None

    def search(self, run: "RunContext") -> "BitPolicy":
        raise NotImplementedError

    def train(self, run: "RunContext", policy: "BitPolicy") -> "nn.Module":
        return run.finetune(policy)

    def finalize(self, run: "RunContext", model: "nn.Module") -> "nn.Module":
        """Return a model with one uniform grid per quantized layer (the export refuses anything else). The
        default collapses every quantizer that is not a single grid (a bit mixture, a stochastic switch,
        gates) through its own ``collapse()``."""
        finalize = getattr(model, "finalize", None)
        return finalize() if finalize else model


class Target:
    """A hardware target. ``deploy`` runs an IntegerModel on integer inputs and returns a TargetReport."""

    name: str = ""
    version: str = "0"
    description: str = ""
    params: Mapping[str, Any] = {}
    headline: tuple[str, ...] = ()
    """Metric names shown in the leaderboard's block of columns for this target."""

    def unavailable(self, params: Mapping[str, Any] | None = None) -> str | None:
        """None when the target can run here with ``params``, else a one-line reason saying what is missing
        and how to install it (the sweep records it and goes on)."""
        return None

    def deploy(self, run: "DeployContext", imodel: "IntegerModel", inputs) -> "TargetReport":
        raise NotImplementedError


@dataclass(frozen=True)
class ModelEntry:
    """A model: ``build(shape)`` returns a fresh FP32 module; ``layout(module)`` its QuantLayout."""

    name: str
    build: Callable[[ImageShape], "nn.Module"]
    layout: Callable[["nn.Module"], "QuantLayout"]
    description: str = ""


@dataclass(frozen=True)
class DatasetEntry:
    """A data set: ``load(root, seed)`` returns fixed, seeded :class:`DataSplits` (uint8 images)."""

    name: str
    load: Callable[..., "DataSplits"]
    description: str = ""


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


@dataclass(eq=False)
class BudgetKind:
    """A budget unit: every kind is a sum over layers of ``layer_cost(cost, layer, w, a, params)`` (``w`` the
    layer's weight bits, ``a`` its input activation bits), which is what lets an integer program spend it
    layer by layer. ``params`` declares the kind's own parameters with defaults (written
    ``--budgets NAME:key=value=VALUE``, e.g. a target's preset), like a plugin's."""

    name: str
    unit: str
    layer_cost: Callable[["CostModel", str, int, int, Mapping[str, Any]], float]
    description: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Benchmark:
    """``mpqbench bench NAME [ARGS]``: ``run(args, registry)`` prints figures and returns an exit code."""

    name: str
    run: Callable[[list[str], Any], int]
    description: str = ""


@dataclass(frozen=True)
class QuantizerEntry:
    """An activation quantizer a recipe can name (``act_quantizer``): ``build(point, bits)``."""

    name: str
    build: Callable[["Point", int], "Quantizer"]
    description: str = ""


class Executor:
    """Runs jobs somewhere (this process, worker processes, a cluster) and hands their results back; only the
    driver writes them to the store.

    A job is a picklable callable that computes its result wherever it runs, loading what it needs itself
    (:mod:`mpqbench.pipeline.jobs`). :meth:`run` yields ``(index, result)`` as each job finishes, in any
    order; a job whose worker died (killed by a signal, out of memory) yields ``(index,
    mpqbench.errors.WorkerDied(reason))`` instead, and the executor carries on with the others. Closing the
    generator (the driver does on Ctrl-C) must cancel every job that has not started.
    """

    name: str = ""
    description: str = ""
    params: Mapping[str, Any] = {}

    def run(self, jobs: "list[Callable[[], Any]]", workers: int, params: Mapping[str, Any],
            on_start: "Callable[[int], None] | None" = None):
        """Yield ``(index, result)`` per job as it finishes (a job's own exception is its result); call
        ``on_start(index)`` when a job starts, for the progress display."""
        raise NotImplementedError
