"""FP32 starting points: trained once per (model, data set, FP32 recipe, seed), cached, shared by all methods.

A checkpoint is trained by its own job before the cells that need it (so no two workers ever train it), and
written atomically beside a JSON sidecar holding its metadata and the sha256 of the weights file: a
truncated or corrupted file is detected on load, named in one line, and trained again.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from mpqbench.data.splits import DataSplits, Split
from mpqbench.errors import UserError
from mpqbench.plugin.objects import ModelEntry
from mpqbench.system.paths import write_atomic
from mpqbench.train.loop import CPU, Trainer, predict
from mpqbench.train.recipe import Recipe

log = logging.getLogger("mpqbench.checkpoints")


def checkpoint_key(model: str, data: DataSplits, recipe: Recipe, seed: int) -> str:
    key = {"model": model, "dataset": data.name, "shape": list(vars(data.shape).values()),
           "recipe": recipe.fp32_key(), "seed": seed}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


class Checkpoint:
    """Where one FP32 checkpoint lives in the cache, and whether it is there intact."""

    def __init__(self, model: str, data: DataSplits, recipe: Recipe, seed: int, cache: Path):
        self.key = checkpoint_key(model, data, recipe, seed)
        self.model, self.dataset, self.seed, self.recipe = model, data.name, seed, recipe
        stem = cache / "checkpoints" / f"{model}-{data.name}-s{seed}-{self.key}"
        self.weights, self.meta_path = stem.with_suffix(".pt"), stem.with_suffix(".json")

    @property
    def label(self) -> str:
        return f"FP32 {self.model}/{self.dataset} seed {self.seed}"

    def problem(self) -> str | None:
        """None when the checkpoint is cached intact, else why it must be (re)trained."""
        if not self.weights.exists() or not self.meta_path.exists():
            return "missing"
        try:
            meta = json.loads(self.meta_path.read_text())
            expected = meta["sha256"]
        except (OSError, ValueError, KeyError):
            return f"its metadata {self.meta_path} is unreadable"
        if hashlib.sha256(self.weights.read_bytes()).hexdigest() != expected:
            return f"{self.weights} is corrupt (sha256 differs from its sidecar)"
        return None

    def load(self, entry: ModelEntry, data: DataSplits) -> tuple[nn.Module, dict]:
        """The cached model (CPU, eval mode) and its metadata; a missing or corrupt file is an error here
        (the driver trains checkpoints before the cells that load them)."""
        problem = self.problem()
        if problem:
            raise UserError(f"{self.label}: checkpoint {problem}")
        model = entry.build(data.shape)
        model.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))
        return model.eval(), {**json.loads(self.meta_path.read_text()), "cached": True}

    def train(self, entry: ModelEntry, data: DataSplits, device: torch.device = CPU,
              progress: Callable[[int, int, dict], None] | None = None) -> dict:
        """Train with the recipe's FP32 fields and write weights + sidecar atomically; returns the metadata."""
        recipe = self.recipe
        log.info("training %s (%d epochs)", self.label, recipe.fp32_epochs)
        torch.manual_seed(self.seed)
        model = entry.build(data.shape).to(memory_format=torch.channels_last)
        start = time.perf_counter()
        Trainer(model, data, epochs=recipe.fp32_epochs, lr=recipe.fp32_lr, weight_decay=recipe.fp32_wd,
                batch_size=recipe.batch_size, momentum=recipe.momentum, seed=self.seed, device=device,
                progress=progress).fit()
        model.cpu()
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        blob = buf.getvalue()
        meta = {"key": self.key, "model": self.model, "dataset": self.dataset, "seed": self.seed,
                "recipe": recipe.fp32_key(), "train_seconds": time.perf_counter() - start, "device": str(device),
                "threads": torch.get_num_threads(), "sha256": hashlib.sha256(blob).hexdigest()}
        write_atomic(self.weights, blob)
        write_atomic(self.meta_path, json.dumps(meta, indent=1).encode())
        return meta


def cached_predictions(model: nn.Module, meta: dict, split: Split, cache: Path) -> torch.Tensor:
    """The FP32 checkpoint's top-1 predictions on ``split``, computed once per (checkpoint weights, images)
    and cached beside the checkpoint: every cell of a sweep scores the same FP32 model on the same test
    images (on MobileNetV2 that pass is a third of the evaluate stage). An unreadable cache file is computed
    again."""
    digest = hashlib.sha256(split.x.numpy().tobytes()).hexdigest()[:16]
    path = cache / "checkpoints" / f"{meta['key']}-{meta['sha256'][:16]}.predictions-{digest}.npy"
    try:
        preds = torch.from_numpy(np.load(path))
        if len(preds) == len(split):
            return preds
    except (OSError, ValueError):
        pass
    preds = predict(model, split)
    buf = io.BytesIO()
    np.save(buf, preds.numpy())
    write_atomic(path, buf.getvalue())
    return preds
