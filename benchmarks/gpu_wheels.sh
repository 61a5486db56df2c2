#!/usr/bin/env bash
# Download the wheels benchmarks/gpu_check.sh needs on a GPU machine without a package index
# (benchmarks/gpu_wheels.txt) into .whl/, for that machine's Python and torch:
#
#   benchmarks/gpu_wheels.sh                  # Python 3.12, torch 2.11 (the H200 lent, seen 2026-11-30)
#   GPU_PYTHON=3.13 GPU_TORCH=2.12 benchmarks/gpu_wheels.sh
#
# .whl/ is ignored by git; carry it with the tree (the device runner's `carry: [".whl"]`, ~21 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_PYTHON=${GPU_PYTHON:-3.12}
GPU_TORCH=${GPU_TORCH:-2.11}
minor=${GPU_TORCH#2.}
minor=${minor%%.*}
if [[ ! $GPU_TORCH =~ ^2\.[0-9]+(\.[0-9]+)?$ ]] || (( minor < 5 )); then
    echo "gpu_wheels: error: GPU_TORCH=$GPU_TORCH: give the GPU machine's torch as 2.MINOR, 2.5 or later (FlexAttention)" >&2
    exit 2
fi
# torchvision 0.N pairs with torch 2.(N - 15): 0.29 with 2.14, 0.26 with 2.11
wheels=$(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' benchmarks/gpu_wheels.txt | sed "s/^torchvision$/torchvision==0.$((minor + 15)).*/")
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
rm -rf .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl $wheels
du -sh .whl
ls .whl
