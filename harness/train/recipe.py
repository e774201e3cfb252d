"""Training recipes: one FP32 recipe and one fine-tune (QAT) recipe shared by every method of a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from mpqbench.errors import UserError
from mpqbench.quant.quantizers import FAKE_QUANT_MODES, LSQ_GRADIENTS
from mpqbench.train.ptq import PTQ_INITS

FP32_FIELDS = ("fp32_epochs", "fp32_lr", "fp32_wd", "batch_size", "momentum", "train_subset", "threads")
"""The fields that determine the FP32 checkpoint; changing any other field reuses it."""


@dataclass(frozen=True)
class Recipe:
    """SGD with momentum and a per-step cosine schedule, for FP32 training and for LSQ fine-tuning.

    Weight decay applies to conv/linear weights only (not to BN, biases or quantizer steps). Subsets cut
    the training/test splits for quick runs and are part of the run's identity. ``fp32_seed`` fixes the
    FP32 starting point across run seeds (as papers fine-tune one pretrained model), so seeds then vary
    only the search sampling and the fine-tune; ``None`` trains one FP32 model per run seed. ``search_seed``
    and ``finetune_seed`` likewise fix the seed of the search (everything a method draws while it searches:
    feature batches, Hutchinson probes, Bernoulli draws, the search's data order) or of the fine-tune across
    run seeds, so that a sweep over ``--seeds`` varies the other alone: fine-tune noise and search noise are
    then measured separately (see ``RunContext.seed``).

    ``lsq_grad`` picks LSQ's gradient (``paper``: clipping decided on ``x/s``, as Esser et al.; ``torch``:
    PyTorch's fused operator, which decides it on ``round(x/s)``); ``fake_quant`` runs LSQ activations
    ``eager`` or ``compiled`` (``torch.compile``: same values, a faster step after a one-off compile of
    about 15 s per process, so the tiny test recipe stays eager).

    ``ptq_init`` is how the quantizer steps are set when the fine-tune has zero epochs (post-training
    quantization): ``mse`` (MSE-optimal clipping on the calibration split, the default) or ``lsq`` (LSQ's own
    initialisation on a calibration batch); see :mod:`mpqbench.train.ptq`. It matters only then, so it is
    recorded only then (earlier run ids with fine-tune epochs stay valid). ``ptq_reconstruct`` (then too): AdaRound
    iterations per layer after the calibration (:mod:`mpqbench.train.reconstruct`); 0, the default, keeps
    round-to-nearest and is not recorded.

    ``threads`` is the number of torch threads every job of the recipe trains and evaluates with, whatever
    ``--jobs`` is: floating-point sums are split differently with more threads, so the thread count is part
    of what a result is (one run id, one result); a sweep gets its parallelism from ``--jobs``.
    """

    name: str = "full"
    fp32_epochs: int = 30
    fp32_lr: float = 0.1
    fp32_wd: float = 5e-4
    qat_epochs: int = 5
    qat_lr: float = 0.01
    qat_wd: float = 1e-4
    batch_size: int = 128
    momentum: float = 0.9
    act_quantizer: str = "lsq"
    lsq_grad: str = "paper"
    fake_quant: str = "compiled"
    train_subset: int | None = None
    test_subset: int | None = None
    fp32_seed: int | None = None
    search_seed: int | None = None
    finetune_seed: int | None = None
    threads: int = 1
    ptq_init: str = "mse"
    ptq_reconstruct: int = 0

    def __post_init__(self):
        checks = [("fp32_epochs", self.fp32_epochs >= 0), ("qat_epochs", self.qat_epochs >= 0),
                  ("fp32_lr", self.fp32_lr > 0), ("qat_lr", self.qat_lr > 0), ("fp32_wd", self.fp32_wd >= 0),
                  ("qat_wd", self.qat_wd >= 0), ("batch_size", self.batch_size >= 1),
                  ("momentum", 0 <= self.momentum < 1), ("threads", self.threads >= 1),
                  ("train_subset", self.train_subset is None or self.train_subset >= 1),
                  ("test_subset", self.test_subset is None or self.test_subset >= 1),
                  *((key, getattr(self, key) is None or getattr(self, key) >= 0)
                    for key in ("fp32_seed", "search_seed", "finetune_seed")),
                  ("lsq_grad", self.lsq_grad in LSQ_GRADIENTS), ("fake_quant", self.fake_quant in FAKE_QUANT_MODES),
                  ("ptq_init", self.ptq_init in PTQ_INITS), ("ptq_reconstruct", self.ptq_reconstruct >= 0)]
        for name, ok in checks:
            if not ok:
                raise UserError(f"recipe field {name}={getattr(self, name)!r} is out of range")

    def to_json(self) -> dict:
        """The recipe as recorded; unset seeds, and ``ptq_init`` when there is a fine-tune, are left out so
        earlier run ids stay valid."""
        data = asdict(self)
        for key in ("fp32_seed", "search_seed", "finetune_seed"):
            if data[key] is None:
                del data[key]
        if self.qat_epochs:
            del data["ptq_init"]
        if self.qat_epochs or not self.ptq_reconstruct:
            del data["ptq_reconstruct"]
        return data

    def fp32_seed_for(self, seed: int) -> int:
        """The seed of the FP32 checkpoint a run with ``seed`` starts from."""
        return seed if self.fp32_seed is None else self.fp32_seed

    def stage_seeds(self, seed: int) -> tuple[int, int] | None:
        """(search seed, fine-tune seed) of a run with ``seed`` when either is fixed; None when both follow it."""
        if self.search_seed is None and self.finetune_seed is None:
            return None
        return (seed if self.search_seed is None else self.search_seed,
                seed if self.finetune_seed is None else self.finetune_seed)

    def fp32_key(self) -> dict:
        return {k: getattr(self, k) for k in FP32_FIELDS}

    def override(self, **changes) -> "Recipe":
        known = {f.name: f for f in fields(self)}
        typed = {}
        for key, value in changes.items():
            if key not in known or key == "name":
                raise UserError(f"unknown recipe field {key!r} (known: {', '.join(k for k in known if k != 'name')})")
            typed[key] = _coerce(key, value, known[key].type)
        return replace(self, **typed)


def _coerce(key: str, value, type_name: str):
    """A field's value from a string (``--set``) or a TOML value, checked against the field's type."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        if "None" in type_name:
            return None
        raise UserError(f"recipe field {key} cannot be none")
    kind = int if "int" in type_name else float if "float" in type_name else str
    name = {int: "an integer", float: "a number", str: "a string"}[kind]
    if isinstance(value, bool) or (kind is int and isinstance(value, float)) or (
            kind is not str and not isinstance(value, (str, int, float))):
        raise UserError(f"recipe field {key}: {value!r} is not {name}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UserError(f"recipe field {key}: {value!r} is not {name}") from None


RECIPES = {
    "full": Recipe("full"),
    "quick": Recipe("quick", fp32_epochs=4, qat_epochs=1, train_subset=16384, test_subset=2000),
    "tiny": Recipe("tiny", fp32_epochs=4, fp32_lr=0.05, qat_epochs=1, batch_size=64, train_subset=1024,
                   test_subset=256, fake_quant="eager"),
}


def recipe_label(recorded: dict) -> str:
    """A recorded recipe as its name plus the fields overridden, e.g. ``full qat_epochs=2``."""
    base = RECIPES[recorded["name"]].to_json() if recorded["name"] in RECIPES else {}
    changed = [f"{k}={v}" for k, v in recorded.items() if k != "name" and base.get(k) != v]
    return " ".join([recorded["name"], *changed])


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})")
    return RECIPES[name]
