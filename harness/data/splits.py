"""Fixed, seeded data splits held in memory as uint8 images.

Every run of every method sees the same four splits of a data set: ``train`` (fitting), ``val`` (held
out from training; what search methods may use for decisions), ``calib`` (a small subset of ``train``
for calibration / feature extraction) and ``test`` (the official test set, used only for reported
accuracy). Images stay uint8 (N, C, H, W): they are the integer model's inputs as they are, and the
float model sees them scaled to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

SPLIT_SEED = 0
"""The splits are the same for every run seed: runs differ in training randomness, not in data."""


@dataclass(frozen=True)
class ImageShape:
    """What a model is built for: image channels, side length in pixels, number of classes."""

    channels: int
    size: int
    classes: int


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int | None) -> "Split":
        return self if n is None or n >= len(self) else Split(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Augment:
    """Per-sample random crop after zero padding by ``pad`` pixels, and random horizontal flips."""

    pad: int = 0
    flip: bool = False


@dataclass(frozen=True)
class DataSplits:
    name: str
    shape: ImageShape
    train: Split
    val: Split
    calib: Split
    test: Split
    augment: Augment = field(default_factory=Augment)

    def subset(self, train: int | None = None, test: int | None = None) -> "DataSplits":
        """The first ``train`` training / ``test`` test images (splits are already shuffled)."""
        return replace(self, train=self.train.head(train), test=self.test.head(test),
                       calib=self.calib.head(train))


def make_splits(name: str, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                y_test: torch.Tensor, classes: int, val_size: int, calib_size: int,
                augment: Augment = Augment()) -> DataSplits:
    """Split the official training set into train/val with a fixed permutation; calib is train's head."""
    if x_train.dim() == 3:
        x_train, x_test = x_train.unsqueeze(1), x_test.unsqueeze(1)
    perm = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    train = Split(x_train[train_idx].contiguous(), y_train[train_idx].long())
    test_perm = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(SPLIT_SEED))
    shape = ImageShape(channels=x_train.shape[1], size=x_train.shape[-1], classes=classes)
    return DataSplits(
        name=name, shape=shape, train=train,
        val=Split(x_train[val_idx].contiguous(), y_train[val_idx].long()),
        calib=train.head(calib_size),
        test=Split(x_test[test_perm].contiguous(), y_test[test_perm].long()),
        augment=augment,
    )
