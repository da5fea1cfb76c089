#!/usr/bin/env bash
# The integration tier: the pack inside a real ComfyUI, once beside each ExtraModels fork.
#
# Usage: bash tools/integration.sh [pytest arguments]
#   COMFYUI_PATH       a ComfyUI checkout (default ../shared/comfyui beside the clone)
#   EXTRAMODELS_FORKS  ComfyUI_ExtraModels checkouts, space-separated (default both forks in
#                      ../shared/extramodels); empty skips the ExtraModels tests (fails them with CI=true)
# Without arguments the whole tier runs beside the first fork (with ComfyUI's pinned front end, whose
# experimental Nodes 2.0 draws no node panels, so that renderer's case is left to the next run), the
# browser tests again with the newest front end from PyPI ($NEWEST_FRONTEND, both node renderers), and
# the ExtraModels tests (marker `extramodels`) again beside each other fork; with arguments, one run
# beside the first fork.
# ComfyUI's Python comes from tools/comfy_env.sh (built on first use). The host trees are only read:
# ComfyUI writes into a temporary --base-directory and bytecode goes to PYTHONPYCACHEPREFIX. With
# CI=true a skipped test fails (tests/integration/conftest.py), and so does a run that writes into a
# host tree. The last line counts the integration tests of all runs.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=$(cd .. && pwd)/shared
COMFYUI_PATH=${COMFYUI_PATH:-$shared/comfyui}
read -r -a forks <<<"${EXTRAMODELS_FORKS-$shared/extramodels/city96 $shared/extramodels/efficient-large-model}"
for tree in "$COMFYUI_PATH" "${forks[@]}"; do
    if [ ! -d "$tree" ]; then
        echo "integration: $tree is not a folder: set COMFYUI_PATH / EXTRAMODELS_FORKS" >&2
        exit 1
    fi
done

env_dir=$(bash tools/comfy_env.sh "$COMFYUI_PATH")
cache=$(dirname "$env_dir")
export COMFYUI_PATH PYTHONPYCACHEPREFIX="$cache/pycache"
reports=$(mktemp -d)
trap 'rm -rf "$reports"' EXIT
touch "$reports/start"

# one pytest run: label, EXTRAMODELS_PATH, pytest arguments; its JUnit report is $reports/<label>.xml
status=0
run() {
    local label=$1 fork=$2 rc=0
    shift 2
    echo "integration: $label (COMFYUI_PATH=$COMFYUI_PATH EXTRAMODELS_PATH=${fork:-unset})"
    EXTRAMODELS_PATH=$fork "$env_dir/bin/python" -m pytest -q --durations=10 \
        --junitxml="$reports/$label.xml" "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "integration: $label collected no tests" >&2
    fi
    if [ "$rc" -ne 0 ]; then
        status=1
    fi
}

# The newest front end, kept beside the environment and served with --front-end-root.
NEWEST_FRONTEND=${NEWEST_FRONTEND:-1.58.1}
frontend=$cache/frontend-$NEWEST_FRONTEND
if [ ! -d "$frontend/comfyui_frontend_package/static" ]; then
    "$env_dir/bin/python" -m pip install --quiet --no-deps --target "$frontend.partial-$$" \
        "comfyui-frontend-package==$NEWEST_FRONTEND"
    mv -T "$frontend.partial-$$" "$frontend"
fi

start=$SECONDS
if [ $# -gt 0 ]; then
    run selected "${forks[0]:-}" "$@"
elif [ ${#forks[@]} -eq 0 ]; then
    run all "" tests/integration -k "not nodes2"
    COMFYUI_FRONTEND_ROOT=$frontend/comfyui_frontend_package/static \
        run "frontend-$NEWEST_FRONTEND" "" tests/integration/test_frontend.py
else
    run "all-$(basename "${forks[0]}")" "${forks[0]}" tests/integration -k "not nodes2"
    COMFYUI_FRONTEND_ROOT=$frontend/comfyui_frontend_package/static \
        run "frontend-$NEWEST_FRONTEND" "${forks[0]}" tests/integration/test_frontend.py
    for fork in "${forks[@]:1}"; do
        run "extramodels-$(basename "$fork")" "$fork" tests/integration -m extramodels
    done
fi

if [ "${CI:-}" = true ]; then
    written=$(find "$COMFYUI_PATH" "${forks[@]}" -newer "$reports/start" -print | head -n 5)
    if [ -n "$written" ]; then
        echo "integration: the run wrote into a host tree, which CI gives no write bits:" >&2
        echo "$written" >&2
        status=1
    fi
fi

echo "integration: took $((SECONDS - start)) s"
# Counts from the JUnit reports; errors (a failed fixture, a collection error) count as failed.
"$env_dir/bin/python" - "$reports" <<'EOF'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

total = {"passed": 0, "failed": 0, "skipped": 0}
for report in sorted(Path(sys.argv[1]).glob("*.xml")):
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    failed = int(suite.get("failures")) + int(suite.get("errors"))
    counts = {"passed": tests - failed - skipped, "failed": failed, "skipped": skipped}
    print(f"integration ({report.stem}): " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    total = {k: total[k] + counts[k] for k in total}
print("integration: " + ", ".join(f"{v} {k}" for k, v in total.items()))
EOF
exit "$status"
