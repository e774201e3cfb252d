"""The arm-qemu target: aarch64 kernels counted instruction by instruction under qemu-aarch64."""
