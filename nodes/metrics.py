"""Quality Metrics node: seam numbers of a stitched image, shown on the node and saved as JSON."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io

from ..temporal_tiling.atomic import write_atomic
from ..temporal_tiling.metrics import SeamReport, heatmap_image, seam_heatmap, seam_report
from ..temporal_tiling.plan import TilePlan
from .common import CATEGORY, TilePlanSocket, check_links, image_from_engine, image_to_engine
from .tiles import as_tile_batch


def save_report(report: SeamReport, plan: TilePlan, prefix: str) -> str:
    """Write the report as JSON into ComfyUI's output folder, all or nothing.

    Returns the path relative to the output folder. The name follows ComfyUI's ``prefix_00001_`` counter.
    """
    output_dir = folder_paths.get_output_directory()
    folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, output_dir)
    os.makedirs(folder, exist_ok=True)
    filename = f"{name}_{counter:05}_.json"
    payload = {"report": report.to_dict(), "plan": json.loads(plan.to_json())}
    write_atomic(Path(folder) / filename, json.dumps(payload, indent=2).encode())
    return os.path.join(subfolder, filename)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


class SanaTileMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTileMetrics",
            display_name="Quality Metrics",
            category=CATEGORY,
            description=(
                "Measures the seams of a stitched image along the plan's seam lines: gradient ratio (1.0 = "
                "invisible), CIEDE2000 colour step, overlap PSNR between unblended tiles, seam-zone PSNR "
                "against a reference. Shows the numbers on the node and saves a JSON report to the output "
                "folder. Targets: ratio < 1.2, ΔE < 2, PSNR > 40 dB."
            ),
            inputs=[
                io.Image.Input("image", tooltip="The stitched canvas to measure."),
                TilePlanSocket.Input("tile_plan", tooltip="The plan the canvas was generated with."),
                io.String.Input(
                    "filename_prefix",
                    default="sana_metrics/report",
                    tooltip="Where the JSON report goes, relative to ComfyUI's output folder.",
                ),
                io.Image.Input(
                    "tiles",
                    optional=True,
                    tooltip="The unblended tile batch (from the sampler's tiles output, decoded): "
                    "adds overlap PSNR, how far neighbouring tiles agree.",
                ),
                io.Image.Input(
                    "reference",
                    optional=True,
                    tooltip="A seamless reference of the same size (e.g. a full-canvas pass): adds "
                    "seam-zone PSNR and full-image PSNR/SSIM.",
                ),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="The metrics as a markdown table."),
                io.Float.Output(
                    display_name="gradient_ratio",
                    tooltip="Mean seam gradient ratio (1.0 = invisible, independent tiles 2–3).",
                ),
                io.Float.Output(
                    display_name="delta_e",
                    tooltip="Mean CIEDE2000 colour difference across the seams (< 2 unnoticeable).",
                ),
                io.Float.Output(
                    display_name="overlap_psnr",
                    tooltip="Mean PSNR (dB) between neighbouring tiles in their overlap; NaN "
                    "without the tiles input.",
                ),
                io.Image.Output(
                    display_name="heatmap",
                    tooltip="Where the image has steps its surroundings do not explain: seams light up.",
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(
        cls, filename_prefix: str | None = None, input_types: dict | None = None
    ) -> bool | str:
        linked = input_types or {}
        expected = {"image": "IMAGE", "tile_plan": "TILE_PLAN", "tiles": "IMAGE", "reference": "IMAGE"}
        if (mismatch := check_links(linked, expected)) is not None:
            return mismatch
        if filename_prefix is not None and not filename_prefix.strip():
            return "filename_prefix is empty; give a name such as sana_metrics/report."
        return True

    @classmethod
    def execute(
        cls,
        image: torch.Tensor,
        tile_plan: TilePlan,
        filename_prefix: str,
        tiles: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        device = comfy.model_management.get_torch_device()
        canvas = image_to_engine(image).to(device)
        tile_batch = (
            None
            if tiles is None
            else as_tile_batch(image_to_engine(tiles).to(device), tile_plan, canvas.shape[0])
        )
        ref = None if reference is None else image_to_engine(reference).to(device)
        report = seam_report(canvas, tile_plan, tiles=tile_batch, reference=ref)
        heatmap = image_from_engine(heatmap_image(seam_heatmap(canvas)))
        path = save_report(report, tile_plan, filename_prefix)
        table = report.to_markdown()
        verdict = "meets the seam targets" if report.meets_targets() else "misses the seam targets"
        text = f"{table}\n\n{verdict}; saved {path}"
        return io.NodeOutput(
            table,
            report.gradient_ratio_mean,
            report.delta_e_mean,
            _or_nan(report.overlap_psnr_mean),
            heatmap.to(comfy.model_management.intermediate_device()),
            ui={"text": [text], "report_file": [path]},
        )


NODES = [SanaTileMetrics]
