#!/usr/bin/env bash
# GPU benchmark of SANA 1600M (random weights) at 4K and 8K: causal BCLA, guided, independent tiles,
# MultiDiffusion 50 %, full pass; seconds and peak GPU memory per method (bench/bench_gpu.py).
# About 4 minutes on an H100, 6 at most: bench_gpu starts no run that would end past --budget (270 s
# after its start) and this script stops it GPU_TIMEOUT (340) seconds after its own start whatever
# happens. Results are written after every run to bench/results/gpu.{json,md} and, when OUT is set
# (the device machine returns files from there), to $OUT too, with the log as $OUT/gpu.log.
#
# Usage: bash bench/gpu.sh [bench_gpu arguments: --small, --steps N, --budget S, --device cpu, --out DIR]
# Offline machine without diffusers/kornia: fill .whl/ here first (bash bench/gpu_wheels.sh) and carry
# it; where diffusers or kornia is missing this script installs .whl/*.whl into GPU_SITE (default
# /tmp/sana-tt-site) and puts that first on PYTHONPATH. PYTHON picks the interpreter (default python3).
# Without --small it needs a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${GPU_SITE:-/tmp/sana-tt-site}
export PYTHONUNBUFFERED=1
if ! "$PYTHON" -c "import diffusers, kornia" 2> /dev/null && compgen -G ".whl/*.whl" > /dev/null; then
    echo "installing the carried wheels into $SITE: $(cd .whl && echo *.whl)"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
small=0
for arg in "$@"; do [ "$arg" = --small ] && small=1; done
"$PYTHON" - "$small" <<'PY'
import importlib
import sys

import torch

missing = []
for name in ("diffusers", "transformers", "accelerate", "kornia", "safetensors", "einops", "numpy"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}", end="; ")
    except ImportError as error:
        missing.append(f"{name} ({str(error).splitlines()[0]})")
print(f"torch {torch.__version__}, Python {sys.version.split()[0]}", flush=True)
if missing:
    sys.exit(f"bench/gpu.sh: missing {', '.join(missing)}; run 'bash bench/gpu_wheels.sh' and carry .whl.")
if torch.cuda.is_available():
    print(f"GPU: {torch.cuda.get_device_name(0)}", flush=True)
elif sys.argv[1] == "0":
    sys.exit(f"bench/gpu.sh: no CUDA device visible to torch {torch.__version__}; run on an NVIDIA GPU or add --small.")
PY
if [ "$small" = 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
log=/dev/null
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    log=$OUT/gpu.log
fi
status=0
left=$((${GPU_TIMEOUT:-340} - SECONDS))
timeout -k 10 "$left" "$PYTHON" -m bench.bench_gpu "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" = 124 ]; then
    echo "bench/gpu.sh: stopped after ${GPU_TIMEOUT:-340} s; the results hold the runs finished by then."
fi
exit "$status"
