#!/usr/bin/env bash
# Prints the path of a Python environment that runs ComfyUI with this pack, building it when missing.
#
# Usage: bash tools/comfy_env.sh COMFYUI_PATH   (progress on stderr, the environment's folder on stdout)
#
# The environment lives outside the clone, in ${SANA_ENV_CACHE:-${XDG_CACHE_HOME:-~/.cache}/sana-temporal-tiling},
# named after a hash of its lock: the Python version and every requirement it installs (the torch
# trio below, ComfyUI's requirements.txt without its torch lines, the pack's requirements.txt and the
# extras). A clone with the same lock reuses it; a change to any of them builds a new one. It is built
# in a temporary folder and moved into place only when complete, so an interrupted build is never used.
# Call its Python as `ENV/bin/python -m ...`: the move leaves the console scripts' shebangs pointing at
# the temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."

comfyui=${1:?usage: bash tools/comfy_env.sh COMFYUI_PATH}
if [ ! -f "$comfyui/requirements.txt" ]; then
    echo "comfy_env: $comfyui/requirements.txt not found: pass a ComfyUI checkout" >&2
    exit 1
fi

# ComfyUI 0.3.64 needs torchvision, and no torchvision release works with torch 2.13.0; 2.14.1 and its
# torchvision 0.29.1 and torchaudio 2.11.0 do. ExtraModels imports timm and protobuf.
TORCH=(torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0)
EXTRAS=(timm protobuf "pytest>=8")
PYTHON=${PYTHON:-python3}
cache=${SANA_ENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sana-temporal-tiling}

# ComfyUI's requirements without the torch packages, which the pins above own (torchsde stays).
comfy_requirements=$(grep -vE '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;].*)?$' "$comfyui/requirements.txt")
lock=$(
    echo "python: $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
    echo "torch: ${TORCH[*]}"
    echo "--- ComfyUI requirements.txt without its torch lines"
    echo "$comfy_requirements"
    echo "--- the pack's requirements.txt"
    cat requirements.txt
    echo "--- extras: ${EXTRAS[*]}"
)
key=$(printf '%s\n' "$lock" | sha256sum | cut -c1-16)
env_dir="$cache/comfy-env-$key"

if [ -f "$env_dir/sana-env.lock" ]; then
    echo "comfy_env: reusing $env_dir" >&2
    echo "$env_dir"
    exit 0
fi

mkdir -p "$cache"
# leftovers of builds that were interrupted (their process is gone)
for partial in "$cache"/comfy-env-*.partial-*; do
    [ -e "$partial" ] || continue
    kill -0 "${partial##*.partial-}" 2>/dev/null || rm -rf "$partial"
done

partial="$env_dir.partial-$$"
log="$cache/comfy-env-$key.log"
trap 'rm -rf "$partial"' EXIT
echo "comfy_env: building $env_dir (log: $log)" >&2
start=$SECONDS
{
    "$PYTHON" -m venv "$partial"
    "$partial/bin/python" -m pip install --upgrade pip
    "$partial/bin/python" -m pip install "${TORCH[@]}"
    printf '%s\n' "$comfy_requirements" >"$partial/comfyui-requirements.txt"
    "$partial/bin/python" -m pip install -r "$partial/comfyui-requirements.txt" -r requirements.txt "${EXTRAS[@]}"
    "$partial/bin/python" -m pip check
} >"$log" 2>&1 || {
    tail -n 30 "$log" >&2
    echo "comfy_env: the build failed: see $log" >&2
    exit 1
}
printf '%s\n' "$lock" >"$partial/sana-env.lock"
"$partial/bin/python" -m pip freeze >"$partial/sana-env.freeze"
# mv -T refuses to move into an existing folder: another build that finished first wins.
mv -T "$partial" "$env_dir" 2>/dev/null || echo "comfy_env: another build finished first" >&2
trap - EXIT
rm -rf "$partial"
echo "comfy_env: built in $((SECONDS - start)) s" >&2
echo "$env_dir"
