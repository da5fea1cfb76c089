"""The shipped txt2img workflow in a real ComfyUI, Quality Metrics' verdict: the former causal graph
with the lock margin off and on, then the graph as shipped (guided).

Run from the repository root with ComfyUI's Python (not in CI):
``COMFYUI_PATH=~/comfyui ~/comfyui/.venv/bin/python -m bench.txt2img_metrics_figure``. Starts a ComfyUI
server on a free local port with this pack in a temporary base directory, runs
``workflows/api/txt2img_temporal_tiling_api.json`` three times: with ``mode = causal`` and ``lock_margin`` 0
(the workflow before guide-first) and 1, then as shipped; prints each run's Quality Metrics text and writes
``docs/seam_metrics_txt2img.png``: each canvas beside the seam heatmap with the measured bands and each
seam's worst line marked.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from sana_comfy import ComfyServer  # noqa: E402

from temporal_tiling.metrics import heatmap_image, mark_measured_lines, seam_heatmap, seam_report  # noqa: E402
from temporal_tiling.plan import make_plan  # noqa: E402

WORKFLOW = ROOT / "workflows" / "api" / "txt2img_temporal_tiling_api.json"
FIGURE = ROOT / "docs" / "seam_metrics_txt2img.png"
EMBEDDED_COMPRESSION = 8


RUNS = {  # label: sampler inputs changed from the shipped graph
    "causal, lock_margin 0 (the workflow before guide-first)": {"mode": "causal", "lock_margin": 0},
    "causal, lock_margin 1": {"mode": "causal"},
    "guided, as shipped": {},
}


def run(server: ComfyServer, base: Path, changes: dict) -> tuple[Path, str]:
    """One run of the shipped graph with the sampler's ``changes``; the saved canvas and the metrics text."""
    graph = json.loads(WORKFLOW.read_text())
    sampler = next(k for k, n in graph.items() if n["class_type"] == "SanaTemporalCausalSampler")
    graph[sampler]["inputs"].update(changes)
    if graph[sampler]["inputs"]["mode"] != "guided":  # no whole-scene pass: drop its decode and its wires
        graph = {k: n for k, n in graph.items() if n["inputs"].get("samples") != [sampler, 2]}
        for node in graph.values():
            node["inputs"] = {
                k: v for k, v in node["inputs"].items() if not (isinstance(v, list) and v[0] not in graph)
            }
    entry = server.run(graph, timeout=3600)
    assert entry.get("status", {}).get("status_str") == "success", json.dumps(entry)[:2000]
    outputs = entry["outputs"]
    canvas = next(
        outputs[i]["images"][0]
        for i, n in graph.items()
        if n["class_type"] == "SaveImage" and n["inputs"]["filename_prefix"].endswith("txt2img_canvas")
    )
    text = next(
        outputs[i]["text"][0] for i, n in graph.items() if n["class_type"] == "SanaTemporalTileMetrics"
    )
    return base / "output" / canvas["subfolder"] / canvas["filename"], text


def main() -> None:
    comfyui = Path(os.environ["COMFYUI_PATH"]).expanduser()
    planner = json.loads(WORKFLOW.read_text())["5"]["inputs"]
    sizes_px = {f"{k}_px": planner[k] for k in ("width", "height", "tile_width", "tile_height", "overlap")}
    plan = make_plan(
        **sizes_px,
        compression=EMBEDDED_COMPRESSION,
        order=planner["order"],
        seed=planner["shuffle_seed"],
        fit=planner["fit"],
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / "sana_temporal_tiling").symlink_to(ROOT, target_is_directory=True)
        server = ComfyServer(comfyui, base, base / "comfyui.log")
        try:
            runs = [(name, *run(server, base, changes)) for name, changes in RUNS.items()]
        finally:
            server.stop()
        for name, path, text in runs:
            print(f"--- {name}\n{text}\n", flush=True)
            image = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).float().div(255)
            image = image.permute(2, 0, 1)[None]
            report = seam_report(image, plan)
            heat = mark_measured_lines(heatmap_image(seam_heatmap(image)), plan, report)
            excess = report.excess()
            label = (
                f"{name}: {'seamless' if report.meets_targets() else 'seams visible'} - seam "
                f"ratio x{excess['gradient_ratio']:.2f} of the floor, dE {excess['delta_e']:+.2f}, line "
                f"jump {report.line_jump:.2f} ({report.line_jump_axis} at {report.line_jump_position} px)"
            )
            rows.append((label, image, heat))
    scale = 2
    width, height = plan.width_px * scale, plan.height_px * scale
    figure = Image.new("RGB", (2 * width + 30, len(rows) * (height + 20) + 20), "white")
    draw = ImageDraw.Draw(figure)
    for i, (label, image, heat) in enumerate(rows):
        top = 10 + i * (height + 20)
        draw.text((10, top), label, fill="black")
        for j, picture in enumerate((image, heat)):
            pixels = (picture[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            panel = Image.fromarray(pixels).resize((width, height), Image.NEAREST)
            figure.paste(panel, (10 + j * (width + 10), top + 14))
    figure.save(FIGURE, optimize=True)
    print(f"wrote {FIGURE}")


if __name__ == "__main__":
    main()
