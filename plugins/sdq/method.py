"""SDQ as a harness method: stage 1 (DBP search) and stage 2 (KD + EBR fine-tune) inside ``train``.

``search`` returns the starting policy (every searched unit at the top candidate, activations at ``a``): the
bitwidths are learned while training, so the search proper runs in ``train`` and is booked as search time
(phase ``train:search``).

**Stage 1** (``run.trainer(..., name="search")``): a ``QuantModel`` at the starting policy, an
:class:`~mpqbench.plugins.sdq.quantizer.SDQQuantizer` on every searched layer with one gate per unit; the DBPs
in their own optimizer (``dbp_optimizer``, Adam by default, ``dbp_lr``, stepped with the weights on training
batches); the loss ``ce + lambda_b * budget`` with the budget regulariser on the expected cost in the run's
budget unit (each layer's cost at its read-back activation bits, the pinned layers a constant, so at beta = 1
it equals the harness's own measure of the starting policy); bit decay and the step's draw through
``on_step``. The stage ends with the units' levels if they meet the budget, else the integer program's repair
(:mod:`.repair`); the gates are set to it and the model is collapsed to LSQ quantizers, each keeping the step it
learned at its final bitwidth.

**Stage 2** (``run.trainer(..., name="finetune")``): the fixed policy, loss ``ce * ce + kd * KD(T=kd_t) +
ebr * EBR``; ``kd=0`` / ``ebr=0`` drop a term (it is then absent from the history), ``ce=0`` gives the
paper's KD + lambda_E * EBR without the label term (whether SDQ keeps it is not known). The FP32 teacher is the
run's own checkpoint (the paper's stronger ResNet-101 teacher is not reproduced).

Epochs: ``search_epochs`` and ``finetune_epochs`` default to the recipe's fine-tune epochs each, so SDQ trains
twice as long as the shared fine-tune; set ``search_epochs`` to compare at equal total epochs.

``run.extra["sdq"]``: units, candidates, expected cost at the start and the end of stage 1, every bit decay
(``[step, unit, new bits]``), the final DBPs, and the repair (search levels, final bits, whether the integer
program was needed).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mpqbench.api import Method, UserError
from mpqbench.cost.allocation import check_bits, lowest_policy, searched_units, unit_policy
from mpqbench.cost.expected import model_penalty
from mpqbench.plugin.params import Choice
from mpqbench.plugins.sdq.losses import PENALTY_FORMS, WEIGHTINGS, ebr_term
from mpqbench.plugins.sdq.quantizer import ESTIMATORS, MODES, DBPGate, attach, dbp_record, layer_gates, step_all
from mpqbench.plugins.sdq.repair import apply, final_policy


def expected_cost_term(run, model, layer_dists, form: str):
    """The run's budget penalty on ``layer_dists`` (searched layer -> distribution), from the core."""
    return model_penalty(run.budget, run.cost, model, layer_dists, form)


class SDQ(Method):
    name = "sdq"
    version = "1"
    description = ("SDQ (Huang et al. 2022): stochastic switching between adjacent bitwidths learned by DBPs with "
                   "bit decay, then KD + entropy-aware bin regularisation")
    params = {
        "candidates": (2, 3, 4, 5, 6, 7, 8), "a": 8,
        "search_epochs": None, "search_lr": None, "finetune_epochs": None,
        "mode": Choice(*MODES), "estimator": Choice(*ESTIMATORS), "tau": 1.0, "clip": 0.01,
        "init": 1.0, "threshold": 0.5,
        "dbp_optimizer": Choice("adam", "sgd"), "dbp_lr": 0.02,
        "lambda_b": 1.0, "penalty": Choice(*PENALTY_FORMS),
        "ce": 1.0, "kd": 1.0, "kd_t": 4.0, "ebr": 0.1, "ebr_weighting": Choice(*WEIGHTINGS),
    }

    def check(self, params) -> None:
        candidates = check_bits(self.name, params["candidates"], params["a"])
        if len(candidates) < 2:
            raise UserError("sdq: candidates need at least two bitwidths to search between")
        DBPGate(candidates, init=params["init"], threshold=params["threshold"], mode=params["mode"],
                estimator=params["estimator"], tau=params["tau"], clip=params["clip"])
        for key in ("search_epochs", "finetune_epochs"):
            if params[key] is not None and (params[key] != int(params[key]) or params[key] < 0):
                raise UserError(f"sdq: {key}={params[key]} must be a whole number >= 0")
        if params["search_lr"] is not None and not params["search_lr"] > 0:
            raise UserError(f"sdq: search_lr={params['search_lr']} must be > 0")
        for key in ("dbp_lr", "kd_t"):
            if not params[key] > 0:
                raise UserError(f"sdq: {key}={params[key]} must be > 0")
        for key in ("lambda_b", "ce", "kd", "ebr"):
            if not params[key] >= 0:
                raise UserError(f"sdq: {key}={params[key]} must be >= 0")
        if params["ce"] == 0 and params["kd"] == 0:
            raise UserError("sdq: ce=0 and kd=0 leave stage 2 without a task loss")

    def smallest_policy(self, params, layout, fixed):
        return lowest_policy(layout, fixed, params["candidates"], params["a"])

    def search(self, run):
        p = run.params
        if run.budget is None:
            raise UserError("sdq needs a budget (pass --budgets KIND=VALUE)")
        top = max(p["candidates"])
        return unit_policy(run.layout, run.fixed, {u: top for u in searched_units(run.layout, run.fixed)}, p["a"])

    def train(self, run, policy):
        with run.searching():
            model = self.stage1(run, policy)
        return self.stage2(run, model)

    def stage1(self, run, policy):
        """The DBP search; returns the model collapsed to LSQ quantizers at the (repaired) final policy."""
        p = run.params
        model = run.quant_model(policy)
        gates = attach(model, run.fixed, p["candidates"], init=p["init"], threshold=p["threshold"], mode=p["mode"],
                       estimator=p["estimator"], tau=p["tau"], clip=p["clip"],
                       generator=torch.Generator().manual_seed(run.seed))
        regulariser = expected_cost_term(run, model, layer_gates(model), p["penalty"])
        record = run.extra["sdq"] = {"units": list(gates), "candidates": list(gates[next(iter(gates))].candidates),
                                     "expected_start": regulariser.expected().item(), "decays": []}
        epochs = run.recipe.qat_epochs if p["search_epochs"] is None else int(p["search_epochs"])
        trainer = run.trainer(model, name="search", epochs=epochs, lr=p["search_lr"])
        trainer.add_optimizer("dbp", [g.dbp for g in gates.values()], optimizer=p["dbp_optimizer"], lr=p["dbp_lr"])
        if p["lambda_b"] > 0:
            trainer.add_loss("budget", regulariser, weight=p["lambda_b"])

        total = {"steps": 0}

        def decay(state):
            total["steps"] = state.total
            for unit in step_all(gates):
                record["decays"].append([state.step, unit, gates[unit].bits])

        trainer.on_step(decay)
        if epochs:
            trainer.fit()
        for unit, gate in gates.items():  # the DBPs' last update, not yet seen by a decay
            if gate.decay():
                record["decays"].append([total["steps"], unit, gate.bits])
        record["expected_end"] = regulariser.expected().item()
        record["dbp"] = dbp_record(gates)
        repair = final_policy(run.layout, run.cost, run.budget, run.fixed, gates, p["a"])
        record["repair"] = repair.record()
        apply(gates, repair.bits)
        return model.finalize()

    def stage2(self, run, model):
        """Fine-tune the fixed policy with KD and EBR (each switchable)."""
        p = run.params
        epochs = run.recipe.qat_epochs if p["finetune_epochs"] is None else int(p["finetune_epochs"])
        trainer = run.trainer(model, name="finetune", epochs=epochs)
        if p["ce"] == 0:
            trainer.remove_loss("ce")
        elif p["ce"] != 1.0:
            trainer.add_loss("ce", lambda state: F.cross_entropy(state.logits, state.y), weight=p["ce"])
        if p["kd"] > 0:
            trainer.add_loss("kd", run.kd(p["kd_t"]), weight=p["kd"])
        if p["ebr"] > 0:
            trainer.add_loss("ebr", ebr_term(p["ebr_weighting"]), weight=p["ebr"])
        if epochs:
            trainer.fit()
        return model.eval()
