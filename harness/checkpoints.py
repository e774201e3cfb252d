"""FP32 starting points: trained once per (model, data set, recipe, seed), cached, shared by all methods."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn

from mpqbench.api import ModelEntry
from mpqbench.data.splits import DataSplits
from mpqbench.paths import file_lock, write_atomic
from mpqbench.recipe import Recipe
from mpqbench.train import CPU, fit

log = logging.getLogger("mpqbench.checkpoints")


def checkpoint_key(model: str, data: DataSplits, recipe: Recipe, seed: int) -> str:
    key = {"model": model, "dataset": data.name, "shape": list(vars(data.shape).values()),
           "recipe": recipe.fp32_key(), "seed": seed}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def fp32_checkpoint(entry: ModelEntry, data: DataSplits, recipe: Recipe, seed: int, cache: Path,
                    device: torch.device = CPU) -> tuple[nn.Module, dict]:
    """Load the cached FP32 model, or train and cache it (under a lock, so parallel runs train it once).

    Returns the model (on the CPU, eval mode) and its metadata: the key's fields and the training time.
    """
    key = checkpoint_key(entry.name, data, recipe, seed)
    stem = cache / "checkpoints" / f"{entry.name}-{data.name}-s{seed}-{key}"
    weights, meta_path = stem.with_suffix(".pt"), stem.with_suffix(".json")
    model = entry.build(data.shape)
    with file_lock(stem.with_suffix(".lock")):
        if weights.exists() and meta_path.exists():
            model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            model.eval()
            meta = json.loads(meta_path.read_text())
            return model, {**meta, "cached": True}
        log.info("training FP32 %s on %s (seed %d, %d epochs)", entry.name, data.name, seed, recipe.fp32_epochs)
        torch.manual_seed(seed)
        model = entry.build(data.shape).to(memory_format=torch.channels_last)
        start = time.perf_counter()
        fit(model, data, epochs=recipe.fp32_epochs, lr=recipe.fp32_lr, weight_decay=recipe.fp32_wd,
            batch_size=recipe.batch_size, momentum=recipe.momentum, seed=seed, device=device)
        model.cpu()
        seconds = time.perf_counter() - start
        meta = {"key": key, "model": entry.name, "dataset": data.name, "seed": seed,
                "recipe": recipe.fp32_key(), "train_seconds": seconds, "device": str(device)}
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        write_atomic(weights, buf.getvalue())
        write_atomic(meta_path, json.dumps(meta, indent=1).encode())
        return model, {**meta, "cached": False}
