"""The objects plugins register: methods, targets, models and data sets.

A plugin module implements one of the registration hooks of :mod:`mpqbench.hookspecs` and calls
``register`` with instances of these classes. Parameters are declared with their defaults; the user
overrides them per run (``--methods ompq:beta=1``), they are part of the run's id, and the leaderboard
labels rows with every parameter that differs from its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    from torch import nn

    from mpqbench.context import RunContext
    from mpqbench.data.splits import DataSplits
    from mpqbench.deploy import TargetReport
    from mpqbench.integer.model import IntegerModel
    from mpqbench.models.layout import QuantLayout
    from mpqbench.policy import BitPolicy


class Method:
    """An MPQ method. Subclasses set ``name``/``version``/``params`` and implement :meth:`search`.

    ``train`` defaults to the shared fine-tune recipe (LSQ QAT from the common FP32 checkpoint), so a
    method that only searches bitwidths is compared on equal terms; methods that learn bitwidths while
    training override it.
    """

    name: str = ""
    version: str = "0"
    description: str = ""
    params: Mapping[str, Any] = {}

    def uses_budget(self, params: Mapping[str, Any]) -> bool:
        """Whether a run of this method needs a budget (and is repeated once per budget)."""
        return True

    def search(self, run: "RunContext") -> "BitPolicy":
        raise NotImplementedError

    def train(self, run: "RunContext", policy: "BitPolicy") -> "nn.Module":
        return run.finetune(policy)


class Target:
    """A hardware target. ``deploy`` runs an IntegerModel on integer inputs and returns a TargetReport."""

    name: str = ""
    version: str = "0"
    description: str = ""
    params: Mapping[str, Any] = {}
    headline: tuple[str, ...] = ()
    """Metric names shown in the leaderboard's block of columns for this target."""

    def unavailable(self) -> str | None:
        """None when the target can run here, else a one-line reason (the sweep records it and goes on)."""
        return None

    def deploy(self, run: "RunContext", imodel: "IntegerModel", inputs) -> "TargetReport":
        raise NotImplementedError


@dataclass(frozen=True)
class ImageShape:
    channels: int
    size: int
    classes: int


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
