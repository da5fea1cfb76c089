#!/usr/bin/env bash
# CPU rehearsal of the GPU run: bash bench/gpu.sh --small in a clean Python 3.12 environment that holds
# what the GPU machine holds for this pack (torch 2.11.0, transformers, huggingface_hub, tokenizers,
# accelerate, safetensors, einops, numpy, scikit-image, requests, pillow; at that machine's versions where
# they are known) and nothing else, with the carried wheels of .whl/ installed the way bench/gpu.sh
# installs them there.
# Usage: bash bench/gpu_rehearsal.sh   (first run: a 3 GB download, PyPI's torch 2.11.0 for Linux is
# its CUDA build with NVIDIA's libraries, which it loads at import even on a CPU; later runs: about a
# minute). REHEARSAL_VENV picks the environment's folder; PYTHON312 the Python 3.12 to build it from.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${REHEARSAL_VENV:-$HOME/.cache/sana-tt/gpu-rehearsal}
PACKAGES=(torch==2.11.0 transformers==5.17.0 huggingface_hub==1.33.0 tokenizers==0.23.2 accelerate==1.15.0
    safetensors==0.8.0 numpy==2.5.2 einops scikit-image requests pillow)
if [ ! -f "$VENV/ready" ] || [ "$(cat "$VENV/ready")" != "${PACKAGES[*]}" ]; then
    python=""
    for candidate in ${PYTHON312:-} python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
        if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            python=$candidate
            break
        fi
    done
    [ -n "$python" ] || { echo "gpu_rehearsal: no Python 3.12 found; set PYTHON312" >&2; exit 1; }
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --no-cache-dir "${PACKAGES[@]}"
    echo "${PACKAGES[*]}" > "$VENV/ready"
fi
[ -n "$(ls .whl/*.whl 2>/dev/null)" ] || bash bench/gpu_wheels.sh
out=$(mktemp -d)
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHON="$VENV/bin/python" GPU_SITE="$out/site" \
    bash bench/gpu.sh --small --device cpu --dtype bfloat16 --out "$out" "$@"
"$VENV/bin/python" - "$out/gpu.json" <<'PY'
import json
import sys

report = json.load(open(sys.argv[1]))
runs = report["runs"]
bad = [r for r in runs if not r.get("finite")]
print(f"rehearsal: torch {report['machine']['torch']}, {len(runs)} runs, {len(bad)} without a finite canvas")
sys.exit(1 if bad or not runs else 0)
PY
rm -rf "$out"
