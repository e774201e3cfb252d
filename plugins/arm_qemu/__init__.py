"""The arm-qemu target: aarch64 kernels counted instruction by instruction under qemu-aarch64."""

from mpqbench import hookimpl
from mpqbench.plugins.arm_qemu.target import ArmQemu


@hookimpl
def mpqbench_register_targets(register):
    register(ArmQemu())
