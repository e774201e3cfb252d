"""``bars``: a synthetic data set generated on the fly, so a plugin's tests need no files at all.

8x8 grey images of one bar (class 0: horizontal, 1: vertical, 2: diagonal, 3: anti-diagonal) at a random
position, brightness and thickness over uniform noise; 2,400 training and 600 test images, the same on
every machine (NumPy's PCG64 with a fixed seed). ``load(root, cache)`` returns the fixed splits; a data set
read from disk uses ``root`` (``--data-root``) and ``cache`` (unpacked copies).
"""

from __future__ import annotations

import numpy as np
import torch

from mpqbench import hookimpl
from mpqbench.api import DatasetEntry
from mpqbench.data.splits import make_splits

SIZE, CLASSES = 8, 4


def images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, CLASSES, n)
    x = rng.uniform(0, 170, (n, SIZE, SIZE))
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    for i in range(n):
        offset, width, level = rng.integers(-3, 4), rng.integers(1, 3), rng.uniform(110, 255)
        coord = [rows, cols, rows - cols, rows + cols - (SIZE - 1)][y[i]]
        centre = offset + (SIZE // 2 if y[i] < 2 else 0)
        x[i][(coord >= centre) & (coord < centre + width)] = level
    return np.round(x).astype(np.uint8), y


def bars(root, cache):
    rng = np.random.default_rng(7)
    x, y = images(3000, rng)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    return make_splits("bars", x[:2400], y[:2400], x[2400:], y[2400:], classes=CLASSES, val_size=300,
                       calib_size=256)


@hookimpl
def mpqbench_register_datasets(register):
    register(DatasetEntry("bars", bars, "synthetic 8x8 bars in 4 orientations (generated, no files)"))
