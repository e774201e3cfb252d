"""``mpqbench bench qat-step``: the cost of a fake-quant training step against an FP32 step.

The same model, batch and optimizer step as the Trainer (SGD, channels-last input), timed in one process:
FP32, uniform W8A8 and W4A4 (first/last at 8 bits), after warm-up steps, median over timed steps; each
quantized model with LSQ in its three forms: PyTorch's fused operator (``lsq_grad=torch``), the paper's
gradient eager (``lsq_grad=paper``) and compiled (``fake_quant=compiled``, the recipes' default). The
compiled rows' warm-up includes the one-off compilation, which is reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

from mpqbench.data.splits import ImageShape
from mpqbench.quant.model import QuantModel
from mpqbench.quant.policy import BitPolicy
from mpqbench.quant.quantizers import configure_lsq

FORMS = (("torch", "eager"), ("paper", "eager"), ("paper", "compiled"))


def _step_ms(model, x, y, warmup: int, steps: int) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    model.train()
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(args: list[str], registry) -> int:
    """QAT step time against an FP32 step (W8A8, W4A4) on ResNet-20 at 28x28, batch 128, in one process."""
    parser = argparse.ArgumentParser(prog="mpqbench bench qat-step")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=28, help="image side (Fashion-MNIST: 28)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    opts = parser.parse_args(args)
    torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    entry = registry.model(opts.model)
    shape = ImageShape(1, opts.size, 10)
    fp32 = entry.build(shape).to(memory_format=torch.channels_last)
    layout = entry.layout(fp32)
    x = torch.rand(opts.batch, 1, opts.size, opts.size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (opts.batch,))
    fixed = {layout.first: (8, 8), layout.last: (8, 8)}
    base = _step_ms(fp32, x, y, opts.warmup, opts.steps)
    print(f"{opts.model}, batch {opts.batch}, {opts.size}x{opts.size}, {opts.threads} threads, median of "
          f"{opts.steps} steps after {opts.warmup} warm-up")
    print(f"FP32   {base:7.1f} ms/step")
    for bits in (8, 4):
        for gradient, mode in FORMS:
            qmodel = QuantModel(fp32, layout, BitPolicy.uniform(layout, bits, bits, fixed))
            configure_lsq(qmodel, gradient, mode)
            start = time.perf_counter()
            ms = _step_ms(qmodel, x, y, opts.warmup, opts.steps)
            total = time.perf_counter() - start
            extra = f"   (compile + warm-up {total - ms * opts.steps / 1000:.0f} s)" if mode == "compiled" else ""
            print(f"W{bits}A{bits} lsq_grad={gradient:<5} {mode:<8} {ms:7.1f} ms/step   {ms / base:.2f}x FP32{extra}")
    return 0
