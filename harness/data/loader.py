"""Mini-batches straight from in-memory uint8 tensors, with vectorised augmentation.

A DataLoader with per-image PIL transforms costs more than the ResNet-20 forward pass on 2 CPU cores;
slicing resident tensors and augmenting whole batches keeps training compute-bound.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.nn import functional as F

from mpqbench.data.splits import Augment, Split


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [0, 1], the scale every model is trained on."""
    return x.to(torch.float32).div_(255.0)


def augment_batch(x: torch.Tensor, aug: Augment, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    if aug.pad:
        padded = F.pad(x, (aug.pad,) * 4)
        span = 2 * aug.pad + 1
        offsets = torch.randint(0, span * span, (n,), generator=gen)
        out = torch.empty_like(x)
        for k in range(span * span):
            idx = (offsets == k).nonzero().flatten()
            if len(idx):
                dy, dx = divmod(k, span)
                out[idx] = padded[idx, :, dy:dy + h, dx:dx + w]
        x = out
    if aug.flip:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def batches(split: Split, batch_size: int, gen: torch.Generator | None = None, augment: Augment | None = None,
            drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float batches of a split; shuffled (and augmented, if given) when ``gen`` is given."""
    n = len(split)
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]
        x = to_float(split.x[idx])
        if augment is not None and gen is not None:
            x = augment_batch(x, augment, gen)
        yield x, split.y[idx]
