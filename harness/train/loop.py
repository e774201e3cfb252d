"""The shared training loop: FP32 training, LSQ fine-tuning, and what methods that learn bits extend.

One loop for every method keeps the comparison fair: same optimiser, schedule, augmentation, epochs for
the weights. A method extends a :class:`Trainer` instead of copying it:

* ``add_optimizer(name, params, ...)``: its own parameters (bit logits, gates, levels) leave the weights'
  SGD group and get their own optimizer and learning rate; ``split="val"`` steps them on a batch of the
  validation split every ``every`` training steps (bi-level search as in DARTS), ``split="train"`` jointly
  with the weights;
* ``add_loss(name, fn, weight)``: loss terms by name (``ce`` is there by default; distillation, a budget
  penalty, a regulariser...), each logged per epoch into the run record;
* ``on_step(fn)``: a callback before each training step, seeing the model, the optimizers, the step and
  the previous step's loss parts (bit decay, temperature annealing...).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from mpqbench.data.loader import batches
from mpqbench.data.splits import DataSplits, Split
from mpqbench.errors import UserError

log = logging.getLogger("mpqbench.train")
CPU = torch.device("cpu")
OPTIMIZERS = ("sgd", "adam", "adamw")


def param_groups(params: Iterable[tuple[nn.Module, str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only; BN, biases and quantizer parameters are exempt."""
    decay, no_decay = [], []
    for module, name, p in params:
        is_weight = name == "weight" and isinstance(module, (nn.Conv2d, nn.Linear))
        (decay if is_weight else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the GPU when there is one; asking for ``cuda`` without one is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}") from None


@dataclass
class StepState:
    """What loss terms and step callbacks see. ``logits`` is None before the forward pass (callbacks);
    ``split`` is ``train`` or ``val``; ``parts`` holds the previous step's loss parts."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    step: int
    total: int
    epoch: int
    split: str = "train"
    logits: torch.Tensor | None = None
    parts: dict[str, float] = field(default_factory=dict)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)


LossFn = Callable[[StepState], torch.Tensor]


def cross_entropy(state: StepState) -> torch.Tensor:
    return F.cross_entropy(state.logits, state.y)


@dataclass
class _Extra:
    name: str
    params: list[nn.Parameter]
    optimizer: str
    lr: float
    weight_decay: float
    split: str
    every: int
    schedule: str


class Trainer:
    """Trains ``model`` in place on ``data`` (see the module docstring). The weights use SGD with Nesterov
    momentum and a per-step cosine learning rate; ``fit`` returns, per epoch, the mean of every loss part
    (weighted as added), ``loss`` (their sum) and, for validation-split steps, ``val:<part>``."""

    def __init__(self, model: nn.Module, data: DataSplits, *, epochs: int, lr: float, weight_decay: float,
                 batch_size: int, momentum: float, seed: int, device: torch.device = CPU,
                 progress: Callable[[int, int, dict], None] | None = None):
        self.model, self.data = model, data
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.batch_size, self.momentum, self.seed, self.device = batch_size, momentum, seed, device
        self.progress = progress
        self.losses: dict[str, tuple[LossFn, float]] = {"ce": (cross_entropy, 1.0)}
        self.extras: list[_Extra] = []
        self.callbacks: list[Callable[[StepState], None]] = []
        self.history: list[dict[str, float]] = []

    def add_optimizer(self, name: str, params: Iterable[nn.Parameter], *, optimizer: str = "adam", lr: float = 1e-3,
                      weight_decay: float = 0.0, split: str = "train", every: int = 1,
                      schedule: str = "constant") -> None:
        if optimizer not in OPTIMIZERS or split not in ("train", "val") or schedule not in ("constant", "cosine"):
            raise ValueError(f"add_optimizer({name!r}): optimizer in {OPTIMIZERS}, split train|val, "
                             "schedule constant|cosine")
        if every < 1 or lr <= 0:
            raise ValueError(f"add_optimizer({name!r}): every >= 1 and lr > 0")
        self.extras.append(_Extra(name, list(params), optimizer, lr, weight_decay, split, every, schedule))

    def add_loss(self, name: str, fn: LossFn, weight: float = 1.0) -> None:
        self.losses[name] = (fn, weight)

    def remove_loss(self, name: str) -> None:
        self.losses.pop(name, None)

    def on_step(self, fn: Callable[[StepState], None]) -> None:
        self.callbacks.append(fn)

    def _optimizers(self, total: int) -> tuple[dict, dict]:
        own = {id(p) for e in self.extras for p in e.params}
        seen, weights = set(), []
        for module in self.model.modules():
            for name, p in module.named_parameters(recurse=False):
                if id(p) in seen or id(p) in own or not p.requires_grad:
                    continue
                seen.add(id(p))
                weights.append((module, name, p))
        opts = {"weights": torch.optim.SGD(param_groups(weights, self.weight_decay), lr=self.lr,
                                           momentum=self.momentum, nesterov=self.momentum > 0)}
        cosine = lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))  # noqa: E731
        scheds = {"weights": torch.optim.lr_scheduler.LambdaLR(opts["weights"], cosine)}
        for e in self.extras:
            cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[e.optimizer]
            opts[e.name] = cls(e.params, lr=e.lr, weight_decay=e.weight_decay)
            scheds[e.name] = torch.optim.lr_scheduler.LambdaLR(
                opts[e.name], cosine if e.schedule == "cosine" else (lambda s: 1.0))
        return opts, scheds

    def _loss(self, state: StepState) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: weight * fn(state) for name, (fn, weight) in self.losses.items()}
        loss = sum(parts.values())
        if not torch.isfinite(loss):
            bad = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
            raise FloatingPointError(f"training diverged at epoch {state.epoch + 1} ({state.split}: {bad})")
        return loss, parts

    def _val_batches(self, gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from batches(self.data.val, self.batch_size, gen, drop_last=True)

    def fit(self, epochs: int | None = None) -> list[dict[str, float]]:
        epochs = self.epochs if epochs is None else epochs
        gen = torch.Generator().manual_seed(self.seed)
        steps_per_epoch = max(1, len(self.data.train) // self.batch_size)
        total = max(1, epochs * steps_per_epoch)
        opts, scheds = self._optimizers(total)
        val_iter = self._val_batches(torch.Generator().manual_seed(self.seed + 1)) if any(
            e.split == "val" for e in self.extras) else None
        model, step, last = self.model.to(self.device).train(), 0, {}
        for epoch in range(epochs):
            sums: dict[str, float] = {}
            count = 0
            for x, y in batches(self.data.train, self.batch_size, gen, self.data.augment, drop_last=True):
                x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                y = y.to(self.device, non_blocking=True)
                state = StepState(model, x, y, step, total, epoch, parts=last, optimizers=opts)
                for fn in self.callbacks:
                    fn(state)
                state.logits = model(x)
                loss, parts = self._loss(state)
                train_opts = [opts["weights"]] + [opts[e.name] for e in self.extras if e.split == "train"]
                for opt in opts.values():
                    opt.zero_grad(set_to_none=True)
                loss.backward()
                for opt in train_opts:
                    opt.step()
                last = {k: float(v.detach()) for k, v in parts.items()}
                last["loss"] = float(loss.detach())
                for e in self.extras:
                    if e.split == "val" and step % e.every == 0:
                        last.update(self._val_step(model, opts, e, val_iter, step, total, epoch))
                for sched in scheds.values():
                    sched.step()
                for k, v in last.items():
                    sums[k] = sums.get(k, 0.0) + v * len(y)
                count += len(y)
                step += 1
            self.history.append({k: v / max(count, 1) for k, v in sums.items()})
            log.info("epoch %d/%d %s", epoch + 1, epochs,
                     " ".join(f"{k} {v:.4f}" for k, v in self.history[-1].items()))
            if self.progress:
                self.progress(epoch + 1, epochs, self.history[-1])
        model.eval()
        return self.history

    def _val_step(self, model, opts, extra: _Extra, val_iter, step: int, total: int, epoch: int) -> dict[str, float]:
        xv, yv = next(val_iter)
        xv = xv.to(self.device).contiguous(memory_format=torch.channels_last)
        state = StepState(model, xv, yv.to(self.device), step, total, epoch, split="val", optimizers=opts)
        state.logits = model(xv)
        loss, parts = self._loss(state)
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        opts[extra.name].step()
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        return {f"val:{k}": float(v.detach()) for k, v in parts.items()}


@torch.no_grad()
def predict(model: nn.Module, split: Split, batch_size: int = 1000) -> torch.Tensor:
    """Top-1 predictions (on the CPU) of a float/fake-quant model on a split, in eval mode, computed on
    whatever device the model is on."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds = [model(x.to(device).contiguous(memory_format=torch.channels_last)).argmax(1).cpu()
             for x, _ in batches(split, batch_size)]
    model.train(was_training)
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def accuracy(preds: torch.Tensor | Iterable, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    preds = torch.as_tensor(preds)
    return 100.0 * (preds == labels).float().mean().item()
