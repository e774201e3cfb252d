"""RunContext: everything one run of one method can see, handed to every phase hook."""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy
import torch
from torch import nn

from mpqbench.api import Method
from mpqbench.budget import Budget
from mpqbench.cost import CostModel
from mpqbench.data.splits import DataSplits
from mpqbench.meter import measure
from mpqbench.models.layout import QuantLayout
from mpqbench.policy import BitPolicy
from mpqbench.quant.model import QuantModel
from mpqbench.recipe import Recipe
from mpqbench.train import fit


@dataclass
class RunContext:
    """One cell of the grid, ready to run.

    Methods read: ``params`` (their resolved parameters), ``data`` (train/val/calib/test splits; test is
    for reported accuracy only), ``layout`` and ``cost`` (the shared structure and cost model),
    ``budget`` (resolved to a number for this model, or None), ``fixed`` (layers whose bits the run pins,
    e.g. first/last at W8A8), ``seed``; they call :meth:`fp32_model`, :meth:`quant_model` and
    :meth:`finetune`. The harness, not the method, checks the final policy against the budget.
    """

    spec: Any
    method: Method
    params: dict[str, Any]
    data: DataSplits
    recipe: Recipe
    seed: int
    budget: Budget | None
    fixed: dict[str, tuple[int, int]]
    fp32: nn.Module
    layout: QuantLayout
    cost: CostModel
    hook: pluggy.HookRelay
    cache: Path
    device: torch.device = torch.device("cpu")
    """Where training runs; the FP32 model, exports and evaluation inputs stay on the CPU."""
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("mpqbench.run"))
    phases: dict[str, dict] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Method-specific facts worth keeping in the record (e.g. OMPQ's importance scores)."""

    def fp32_model(self) -> nn.Module:
        """A private copy of the shared FP32 starting point, in eval mode."""
        return copy.deepcopy(self.fp32).eval()

    def quant_model(self, policy: BitPolicy) -> QuantModel:
        """A fake-quant copy of the FP32 model with ``policy`` applied (the recipe's quantizers)."""
        return QuantModel(self.fp32, self.layout, policy, act_quantizer=self.recipe.act_quantizer)

    def finetune(self, model: BitPolicy | QuantModel, *, loss_fn: Callable | None = None,
                 step_hook: Callable[[int, int], None] | None = None, epochs: int | None = None) -> QuantModel:
        """The shared fine-tune recipe (LSQ QAT from the FP32 checkpoint). A method may pass its own
        QuantModel (custom quantizers), loss (regularisers) or per-step hook (bitwidth changes)."""
        qmodel = self.quant_model(model) if isinstance(model, BitPolicy) else model
        epochs = self.recipe.qat_epochs if epochs is None else epochs
        if epochs and not qmodel.is_float:
            fit(qmodel, self.data, epochs=epochs, lr=self.recipe.qat_lr, weight_decay=self.recipe.qat_wd,
                batch_size=self.recipe.batch_size, momentum=self.recipe.momentum, seed=self.seed,
                device=self.device, loss_fn=loss_fn, step_hook=step_hook)
        return qmodel.eval()

    @contextmanager
    def measure(self, phase: str):
        """Time a sub-phase (e.g. a method's feature extraction) into the record's phase table."""
        with measure(self.phases, phase):
            yield
