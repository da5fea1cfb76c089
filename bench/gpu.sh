#!/usr/bin/env bash
# GPU benchmark of SANA 1600M (random weights) at 4K and 8K: causal BCLA, independent tiles,
# MultiDiffusion 50 % / 25 %, full pass. About 10 min on an H200; writes bench/results/gpu.json and gpu.md.
# Usage: bash bench/gpu.sh [extra bench_gpu arguments, e.g. --steps 20 --budget 900]
# PYTHON picks the interpreter (default: .venv/bin/python, else python3); it needs torch with CUDA plus
# this pack's requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python3
    [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
"$PYTHON" - <<'PY'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("bench/gpu.sh: no CUDA device visible to torch " + torch.__version__ + "; run on an NVIDIA GPU machine.")
print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -m bench.bench_gpu "$@"
cat bench/results/gpu.md
