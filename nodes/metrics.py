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
from ..temporal_tiling.metrics import (
    SeamReport,
    heatmap_image,
    mark_measured_lines,
    seam_heatmap,
    seam_report,
)
from ..temporal_tiling.plan import TilePlan
from .common import CATEGORY, TilePlanSocket, cross_check, image_from_engine, image_to_engine
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


def _prefix_problem(values: dict) -> str | None:
    prefix = values["filename_prefix"]
    if prefix is not None and not prefix.strip():
        return "filename_prefix is empty; give a name such as sana_metrics/report."
    return None


class SanaTileMetrics(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTemporalTileMetrics",
            display_name="Quality Metrics",
            category=CATEGORY,
            description=(
                "Measures every line where neighbouring tiles meet (the whole overlap band of each seam, "
                "its worst line as the headline) and judges it against the image's own floor, the same "
                "measure through the tiles' middles: seams pass when their gradient ratio is < 1.2× the "
                "floor's and their CIEDE2000 colour step and tile-to-tile colour drift are < 2 above it, "
                "and no soft band (a darker or tinted stripe as wide as the overlap) repeats at every row "
                "or column of seams. "
                "Also a plan-free line jump, overlap PSNR between unblended tiles and, with a reference or "
                "guide, how closely the image follows it. Shows the verdict on the node and saves a JSON "
                "report to the output folder."
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
                    tooltip="A seamless reference of the same size (a full-canvas pass, or the input "
                    "photo enlarged as the refine saw it): adds seam-zone PSNR and full-image PSNR/SSIM, "
                    "and seams count only beyond what the reference itself shows on the same lines (a "
                    "horizon on a seam line is content, not a seam).",
                ),
                io.Image.Input(
                    "guide",
                    optional=True,
                    tooltip="The low-res pass of the whole scene, any size (e.g. the image fed to the "
                    "Global Context Encoder): adds layout fidelity (the canvas downscaled to the guide's "
                    "size vs the guide, PSNR/SSIM) and each tile's colour against it (ΔE).",
                ),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="The metrics as a markdown table."),
                io.Float.Output(
                    display_name="gradient_ratio",
                    tooltip="Gradient ratio of each seam's worst line, mean over seams (1.0 = like its "
                    "surroundings); compare it with the floor in the report.",
                ),
                io.Float.Output(
                    display_name="delta_e",
                    tooltip="CIEDE2000 colour step at each seam's worst line, mean over seams; compare "
                    "it with the floor in the report.",
                ),
                io.Float.Output(
                    display_name="overlap_psnr",
                    tooltip="Mean PSNR (dB) between neighbouring tiles in their overlap; NaN "
                    "without the tiles input.",
                ),
                io.Image.Output(
                    display_name="heatmap",
                    tooltip="Where the image has steps its surroundings do not explain: seams light up. "
                    "Blue bands: the seam lines measured, green: the floor; cyan: each seam's worst line.",
                ),
                io.Float.Output(
                    display_name="line_jump",
                    tooltip="Plan-free: the worst row or column boundary over the median one (a line "
                    "across the canvas is a peak; ~1–3 on seamless images).",
                ),
                io.Boolean.Output(
                    display_name="seamless",
                    tooltip="True when no seam stands out from the image's own content (the verdict).",
                ),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix: str | None = None) -> bool:
        return cross_check(cls, locals(), _prefix_problem)

    @classmethod
    def execute(
        cls,
        image: torch.Tensor,
        tile_plan: TilePlan,
        filename_prefix: str,
        tiles: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
        guide: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        device = comfy.model_management.get_torch_device()
        canvas = image_to_engine(image).to(device)
        tile_batch = (
            None
            if tiles is None
            else as_tile_batch(image_to_engine(tiles).to(device), tile_plan, canvas.shape[0])
        )
        ref = None if reference is None else image_to_engine(reference).to(device)
        low_res = None if guide is None else image_to_engine(guide).to(device)
        report = seam_report(canvas, tile_plan, tiles=tile_batch, reference=ref, guide=low_res)
        heat = heatmap_image(seam_heatmap(canvas))
        heatmap = image_from_engine(mark_measured_lines(heat, tile_plan, report))
        path = save_report(report, tile_plan, filename_prefix)
        table = report.to_markdown()
        text = f"{table}\n\nsaved {path}"
        return io.NodeOutput(
            table,
            report.gradient_ratio_mean,
            report.delta_e_mean,
            _or_nan(report.overlap_psnr_mean),
            heatmap.to(comfy.model_management.intermediate_device()),
            report.line_jump,
            report.meets_targets(),
            ui={"text": [text], "report_file": [path]},
        )


NODES = [SanaTileMetrics]
