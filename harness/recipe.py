"""Training recipes: one FP32 recipe and one fine-tune (QAT) recipe shared by every method of a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from mpqbench.errors import UserError

FP32_FIELDS = ("fp32_epochs", "fp32_lr", "fp32_wd", "batch_size", "momentum", "train_subset")
"""The fields that determine the FP32 checkpoint; changing any other field reuses it."""


@dataclass(frozen=True)
class Recipe:
    """SGD with momentum and a per-step cosine schedule, for FP32 training and for LSQ fine-tuning.

    Weight decay applies to conv/linear weights only (not to BN, biases or quantizer steps). Subsets cut
    the training/test splits for quick runs and are part of the run's identity. ``fp32_seed`` fixes the
    FP32 starting point across run seeds (as papers fine-tune one pretrained model), so seeds then vary
    only the search sampling and the fine-tune; ``None`` trains one FP32 model per run seed.
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
    train_subset: int | None = None
    test_subset: int | None = None
    fp32_seed: int | None = None

    def to_json(self) -> dict:
        """The recipe as recorded; an unset ``fp32_seed`` is left out so earlier run ids stay valid."""
        data = asdict(self)
        if data["fp32_seed"] is None:
            del data["fp32_seed"]
        return data

    def fp32_seed_for(self, seed: int) -> int:
        """The seed of the FP32 checkpoint a run with ``seed`` starts from."""
        return seed if self.fp32_seed is None else self.fp32_seed

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
    if value is None or not isinstance(value, str):
        return value
    try:
        if "int" in type_name:
            return None if value.lower() == "none" else int(value)
        if "float" in type_name:
            return float(value)
    except ValueError:
        raise UserError(f"recipe field {key}: {value!r} is not a number") from None
    return value


RECIPES = {
    "full": Recipe("full"),
    "quick": Recipe("quick", fp32_epochs=4, qat_epochs=1, train_subset=16384, test_subset=2000),
    "tiny": Recipe("tiny", fp32_epochs=4, fp32_lr=0.05, qat_epochs=1, batch_size=64, train_subset=1024,
                   test_subset=256),
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
