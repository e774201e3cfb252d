"""DFQ-diff as a harness method: the relaxed search inside ``train``, then the shared fine-tune.

``search`` returns the starting policy (every searched unit at the top candidate, activations at ``a``); the
bitwidths are learned while training, so the search runs in ``train`` and is booked as search time (phase
``train:search``).

**Search** (``run.trainer(..., name="search")``): a ``QuantModel`` with a
:class:`~mpqbench.plugins.dfq.quantizer.DFQQuantizer` (softmax mixture over the candidates) on every searched
layer, one set of logits per unit; the loss ``ce + lambda_c * cost`` with the expected cost in the run's
budget unit (each layer's cost at its read-back activation bits, the pinned layers a constant); the logits in
their own Adam optimizer (``logit_lr``). ``update=bilevel`` (default) steps them on a validation batch after
every ``every`` training steps, the weights on training batches only (first-order DARTS: no unrolled weight
step); ``update=joint`` steps both on the same training batch. The validation batches run in training mode
(BN batch statistics, and BN running averages see them), as in DARTS. The softmax temperature follows
:class:`~mpqbench.plugins.dfq.quantizer.Anneal` over the search steps (``t_start`` -> ``t_end``, ``anneal``).

**Discretisation**: argmax per unit, repaired by the integer program over the final logits when it misses the
budget (:mod:`.discretise`); the logits are fixed there and the model collapsed to LSQ quantizers, each with the
step it learned at its bitwidth. **Fine-tune**: the shared recipe (``run.finetune``, history ``finetune``),
``finetune_epochs`` (default the recipe's).

``run.extra["dfq-diff"]``: units, candidates, expected cost at the start and the end, the final temperature,
per unit the final probabilities, and the discretisation (argmax, final bits, whether it was repaired).
"""

from __future__ import annotations

from mpqbench.api import Method, UserError
from mpqbench.cost.allocation import check_bits, lowest_policy, searched_units, unit_policy
from mpqbench.cost.expected import model_penalty
from mpqbench.plugin.params import Choice
from mpqbench.plugins.dfq.discretise import apply, discretise
from mpqbench.plugins.dfq.quantizer import SCHEDULES, Anneal, attach, layer_choices, set_temperature

NAME = "dfq-diff"


def cost_term(run, model, layer_dists, form: str):
    """The run's budget penalty on ``layer_dists`` (searched layer -> distribution), from the core."""
    return model_penalty(run.budget, run.cost, model, layer_dists, form)


class DFQDiff(Method):
    name = NAME
    version = "1"
    description = ("Cheng et al. 2018 differentiable fine-grained quantization (not Nagel et al.'s data-free "
                   "quantization): per-layer softmax over weight bitwidths, argmax repaired to the budget")
    params = {
        "candidates": (2, 3, 4, 5, 6, 7, 8), "a": 8,
        "search_epochs": None, "search_lr": None, "finetune_epochs": None,
        "update": Choice("bilevel", "joint"), "every": 1, "logit_lr": 0.05,
        "t_start": 1.0, "t_end": 0.1, "anneal": Choice(*SCHEDULES),
        "lambda_c": 1.0, "penalty": Choice("abs", "hinge", "square", "linear"),
    }

    def check(self, params) -> None:
        check_bits(NAME, params["candidates"], params["a"])
        if len(set(params["candidates"])) < 2:
            raise UserError(f"{NAME}: candidates need at least two bitwidths to search between")
        Anneal(params["t_start"], params["t_end"], params["anneal"])
        for key in ("search_epochs", "finetune_epochs"):
            if params[key] is not None and (params[key] != int(params[key]) or params[key] < 0):
                raise UserError(f"{NAME}: {key}={params[key]} must be a whole number >= 0")
        if params["search_lr"] is not None and not params["search_lr"] > 0:
            raise UserError(f"{NAME}: search_lr={params['search_lr']} must be > 0")
        if not params["logit_lr"] > 0:
            raise UserError(f"{NAME}: logit_lr={params['logit_lr']} must be > 0")
        if params["every"] < 1:
            raise UserError(f"{NAME}: every={params['every']} must be >= 1")
        if not params["lambda_c"] >= 0:
            raise UserError(f"{NAME}: lambda_c={params['lambda_c']} must be >= 0")

    def smallest_policy(self, params, layout, fixed):
        return lowest_policy(layout, fixed, params["candidates"], params["a"])

    def search(self, run):
        if run.budget is None:
            raise UserError(f"{NAME} needs a budget (pass --budgets KIND=VALUE)")
        top = max(run.params["candidates"])
        return unit_policy(run.layout, run.fixed, {u: top for u in searched_units(run.layout, run.fixed)},
                           run.params["a"])

    def train(self, run, policy):
        with run.searching():
            model = self.relaxed_search(run, policy)
        epochs = run.params["finetune_epochs"]
        return run.finetune(model, epochs=None if epochs is None else int(epochs))

    def relaxed_search(self, run, policy):
        """The mixture search, then argmax repaired to the budget; returns the model collapsed to LSQ."""
        p = run.params
        anneal = Anneal(p["t_start"], p["t_end"], p["anneal"])
        model = run.quant_model(policy)
        choices = attach(model, run.fixed, p["candidates"], temperature=anneal.start)
        penalty = cost_term(run, model, layer_choices(model), p["penalty"])
        record = run.extra[NAME] = {"units": list(choices), "candidates": list(next(iter(choices.values())).candidates),
                                    "update": p["update"], "expected_start": penalty.expected().item()}
        epochs = run.recipe.qat_epochs if p["search_epochs"] is None else int(p["search_epochs"])
        trainer = run.trainer(model, name="search", epochs=epochs, lr=p["search_lr"])
        trainer.add_optimizer("logits", [c.logits for c in choices.values()], optimizer="adam", lr=p["logit_lr"],
                              split="val" if p["update"] == "bilevel" else "train", every=int(p["every"]))
        if p["lambda_c"] > 0:
            trainer.add_loss("cost", penalty, weight=p["lambda_c"])
        trainer.on_step(lambda state: set_temperature(choices, anneal(state.step, state.total)))
        if epochs:
            trainer.fit()
        record["temperature_end"] = next(iter(choices.values())).temperature
        record["expected_end"] = penalty.expected().item()
        record["probs"] = {u: [round(float(v), 4) for v in c.weights().detach()] for u, c in choices.items()}
        result = discretise(run.layout, run.cost, run.budget, run.fixed, choices, p["a"])
        record["discretise"] = result.record()
        apply(choices, result.bits)
        return model.finalize()
