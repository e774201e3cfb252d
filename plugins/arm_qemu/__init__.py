"""The arm-qemu target: aarch64 kernels counted instruction by instruction under qemu-aarch64."""

from mpqbench import hookimpl
from mpqbench.api import Benchmark
from mpqbench.plugins.arm_qemu.target import ArmQemu


@hookimpl
def mpqbench_register_targets(register):
    register(ArmQemu())


@hookimpl
def mpqbench_register_benchmarks(register):
    from mpqbench.plugins.arm_qemu import bench

    register(Benchmark("arm-kernels", bench.main, (bench.main.__doc__ or "").strip().splitlines()[0]))
