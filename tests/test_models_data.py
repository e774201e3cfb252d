import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mpqbench.api import ImageShape
from mpqbench.data import builtin as data
from mpqbench.data.loader import augment_batch, batches
from mpqbench.data.splits import Augment, Split
from mpqbench.errors import UserError
from mpqbench.models.builtin import MODELS
from mpqbench.quant.model import QuantModel
from mpqbench.quant.policy import BitPolicy
from mpqbench.train.checkpoints import cached_predictions
from mpqbench.train.loop import predict

ENTRIES = {e.name: e for e in MODELS}


@pytest.mark.parametrize("name", sorted(ENTRIES))
@pytest.mark.parametrize("shape", [ImageShape(1, 28, 10), ImageShape(3, 32, 10)])
def test_models_run_on_small_images_and_declare_a_layout(name, shape):
    entry = ENTRIES[name]
    model = entry.build(shape).eval()
    layout = entry.layout(model)
    out = model(torch.rand(2, shape.channels, shape.size, shape.size))
    assert out.shape == (2, shape.classes)
    modules = dict(model.named_modules())
    assert all(isinstance(modules[layer], (torch.nn.Conv2d, torch.nn.Linear)) for layer in layout.layers)
    assert layout.first == layout.layers[0] and isinstance(modules[layout.last], torch.nn.Linear)
    assert sorted(x for g in layout.weight_groups for x in g) == sorted(layout.layers)
    assert set(layout.features) == {layout.unit_name(g) for g in layout.weight_groups}


def test_resnet_downsample_shares_bits_with_its_block():
    model = ENTRIES["resnet20"].build(ImageShape(1, 28, 10))
    layout = ENTRIES["resnet20"].layout(model)
    assert ("layer2.0.conv2", "layer2.0.downsample.0") in layout.weight_groups
    assert ("layer2.0.conv1", "layer2.0.downsample.0") in layout.act_groups  # same input tensor
    assert len(layout.layers) == 22 and len(layout.weight_groups) == 20
    assert layout.features["layer2.0.conv2"] == ("layer2.0", "output")


def test_policy_sharing_rules_are_enforced():
    model = ENTRIES["resnet20"].build(ImageShape(1, 28, 10))
    layout = ENTRIES["resnet20"].layout(model)
    good = BitPolicy.uniform(layout, 4, 4)
    good.check(layout)
    bits = good.to_json()
    bits["layer2.0.downsample.0"] = [3, 4]
    with pytest.raises(ValueError, match="share a weight"):
        BitPolicy.from_json(bits).check(layout)
    bits["layer2.0.downsample.0"] = [4, 5]
    with pytest.raises(ValueError, match="same tensor"):
        BitPolicy.from_json(bits).check(layout)
    with pytest.raises(ValueError, match="must stay"):
        good.check(layout, {layout.first: (8, 8)})
    with pytest.raises(ValueError, match="outside"):
        BitPolicy.uniform(layout, 1, 4).check(layout)


def test_quant_model_changes_bits_in_place():
    entry = ENTRIES["small-cnn"]
    model = entry.build(ImageShape(1, 8, 10))
    layout = entry.layout(model)
    q = QuantModel(model, layout, BitPolicy.uniform(layout, 8, 8))
    layer = q.layers()["conv2"]
    quantizer = layer.weight_quantizer
    q.apply_policy(BitPolicy.uniform(layout, 2, 3))
    assert q.layers()["conv2"].weight_quantizer is quantizer and quantizer.bits == 2
    assert q.points()[q.input_point("conv2")].quantizer.bits == 3
    q(torch.rand(2, 1, 8, 8))
    codes = torch.unique(quantizer.integers(layer.weight.detach()))
    assert codes.min() >= -2 and codes.max() <= 1


def test_digits_splits_are_fixed_and_disjoint(tmp_path):
    a, b = data.digits(None, tmp_path), data.digits(None, tmp_path)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert (len(a.train), len(a.val), len(a.test)) == (1257, 180, 360)
    assert torch.equal(a.calib.x, a.train.x[:256])
    assert a.train.x.dtype == torch.uint8 and a.train.x.max() == 255
    small = a.subset(train=100, test=50)
    assert len(small.train) == 100 and len(small.test) == 50


def test_fashion_mnist_reads_the_debian_package(tmp_path):
    if not Path(data.FASHION_MNIST_DIR).is_dir():
        pytest.skip("dataset-fashion-mnist is not installed")
    splits = data.fashion_mnist(None, tmp_path)
    assert splits.shape == ImageShape(1, 28, 10)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)


def test_missing_fashion_mnist_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        data.fashion_mnist(str(tmp_path / "nowhere"), tmp_path / "cache")


def _write_cifar_folder(root: Path, per_batch: int = 6) -> None:
    """A tiny CIFAR-10 in the real on-disk format: pickled dicts of uint8 rows (3072 bytes each)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [(k + i) % 10 for i in range(per_batch)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh)


def test_cifar10_from_a_local_folder(tmp_path):
    _write_cifar_folder(tmp_path)
    splits = data.cifar10(str(tmp_path), tmp_path / "cache")
    assert splits.shape == ImageShape(3, 32, 10)
    assert len(splits.train) + len(splits.val) == 30 and len(splits.test) == 6
    first = pickle.load(open(tmp_path / "cifar-10-batches-py" / "test_batch", "rb"))["data"][0]
    assert any(torch.equal(img, torch.from_numpy(first.reshape(3, 32, 32))) for img in splits.test.x)


def test_cifar10_needs_its_folder(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        data.cifar10(str(tmp_path), tmp_path / "cache")


def test_augmentation_shifts_and_flips_per_sample():
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 1, 5, 5)
    out = augment_batch(x.repeat(50, 1, 1, 1), Augment(pad=1, flip=True), torch.Generator().manual_seed(0))
    assert out.shape == (100, 1, 5, 5)
    assert len({tuple(o.flatten().tolist()) for o in out[::2]}) > 5  # different crops/flips per sample


def test_batches_cover_the_split_once():
    from mpqbench.data.splits import Split

    split = Split(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    seen = torch.cat([y for _, y in batches(split, 3, torch.Generator().manual_seed(1))])
    assert sorted(seen.tolist()) == list(range(10))


def test_fp32_predictions_are_cached_per_checkpoint_and_images(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    split = Split(torch.randint(0, 256, (10, 1, 4, 4), dtype=torch.uint8), torch.zeros(10, dtype=torch.long))
    meta = {"key": "k", "sha256": "0" * 64}
    first = cached_predictions(model, meta, split, tmp_path)
    (path,) = (tmp_path / "checkpoints").glob("*.npy")
    with torch.no_grad():
        model[1].weight.neg_()  # the same checkpoint and images read the cache, not the model
    assert torch.equal(cached_predictions(model, meta, split, tmp_path), first)
    other = Split(split.x.flip(0), split.y)  # other images: computed anew, with the changed model
    assert len(list((tmp_path / "checkpoints").glob("*.npy"))) == 1
    cached_predictions(model, meta, other, tmp_path)
    assert len(list((tmp_path / "checkpoints").glob("*.npy"))) == 2
    path.write_bytes(b"junk")  # unreadable: computed again, from the (changed) model
    again = cached_predictions(model, meta, split, tmp_path)
    assert torch.equal(again, predict(model, split)) and not torch.equal(again, first)
