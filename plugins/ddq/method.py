"""The ``ddq`` method: learn bits, range and levels under a resource penalty, repair to the budget, fine-tune.

The stages and every parameter are described in the package docstring (:mod:`mpqbench.plugins.ddq`).
"""

from __future__ import annotations

from typing import Any

import torch

from mpqbench.api import Method
from mpqbench.cost.allocation import lowest_policy, searched_units, unit_policy
from mpqbench.errors import UserError
from mpqbench.plugin.params import Choice
from mpqbench.plugins.ddq.losses import PENALTY_FORMS, CostTerm, ResourcePenalty, repair, repair_acts
from mpqbench.plugins.ddq.quantizer import GATE_ESTIMATORS, GRAD_CORRECTIONS, RANGE_GRADS, DDQQuantizer
from mpqbench.plugins.ddq.search_model import SearchModel, build
from mpqbench.quant.model import QuantModel
from mpqbench.quant.policy import MAX_BITS, MIN_BITS, BitPolicy

_QUANTIZER_KEYS = ("max_bits", "min_bits", "monotone", "gate_estimator", "temperature", "gate_init", "learn_levels",
                   "grad_correction", "range_grad")


def _round(x: float) -> float:
    return round(float(x), 4)


class DDQ(Method):
    name = "ddq"
    version = "1"
    description = ("differentiable dynamic quantization: gated, learned bits, range and levels under a cost "
                   "penalty, repaired to the budget (Zhang et al. 2021)")
    params = {
        "variant": Choice("mixed", "fixed"),
        "levels": Choice("uniform", "learned"),
        "act": Choice("fixed", "learned"),
        "a": None,
        "min_bits": MIN_BITS,
        "max_bits": MAX_BITS,
        "search_epochs": None,
        "penalty": Choice(*PENALTY_FORMS),
        "penalty_cost": Choice("hard", "expected"),
        "lam": 1.0,
        "warmup": 0.1,
        "lr": 1e-3,
        "gate_lr": 0.05,
        "gate_optimizer": Choice("adam", "sgd"),
        "gate_init": 3.0,
        "gate_start": Choice("graded", "flat"),
        "temperature": 1.0,
        "gate_estimator": Choice(*GATE_ESTIMATORS),
        "monotone": True,
        "grad_correction": Choice(*GRAD_CORRECTIONS),
        "learn_levels": True,
        "w_range_init": 1.0,
        "a_range_init": 0.999,
        "range_grad": Choice(*RANGE_GRADS),
        "scores": Choice("map", "marginal"),
        "frac_bits": 8,
    }

    # ----- before any run ---------------------------------------------------------------------------------

    def check(self, params) -> None:
        lo, hi = params["min_bits"], params["max_bits"]
        if not MIN_BITS <= lo <= hi <= MAX_BITS:
            raise UserError(f"ddq: need {MIN_BITS} <= min_bits ({lo}) <= max_bits ({hi}) <= {MAX_BITS}")
        a = params["a"]
        if a is not None and (a != int(a) or not lo <= a <= hi):
            raise UserError(f"ddq: a={a} is not a bitwidth in [min_bits, max_bits] = [{lo}, {hi}]")
        if params["variant"] == "fixed" and params["act"] == "learned":
            raise UserError("ddq: variant=fixed freezes every gate, so act=learned has no effect (drop one)")
        epochs = params["search_epochs"]
        if epochs is not None and (epochs != int(epochs) or epochs < 0):
            raise UserError(f"ddq: search_epochs={epochs} must be a whole number >= 0 (or none: the recipe's)")
        positive = ("lr", "gate_lr", "gate_init", "temperature")
        for key in positive:
            if not params[key] > 0:
                raise UserError(f"ddq: {key}={params[key]} must be positive")
        if not params["lam"] >= 0 or not 0 <= params["warmup"] <= 1:
            raise UserError(f"ddq: need lam >= 0 ({params['lam']}) and warmup in [0, 1] ({params['warmup']})")
        for key in ("w_range_init", "a_range_init"):
            if not 0 < params[key] <= 1:
                raise UserError(f"ddq: {key}={params[key]} is a quantile in (0, 1]")
        if not 0 <= params["frac_bits"] <= 16:
            raise UserError(f"ddq: frac_bits={params['frac_bits']} is outside [0, 16]")

    def smallest_policy(self, params, layout, fixed):
        low = params["min_bits"]
        act = low if params["act"] == "learned" or params["a"] is None else int(params["a"])
        return lowest_policy(layout, fixed, [low], act)

    # ----- per run ----------------------------------------------------------------------------------------

    def search(self, run) -> BitPolicy:
        """The starting policy: every gate open (``max_bits``; activations at ``a`` unless learned), or for
        ``variant=fixed`` the uniform policy its frozen gates hold."""
        p = run.params
        w_fixed, a = self._uniform(run)
        units = searched_units(run.layout, run.fixed)
        if p["variant"] == "fixed":
            return unit_policy(run.layout, run.fixed, {u: w_fixed for u in units}, a)
        act = p["max_bits"] if p["act"] == "learned" else a
        return unit_policy(run.layout, run.fixed, {u: p["max_bits"] for u in units}, act)

    def train(self, run, policy: BitPolicy) -> QuantModel:
        p = run.params
        record: dict[str, Any] = {}
        run.extra["ddq"] = record
        with run.searching():
            sm = self._learn(run, policy, record)
            if p["variant"] == "mixed":
                self._repair(run, sm, record)
        qmodel = sm.model
        for point, q in sm.acts.items():
            qmodel.set_act_quantizer(point, q.collapse())
        if p["levels"] == "uniform":
            for layer, q in sm.weights.items():
                qmodel.set_weight_quantizer(layer, q.collapse())
            return run.finetune(qmodel)
        trainer = run.trainer(qmodel, name="finetune")
        params = sm.level_range_params(weights_only=True)
        if params:
            trainer.add_optimizer("ddq", params, optimizer="adam", lr=p["lr"])
        if trainer.epochs:
            trainer.fit()
        return qmodel.eval()

    def finalize(self, run, model):
        """``levels=learned``: weight levels snapped to ``frac_bits`` fixed point and kept (exported as level
        tables); everything else collapses to the core's LSQ grids as usual."""
        if run.params["levels"] != "learned":
            return super().finalize(run, model)
        tables = {}
        for name, layer in model.layers().items():
            q = layer.weight_quantizer
            if isinstance(q, DDQQuantizer):
                q.snap_levels(run.params["frac_bits"])
                tables[name] = {"bits": q.bits, "levels": q.level_table().levels.tolist(),
                                "nonuniformity": _round(q.nonuniformity())}
        for name, act in model.points().items():
            if not act.quantizer.single_grid:
                model.set_act_quantizer(name, act.quantizer.collapse())
        run.extra.setdefault("ddq", {})["level_tables"] = tables
        return model

    # ----- stages -----------------------------------------------------------------------------------------

    def _uniform(self, run) -> tuple[int, int]:
        """(weight bits of the fixed variant, activation bits): the largest uniform bitwidth meeting the budget
        (activations equal to it, as the ``uniform`` baseline's row), ``a`` when given."""
        if run.budget is None:
            raise UserError("ddq needs a budget (pass --budgets KIND=VALUE)")
        p = run.params
        units = searched_units(run.layout, run.fixed)

        def largest(act: int | None) -> int:
            for b in range(p["max_bits"], p["min_bits"] - 1, -1):
                if run.budget.met(run.cost, unit_policy(run.layout, run.fixed, {u: b for u in units}, act or b)):
                    return b
            raise UserError(f"ddq: no uniform bitwidth in [{p['min_bits']}, {p['max_bits']}] meets budget "
                            f"{run.budget.text}")

        a = int(p["a"]) if p["a"] is not None else largest(None)
        return largest(a), a

    def _learn(self, run, policy: BitPolicy, record: dict) -> SearchModel:
        """Build the DDQ model from ``policy`` and train weights, levels, ranges and gates jointly."""
        p = run.params
        mixed = p["variant"] == "mixed"
        learn_acts = mixed and p["act"] == "learned"
        _, a = self._uniform(run)
        if learn_acts and _counts_activations(run):
            raise UserError(f"ddq: act=learned needs a budget that counts weight bits only (size_mb, avg_bits); "
                            f"{run.budget.kind.name} counts activation bits: use act=fixed")
        common = {k: p[k] for k in _QUANTIZER_KEYS}
        unit = searched_units(run.layout, run.fixed)[0]
        start_w = policy[unit].w
        sm = build(run.quant_model(policy), run.fixed, weight_kwargs={**common, "range_init": p["w_range_init"]},
                   act_kwargs={**common, "range_init": p["a_range_init"]}, weight_bits=start_w,
                   act_bits=p["max_bits"] if learn_acts else a, freeze_weights=not mixed, freeze_acts=not learn_acts,
                   graded=p["gate_start"] == "graded")
        epochs = run.recipe.qat_epochs if p["search_epochs"] is None else int(p["search_epochs"])
        trainer = run.trainer(sm.model, name="search", epochs=epochs)
        trainer.add_optimizer("ddq", sm.level_range_params(), optimizer="adam", lr=p["lr"])
        gates = sm.gate_params()
        if gates:
            trainer.add_optimizer("ddq_gates", gates, optimizer=p["gate_optimizer"], lr=p["gate_lr"])
        per_epoch = max(1, len(run.data.train) // run.recipe.batch_size)
        warmup = round(p["warmup"] * epochs * per_epoch)
        penalties = {}
        if mixed:
            penalties["cost"] = ResourcePenalty.from_layer_cost(
                run.layout.layers, lambda layer, w, act: run.budget.layer_cost(run.cost, layer, w, act),
                {layer: sm.weight_source(layer) for layer in run.layout.layers},
                {layer: sm.act_source(layer) for layer in run.layout.layers}, run.budget.value,
                form=p["penalty"], weight=p["lam"], warmup=warmup, cost=p["penalty_cost"])
        if learn_acts:
            layers = sm.act_layers()
            penalties["act_bits"] = ResourcePenalty(
                [CostTerm(layer, MAX_BITS, sm.act_source(layer), lambda w, act: float(act)) for layer in layers],
                a * len(layers), form=p["penalty"], weight=p["lam"], warmup=warmup, cost=p["penalty_cost"])
        for name, penalty in penalties.items():
            trainer.add_loss(name, penalty)
        trajectory: list[dict[str, int]] = []

        def log_bits(state) -> None:
            if state.step % per_epoch == 0:
                trajectory.append({u: q.bits for u, q in sm.units.items()})

        trainer.on_step(log_bits)
        if epochs:
            trainer.fit()
        record.update(
            variant=p["variant"], act_bits=a, search_epochs=epochs,
            bits_per_epoch=trajectory,
            trained_bits={u: q.bits for u, q in sm.units.items()},
            trained_act_bits={g: sm.acts[g].bits for g in sm.act_groups},
            open_probs={u: [_round(v) for v in q.open_probs().tolist()] for u, q in sm.units.items()},
            **{f"{name}_expected_ratio": _round(pen.expected().item() / pen.budget) for name, pen in penalties.items()},
            **{f"{name}_trained_ratio": _round(pen.hard() / pen.budget) for name, pen in penalties.items()},
        )
        return sm

    def _repair(self, run, sm: SearchModel, record: dict) -> None:
        """Freeze the gates at the most probable setting that meets the budget (the core's integer program
        over the gate scores; activations, when learned, by :func:`repair_acts`)."""
        p = run.params
        candidates = range(p["min_bits"], p["max_bits"] + 1)
        _, a = self._uniform(run)
        with torch.no_grad():
            allocation = repair(run.layout, run.cost, run.budget, run.fixed, sm.units, candidates, a, kind=p["scores"])
            act_bits = {}
            if p["act"] == "learned":
                groups = {g: (sm.acts[g], sm.group_readers(g)) for g in sm.act_groups}
                act_bits = repair_acts(groups, a, candidates, p["scores"])
        for unit, bits in allocation.bits.items():
            for layer in sm.unit_layers[unit]:
                sm.weights[layer].freeze(bits)
        for group, bits in act_bits.items():
            for point in sm.act_groups[group]:
                sm.acts[point].freeze(bits)
        trained = record["trained_bits"]
        record.update(repair=allocation.record(), repaired_bits=dict(allocation.bits), repaired_act_bits=act_bits,
                      units_changed=sorted(u for u, b in allocation.bits.items() if trained[u] != b))


def _counts_activations(run) -> bool:
    """Whether the run's budget kind charges activation bits (then the penalty and program cover them)."""
    return any(run.budget.layer_cost(run.cost, layer, MAX_BITS, MIN_BITS)
               != run.budget.layer_cost(run.cost, layer, MAX_BITS, MAX_BITS) for layer in run.layout.layers)

