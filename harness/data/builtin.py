"""The built-in data sets, registered as an ordinary plugin (entry point ``datasets``).

Nothing is downloaded: Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package, digits from
scikit-learn's bundled copy, CIFAR-10 from a folder the user already has.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, FashionMNIST

from mpqbench import hookimpl
from mpqbench.api import DatasetEntry
from mpqbench.data.splits import Augment, DataSplits, make_splits
from mpqbench.errors import UserError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")


HARD_CLASSES = (0, 2, 4, 6)
"""Fashion-MNIST's four most confused classes: T-shirt/top, pullover, coat, shirt (labels 0-3 in this order)."""
HARD_TRAIN_PER_CLASS = 1500
"""Official training images kept per class (the first in file order): 6000, of which 1000 are validation."""


def _fashion_idx(root: str | None, cache: Path) -> tuple[FashionMNIST, FashionMNIST]:
    """Debian's IDX files (or ``root``'s), unpacked once into the cache (one folder per source) and read
    with torchvision's loader: the official training and test sets."""
    src = Path(root or FASHION_MNIST_DIR)
    base = cache / f"fashion-mnist-{hashlib.sha256(str(src.resolve()).encode()).hexdigest()[:8]}"  # per source
    raw = base / "FashionMNIST" / "raw"
    for name in FASHION_FILES:
        gz = src / f"{name}.gz"
        if not gz.exists() and not (src / name).exists():  # checked even when unpacked: the source is the truth
            raise UserError(f"Fashion-MNIST not found in {src} (apt-get install dataset-fashion-mnist, "
                            "or pass --data-root DIR with its IDX files)")
        if (raw / name).exists():
            continue
        raw.mkdir(parents=True, exist_ok=True)
        tmp = raw / f".{name}.{os.getpid()}"
        tmp.write_bytes(gzip.decompress(gz.read_bytes()) if gz.exists() else (src / name).read_bytes())
        os.replace(tmp, raw / name)
    return FashionMNIST(str(base), train=True, download=False), FashionMNIST(str(base), train=False, download=False)


def fashion_mnist(root: str | None, cache: Path) -> DataSplits:
    train, test = _fashion_idx(root, cache)
    return make_splits("fashion-mnist", train.data, train.targets, test.data, test.targets, classes=10,
                       val_size=5000, calib_size=1024, augment=Augment(pad=2, flip=True))


def _classes(x: torch.Tensor, y: torch.Tensor, classes: tuple[int, ...],
             per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of ``classes`` (the first ``per_class`` of each, in file order), labels renumbered 0..k-1."""
    keep = torch.cat([(y == c).nonzero().flatten()[:per_class] for c in classes]).sort().values
    remap = torch.full((int(y.max()) + 1,), -1, dtype=torch.int64)
    remap[list(classes)] = torch.arange(len(classes))
    return x[keep], remap[y[keep]]


def fashion_mnist_hard(root: str | None, cache: Path) -> DataSplits:
    """A harder task from the same files, so that quantization methods separate: only the four confusable
    upper-body classes (:data:`HARD_CLASSES`), 1500 training images each. Splits: 5000 train, 1000 val,
    1024 calib (train's head), 4000 test (every official test image of the four classes)."""
    train, test = _fashion_idx(root, cache)
    x, y = _classes(train.data, train.targets, HARD_CLASSES, HARD_TRAIN_PER_CLASS)
    xt, yt = _classes(test.data, test.targets, HARD_CLASSES)
    return make_splits("fashion-mnist-hard", x, y, xt, yt, classes=len(HARD_CLASSES), val_size=1000,
                       calib_size=1024, augment=Augment(pad=2, flip=True))


def digits(root: str | None, cache: Path) -> DataSplits:
    """scikit-learn's bundled 8x8 digits (1797 images): a tiny real data set for fast tests."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy(np.round(data.images * (255.0 / 16.0)).astype(np.uint8))
    y = torch.from_numpy(data.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    test, train = perm[:360], perm[360:]
    return make_splits("digits", x[train], y[train], x[test], y[test], classes=10, val_size=180,
                       calib_size=256)


class _LocalCIFAR10(CIFAR10):
    """torchvision's CIFAR-10 reader with its md5 checks turned into existence checks, so a partial
    local copy (or a test's tiny folder in the same pickle-batch format) loads; nothing is downloaded."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


def cifar10(root: str | None, cache: Path) -> DataSplits:
    if root is None:
        raise UserError("cifar10 needs --data-root DIR (a folder holding cifar-10-batches-py/)")
    if not (Path(root) / "cifar-10-batches-py").is_dir():
        raise UserError(f"CIFAR-10 not found: {root}/cifar-10-batches-py does not exist")
    train, test = _LocalCIFAR10(root, train=True), _LocalCIFAR10(root, train=False)

    def images(ds):
        return torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))

    n = len(train.targets)
    return make_splits("cifar10", images(train), torch.tensor(train.targets), images(test),
                       torch.tensor(test.targets), classes=10, val_size=min(5000, n // 10),
                       calib_size=1024, augment=Augment(pad=4, flip=True))


DATASETS = (
    DatasetEntry("fashion-mnist", fashion_mnist, "Fashion-MNIST 28x28x1, Debian package (embedded default)"),
    DatasetEntry("fashion-mnist-hard", fashion_mnist_hard,
                 "Fashion-MNIST's 4 confusable tops (T-shirt, pullover, coat, shirt), 1500 train images each"),
    DatasetEntry("digits", digits, "scikit-learn digits 8x8x1, for fast tests"),
    DatasetEntry("cifar10", cifar10, "CIFAR-10 32x32x3 from a local folder (--data-root)"),
)


@hookimpl
def mpqbench_register_datasets(register):
    for entry in DATASETS:
        register(entry)
