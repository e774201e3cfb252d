"""The cuda target: the IntegerModel on PyTorch integer kernels (``torch._int_mm``), bit-exact, with the
kernel tier and effective precision of every layer; latency against FP16/BF16 when a GPU is present."""

from mpqbench.api import Benchmark, hookimpl
from mpqbench.plugins.cuda.target import CudaTarget


@hookimpl
def mpqbench_register_targets(register):
    register(CudaTarget())


@hookimpl
def mpqbench_register_benchmarks(register):
    from mpqbench.plugins.cuda import bench

    register(Benchmark("cuda", bench.main, (bench.main.__doc__ or "").strip().splitlines()[0]))
