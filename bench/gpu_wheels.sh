#!/usr/bin/env bash
# Fills .whl/ (git-ignored) with the wheels the GPU machine lacks, for bench/gpu.sh to install there offline.
# Usage, here (PyPI reachable): bash bench/gpu_wheels.sh
# The GPU machine has Python 3.12 on x86-64 with torch 2.11, transformers, accelerate, huggingface_hub,
# safetensors, einops, numpy, pillow, requests, regex and filelock, but no diffusers and no kornia and no
# network. So: diffusers and kornia (pure Python) and kornia's Rust core kornia_rs (a CPython 3.12 wheel);
# the rest of their requirements are on the machine. diffusers asks for importlib_metadata only below
# Python 3.8. Pinned to the versions the pack is tested with; --no-deps so that nothing else comes along.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(diffusers==0.42.1 kornia==0.9.2 kornia_rs==0.2.0)
mkdir -p .whl
rm -f .whl/*.whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${WHEELS[@]}"
ls -l .whl
tree_mib=$(git ls-files -z | du -cb --files0-from=- | tail -1 | cut -f1)
wheels_mib=$(du -cb .whl/*.whl | tail -1 | cut -f1)
echo "checkout $((tree_mib >> 20)) MiB + wheels $((wheels_mib >> 20)) MiB (the GPU machine takes 64 MiB in all)"
