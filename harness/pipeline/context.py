"""RunContext: everything one run of one method can see, handed to every stage."""

from __future__ import annotations

import copy
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpqbench.cost.budget import Budget
from mpqbench.cost.model import CostModel
from mpqbench.data.splits import DataSplits
from mpqbench.plugin.objects import Method
from mpqbench.quant.layout import QuantLayout
from mpqbench.quant.model import QuantModel
from mpqbench.quant.policy import BitPolicy
from mpqbench.quant.quantizers import configure_lsq
from mpqbench.system.meter import measure
from mpqbench.train.loop import LossFn, Trainer
from mpqbench.train.losses import kd
from mpqbench.train.ptq import calibrate
from mpqbench.train.reconstruct import reconstruct
from mpqbench.train.recipe import Recipe


@dataclass
class RunContext:
    """One cell of the grid, ready to run.

    Methods read: ``params`` (their resolved parameters), ``data`` (train/val/calib/test splits; test is
    for reported accuracy only), ``layout`` and ``cost`` (the shared structure and cost model),
    ``budget`` (resolved to a number for this model, or None), ``fixed`` (layers whose bits the run pins,
    e.g. first/last at W8A8), ``seed``; they call :meth:`fp32_model`, :meth:`quant_model`,
    :meth:`trainer` / :meth:`finetune` and :meth:`kd`. The harness, not the method, checks the final
    policy against the budget.
    """

    spec: Any
    method: Method
    params: dict[str, Any]
    data: DataSplits
    recipe: Recipe
    seed: int
    """The seed of the stage being run: the run's seed, unless the recipe fixes ``search_seed`` (then that one
    while the method searches: in ``search`` and inside :meth:`searching`) or ``finetune_seed`` (while it
    trains)."""
    budget: Budget | None
    fixed: dict[str, tuple[int, int]]
    fp32: nn.Module
    layout: QuantLayout
    cost: CostModel
    registry: Any
    cache: Path
    device: torch.device = torch.device("cpu")
    """Where training runs; the FP32 model, exports and evaluation inputs stay on the CPU."""
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("mpqbench.run"))
    phases: dict[str, dict] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    """Method-specific facts worth keeping in the record (e.g. OMPQ's importance scores)."""
    trainers: dict[str, Trainer] = field(default_factory=dict)

    def fp32_model(self) -> nn.Module:
        """A private copy of the shared FP32 starting point, in eval mode."""
        return copy.deepcopy(self.fp32).eval()

    def quant_model(self, policy: BitPolicy) -> QuantModel:
        """A fake-quant copy of the FP32 model with ``policy`` applied (the recipe's activation quantizer)."""
        entry = self.registry.get("quantizer", self.recipe.act_quantizer)
        qmodel = QuantModel(self.fp32, self.layout, policy, act_quantizer=entry.build)
        configure_lsq(qmodel, self.recipe.lsq_grad, self.recipe.fake_quant)
        return qmodel

    def trainer(self, model: nn.Module, name: str = "finetune", *, epochs: int | None = None,
                lr: float | None = None) -> Trainer:
        """A Trainer with the shared fine-tune recipe (SGD for the weights), for a method to extend; its
        per-epoch loss parts go into the record under ``training[name]``. The recipe's LSQ gradient and
        eager/compiled form apply to every LSQ quantizer in ``model``, including a method's own."""
        r = self.recipe
        configure_lsq(model, r.lsq_grad, r.fake_quant)
        trainer = Trainer(model, self.data, epochs=r.qat_epochs if epochs is None else epochs,
                          lr=r.qat_lr if lr is None else lr, weight_decay=r.qat_wd, batch_size=r.batch_size,
                          momentum=r.momentum, seed=self.seed, device=self.device)
        self.trainers[name] = trainer
        return trainer

    def finetune(self, model: BitPolicy | QuantModel, *, epochs: int | None = None,
                 losses: dict[str, LossFn] | None = None) -> QuantModel:
        """The shared fine-tune recipe (LSQ QAT from the FP32 checkpoint), with optional extra loss terms. With
        zero epochs it is post-training quantization: the steps are calibrated on the calibration split by the
        recipe's ``ptq_init`` (:mod:`mpqbench.train.ptq`), never left to initialise on the first test batch, then,
        with ``ptq_reconstruct`` iterations, the weights' rounding is learned layer by layer
        (:mod:`mpqbench.train.reconstruct`)."""
        qmodel = self.quant_model(model) if isinstance(model, BitPolicy) else model
        trainer = self.trainer(qmodel, epochs=epochs)
        for name, fn in (losses or {}).items():
            trainer.add_loss(name, fn)
        if not qmodel.is_float:
            if trainer.epochs:
                trainer.fit()
            else:
                calibrate(qmodel.to(self.device), self.data.calib, self.recipe.ptq_init)
                if self.recipe.ptq_reconstruct:
                    with measure(self.phases, "train:reconstruct"):
                        self.extra["ptq_reconstruct"] = reconstruct(qmodel, self.fp32_model(), self.data.calib,
                                                                    self.recipe.ptq_reconstruct, self.seed)
        return qmodel.eval()

    def kd(self, temperature: float = 4.0) -> LossFn:
        """Distillation from this run's FP32 model (a loss term for :meth:`Trainer.add_loss`)."""
        teacher = self.fp32_model().to(self.device).to(memory_format=torch.channels_last)
        return kd(teacher, temperature)

    @contextmanager
    def measure(self, phase: str):
        """Time a sub-phase (e.g. a method's feature extraction) into the record's phase table."""
        with measure(self.phases, phase):
            yield

    @contextmanager
    def searching(self):
        """Book search work a method does inside ``train`` as search time (phase ``train:search``), under the
        search seed when the recipe fixes one (torch's generator forked, so the fine-tune's draws after it do
        not depend on the search seed)."""
        with measure(self.phases, "train:search"), self.seeded("search", fork=True):
            yield

    @contextmanager
    def seeded(self, stage: str, fork: bool = False):
        """Run ``stage`` (``search`` or ``train``) with :attr:`seed` and torch's global generator at that stage's
        seed when the recipe fixes a search or fine-tune seed (:meth:`Recipe.stage_seeds`); when it fixes neither,
        nothing is reseeded, so runs recorded before these fields existed replay exactly."""
        seeds = self.recipe.stage_seeds(self.spec.seed)
        if seeds is None:
            yield
            return
        outer = self.seed
        with torch.random.fork_rng(devices=[], enabled=fork):
            self.seed = seeds[0] if stage == "search" else seeds[1]
            torch.manual_seed(self.seed)
            try:
                yield
            finally:
                if fork:
                    self.seed = outer
