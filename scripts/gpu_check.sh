#!/usr/bin/env bash
# Device check of the cuda target: run on a machine with an NVIDIA GPU, from the repository root.
#
#   scripts/gpu_check.sh                  # README set-up (make setup), then .venv/bin/python
#   PYTHON=python3 scripts/gpu_check.sh   # an interpreter that has torch (no set-up); where it cannot import
#                                         # mpqbench, the source tree is put on its path (installs nothing)
#   DATA_ROOT=DIR scripts/gpu_check.sh    # Fashion-MNIST IDX files elsewhere than /usr/share/datasets/fashion-mnist
#   IMAGES=x.npy scripts/gpu_check.sh     # the test images saved beforehand on a machine with the data set:
#                                         #   mpqbench bench cuda --save-images x.npy   (256 images, 200 KB)
#
# 1. the cuda target's tests (bit-exact on the CPU and, with a GPU present, on the GPU);
# 2. the kernel benchmark and the target with device=cuda on every committed ResNet-20 run
#    (results/fashion-mnist-resnet20/artifacts/<run_id>/integer_model.npz) on the first 256 Fashion-MNIST test
#    images: bit-exactness, tiers, latency against the FP16/BF16 reconstruction (CUDA events), fraction of the
#    measured int8 torch._int_mm peak.
# Figures go to results/gpu/<device name>/ (cuda-<device>.json and .md, tests.log, bench.log). Exit status
# non-zero if a test fails or a run is not bit-exact.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if [ -z "${PYTHON:-}" ]; then
    make setup
    PYTHON=.venv/bin/python
fi
export PYTHONUNBUFFERED=1
pytest_plugins=()
if ! "$PYTHON" -c 'import mpqbench' 2>/dev/null; then
    # The package maps mpqbench to harness/ (plugins/ and baselines/ inside it): a folder of links gives
    # the same import paths without installing anything. Entry points are then absent, so the test
    # fixtures are loaded explicitly and the benchmark finds the built-in data sets directly.
    src=$(mktemp -d)
    mkdir "$src/mpqbench"
    for f in harness/*; do ln -s "$root/$f" "$src/mpqbench/"; done
    ln -s "$root/plugins" "$src/mpqbench/plugins"
    ln -s "$root/baselines" "$src/mpqbench/baselines"
    export PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}"
    pytest_plugins=(-p mpqbench.testing)
fi

"$PYTHON" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch %s sees no CUDA device" % torch.__version__)'
device=$("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0))')
slug=$(printf '%s' "$device" | tr -cs 'A-Za-z0-9' '-' | sed 's/^-*//; s/-*$//' | tr 'A-Z' 'a-z')
out="results/gpu/$slug"
mkdir -p "$out"
echo "gpu_check: $device, torch $("$PYTHON" -c 'import torch; print(torch.__version__)') -> $out"

status=0
"$PYTHON" -m pytest tests/test_cuda_target.py -q -p no:randomly ${pytest_plugins[@]+"${pytest_plugins[@]}"} 2>&1 | tee "$out/tests.log" \
    || status=1

args=(--device cuda --artifacts results/fashion-mnist-resnet20/artifacts --images 256 --batch 256 --write "$out")
if [ -n "${IMAGES:-}" ]; then
    args+=(--images-npy "$IMAGES")
elif [ -n "${DATA_ROOT:-}" ]; then
    args+=(--data-root "$DATA_ROOT")
fi
"$PYTHON" -m mpqbench.plugins.cuda.bench "${args[@]}" 2>&1 | tee "$out/bench.log" || status=1

echo "gpu_check: figures in $out (exit $status)"
exit $status
