"""``mpqbench bench executor``: speed of the reference integer executor."""

from __future__ import annotations

import argparse
import time

import torch

from mpqbench.data.loader import to_float
from mpqbench.errors import UserError
from mpqbench.integer import executor
from mpqbench.integer.export import export
from mpqbench.integer.model import IntegerModel
from mpqbench.pipeline.store import RunStore
from mpqbench.quant.model import QuantModel
from mpqbench.quant.policy import BitPolicy
from mpqbench.system.paths import cache_dir


def main(args: list[str], registry) -> int:
    """Reference executor throughput on a data set's test split (default: ResNet-20, Fashion-MNIST, 10k)."""
    parser = argparse.ArgumentParser(prog="mpqbench bench executor")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--bits", type=int, default=8, help="uniform W/A bits of the calibrated model")
    parser.add_argument("--run", help="time a stored run's integer model on its data set instead (with --out)")
    parser.add_argument("--out", default="results")
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=executor.BATCH, help="images per pass of the executor")
    opts = parser.parse_args(args)
    if opts.images < 1 or opts.batch < 1:
        raise UserError("--images and --batch must be at least 1")
    store = RunStore(opts.out)
    record = store.find(opts.run) if opts.run else None
    data = registry.dataset(record.spec["dataset"] if record else opts.dataset).load(None, cache_dir() / "data")
    x = data.test.x[:opts.images].numpy()
    if record:
        imodel = IntegerModel.load(store.integer_model(record))
        what = f"run {record.id} ({record.label})"
    else:
        imodel = _calibrated(registry.model(opts.model), data, opts.bits)
        what = (f"{opts.model} W{opts.bits}A{opts.bits} (random weights, BN and steps calibrated on 512 "
                "training images: speed does not depend on the weights' values)")
    executor.run(imodel, x[:64])  # warm-up: unpack weights, touch code paths
    start = time.perf_counter()
    executor.run(imodel, x, batch=opts.batch)
    seconds = time.perf_counter() - start
    print(f"reference executor, {what}")
    print(f"{len(x)} {data.name} test images in {seconds:.1f} s = {len(x) / seconds:.0f} images/s "
          f"on {torch.get_num_threads()} threads, batches of {opts.batch}")
    return 0


def _calibrated(entry, data, bits: int) -> IntegerModel:
    torch.manual_seed(0)
    model = entry.build(data.shape)
    layout = entry.layout(model)
    fixed = {layout.first: (8, 8), layout.last: (8, 8)}
    qmodel = QuantModel(model, layout, BitPolicy.uniform(layout, bits, bits, fixed)).train()
    with torch.no_grad():
        for i in range(0, 512, 128):
            qmodel(to_float(data.train.x[i:i + 128]))
    return export(qmodel, (data.shape.channels, data.shape.size, data.shape.size))
