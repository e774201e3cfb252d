"""The shared training loop: FP32 training, LSQ fine-tuning and evaluation.

One loop for every method keeps the comparison fair: same optimiser, schedule, augmentation, epochs.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F

from mpqbench.data.loader import batches
from mpqbench.data.splits import DataSplits, Split
from mpqbench.errors import UserError

log = logging.getLogger("mpqbench.train")
CPU = torch.device("cpu")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only; BN, biases and quantizer parameters are exempt."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
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


def fit(model: nn.Module, data: DataSplits, *, epochs: int, lr: float, weight_decay: float, batch_size: int,
        momentum: float, seed: int, device: torch.device = CPU, loss_fn: Callable | None = None,
        step_hook: Callable[[int, int], None] | None = None) -> list[float]:
    """Train in place on ``device`` with SGD (Nesterov) and a per-step cosine learning rate; returns the
    mean loss per epoch. The model is left on ``device``.

    ``loss_fn(model, x, y)`` replaces cross-entropy (e.g. a method's regulariser); ``step_hook(step,
    total)`` runs before each step (e.g. a method changing bitwidths during training).
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=True)
    steps_per_epoch = max(1, len(data.train) // batch_size)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    loss_fn = loss_fn or (lambda m, x, y: F.cross_entropy(m(x), y))
    history, step = [], 0
    model.to(device).train()
    for epoch in range(epochs):
        running, count = 0.0, 0
        for x, y in batches(data.train, batch_size, gen, data.augment, drop_last=True):
            if step_hook:
                step_hook(step, total)
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model, x, y.to(device, non_blocking=True))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training diverged (loss {loss.item()}) at epoch {epoch + 1}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(y)
            count += len(y)
            step += 1
        history.append(running / max(count, 1))
        log.info("epoch %d/%d loss %.4f", epoch + 1, epochs, history[-1])
    model.eval()
    return history


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
