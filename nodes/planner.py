"""Tile Planner node: cut a canvas into equal tiles and fix the order they are generated in."""

from __future__ import annotations

import colorsys

import comfy.model_management
import numpy as np
import torch
import torch.nn.functional as F
from comfy_api.latest import io
from PIL import Image, ImageDraw, ImageFont

from ..temporal_tiling.options import DEFAULT_FIT, MAX_SIDE, MAX_TILES, WARN_TILES
from ..temporal_tiling.plan import FITS, ORDERS, PlanError, TilePlan, check_plan, make_plan
from .common import (
    CATEGORY,
    UNLINKED,
    TilePlanSocket,
    compression_problem,
    connected,
    cross_check,
    vae_compression,
)

PREVIEW_LONG_SIDE = 512
"""Long side (px) of the plan preview image."""
MEMORY_HEADROOM = 0.8
"""Share of the free memory an auto-sized tile may take (the rest stays for VAE, previews, other nodes)."""


def auto_tile_cells(model, canvas_h: int, canvas_w: int, batch: int = 1) -> tuple[int, int]:
    """Largest tile (latent cells) that fits the free memory ComfyUI reports and the model's native size.

    Memory per tile comes from ComfyUI's own estimate for the model (``memory_required`` of a CFG
    batch), plus the weights when they are not loaded yet. SANA checkpoints are trained at a fixed
    size (``config.sample_size`` cells); tiles larger than that lose quality, so that caps the tile too.
    """
    device = model.load_device
    free = comfy.model_management.get_free_memory(device)
    loaded = any(m.model is model.model for m in comfy.model_management.loaded_models())
    weights = 0 if loaded else model.model_size()
    budget = free * MEMORY_HEADROOM - weights
    channels = model.get_model_object("latent_format").latent_channels
    native = getattr(getattr(model.get_model_object("diffusion_model"), "config", None), "sample_size", None)
    side = max(canvas_h, canvas_w) if not native else min(int(native), max(canvas_h, canvas_w))
    for n in range(side, 0, -1):
        h, w = min(n, canvas_h), min(n, canvas_w)
        if model.memory_required([2 * batch, channels, h, w]) <= budget:
            return h, w
    raise PlanError(
        f"Not even a one-cell tile fits the {free / 2**30:.2f} GiB free on {device}; free memory "
        "(close other models) or set tile_size to manual."
    )


def _compression(vae, widget: int) -> int:
    """Pixels per latent cell: the connected VAE's own factor, else the widget."""
    if vae is None:
        return int(widget)
    factor = vae_compression(vae)
    if not isinstance(factor, int) or factor <= 0:
        raise PlanError(f"The connected VAE reports no usable spatial compression ({factor!r}).")
    return factor


def _plan_problem(values: dict) -> str | None:
    """What is wrong with the plan the widgets describe, as far as it is known before the run (values
    from links are None: an image or latent for the size, a VAE for the compression, widgets turned into
    inputs; they are checked at run)."""
    tile_size, overlap, compression = values["tile_size"], values["overlap"], values["compression"]
    if tile_size == "auto" and not connected(values["model"]):
        return "tile_size = auto needs the model input connected (its memory estimate sets the tile size)."
    if overlap is None:
        return None
    c = 1 if connected(values["vae"]) or compression is None else compression
    width, height, tile_width, tile_height = (
        values[k] for k in ("width", "height", "tile_width", "tile_height")
    )
    sized = not connected(values["image"]) and not connected(values["latent"]) and None not in (width, height)
    canvas = (width, height) if sized else None
    tile = (
        (tile_width, tile_height) if tile_size == "manual" and None not in (tile_width, tile_height) else None
    )
    canvas, tile = canvas or tile, tile or canvas
    try:
        if canvas is not None:
            check_plan(
                width_px=canvas[0],
                height_px=canvas[1],
                tile_width_px=tile[0],
                tile_height_px=tile[1],
                overlap_px=overlap,
                compression=c,
                fit=values["fit"] or DEFAULT_FIT,
                max_tiles=values["max_tiles"] or MAX_TILES,
            )
        elif overlap % c:
            check_plan(
                width_px=c, height_px=c, tile_width_px=c, tile_height_px=c, overlap_px=overlap, compression=c
            )
    except PlanError as error:
        return str(error)
    return None


def render_preview(plan: TilePlan, long_side: int = PREVIEW_LONG_SIDE) -> torch.Tensor:
    """Picture of the plan as an IMAGE [1, H, W, 3]: overlap shading, tile outlines, generation order."""
    scale = long_side / max(plan.height_px, plan.width_px)
    height, width = max(1, round(plan.height_px * scale)), max(1, round(plan.width_px * scale))
    coverage = plan.coverage()[None, None]
    shade = F.interpolate(coverage, size=(height, width), mode="nearest")[0, 0]
    grey = (0.16 + 0.12 * (shade - 1).clamp(0, 3)).numpy()  # brighter where more tiles overlap
    picture = Image.fromarray((np.stack([grey] * 3, -1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, int(min(height, width) / max(plan.rows, plan.cols) / 4)))
    cells = scale * plan.compression
    for tile in plan.tiles:
        hue = tile.index / max(1, len(plan))
        color = tuple(int(255 * v) for v in colorsys.hsv_to_rgb(hue, 0.75, 1.0))
        x0, y0 = tile.x * cells, tile.y * cells
        x1, y1 = (tile.x + tile.width) * cells - 1, (tile.y + tile.height) * cells - 1
        draw.rectangle((x0, y0, x1, y1), outline=color, width=2)
        draw.text(((x0 + x1) / 2, (y0 + y1) / 2), str(tile.index + 1), fill=color, font=font, anchor="mm")
    return torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)[None]


def summary(plan: TilePlan) -> str:
    """One line for the node: grid, tile size, overlap, token cost."""
    return (
        f"{plan.cols}×{plan.rows} tiles of {plan.tile_width_px}×{plan.tile_height_px} px on "
        f"{plan.width_px}×{plan.height_px} px, overlap {plan.overlap * plan.compression} px, "
        f"{plan.order} order, {plan.token_amplification:.2f}× tokens"
        + (
            f"; {len(plan)} tiles is a long run (each tile samples every step)"
            if len(plan) > WARN_TILES
            else ""
        )
    )


class SanaTilePlanner(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTemporalTilePlanner",
            display_name="Tile Planner",
            category=CATEGORY,
            description=(
                "Cuts the canvas into equal tiles and fixes the order they are generated in, like the frames "
                "of a video. Sizes come from the widgets, or from a connected image/latent."
            ),
            inputs=[
                io.Int.Input(
                    "width",
                    default=2048,
                    min=8,
                    max=MAX_SIDE,
                    step=8,
                    tooltip="Canvas width in pixels (ignored when an image or latent is connected).",
                ),
                io.Int.Input(
                    "height",
                    default=1024,
                    min=8,
                    max=MAX_SIDE,
                    step=8,
                    tooltip="Canvas height in pixels (ignored when an image or latent is connected).",
                ),
                io.Int.Input(
                    "tile_width",
                    default=1024,
                    min=8,
                    max=MAX_SIDE,
                    step=8,
                    tooltip="Tile width in pixels; every tile has the same size (see fit).",
                ),
                io.Int.Input(
                    "tile_height",
                    default=1024,
                    min=8,
                    max=MAX_SIDE,
                    step=8,
                    tooltip="Tile height in pixels; every tile has the same size (see fit).",
                ),
                io.Int.Input(
                    "overlap",
                    default=64,
                    min=0,
                    max=8192,
                    step=8,
                    tooltip="Least overlap between neighbouring tiles in pixels. Causal tiling only needs "
                    "a lock band (SANA: 64 px = 2 latent cells); MultiDiffusion wants a quarter to a half "
                    "of the tile. Must be smaller than the tile.",
                ),
                io.Combo.Input(
                    "fit",
                    options=list(FITS),
                    default=DEFAULT_FIT,
                    tooltip="grow: keep the tile count of an overlap-free grid and enlarge every tile "
                    "just enough for the overlap (fewest tokens). shift: keep the tile size exactly; "
                    "edge tiles shift inward, which can add a row and a column of tiles.",
                ),
                io.Combo.Input(
                    "order",
                    options=list(ORDERS),
                    default="raster",
                    tooltip="Generation order: raster (row by row), serpentine (rows alternate "
                    "direction), spiral (edges inward), center_out, random (uses shuffle_seed).",
                ),
                io.Int.Input(
                    "shuffle_seed",
                    default=0,
                    min=0,
                    max=2**31 - 1,
                    tooltip="Shuffles the tiles for order = random; no effect otherwise.",
                ),
                io.Int.Input(
                    "compression",
                    default=32,
                    min=1,
                    max=64,
                    tooltip="Pixels per latent cell when no VAE is connected (SANA's DC-AE: 32, "
                    "SD/Flux VAEs: 8). All sizes must be multiples of it. A connected VAE's "
                    "own factor is used instead.",
                ),
                io.Combo.Input(
                    "tile_size",
                    options=["manual", "auto"],
                    default="manual",
                    tooltip="manual: tile_width/tile_height. auto: the largest tile that fits the "
                    "free memory ComfyUI reports and the model's native size (needs model).",
                ),
                io.Int.Input(
                    "max_tiles",
                    default=MAX_TILES,
                    min=1,
                    max=65536,
                    optional=True,
                    tooltip=f"Ceiling on the tile count: every tile is a whole sampling run, so a plan "
                    f"with more tiles is refused before anything runs (above {WARN_TILES} the summary "
                    "warns). Raise it only for a run you mean to wait for.",
                ),
                io.Image.Input(
                    "image",
                    optional=True,
                    tooltip="Take the canvas size from this image (e.g. the picture to upscale).",
                ),
                io.Latent.Input(
                    "latent",
                    optional=True,
                    tooltip="Take the canvas size from this latent (cells × compression).",
                ),
                io.Vae.Input(
                    "vae",
                    optional=True,
                    tooltip="Read the compression factor from this VAE instead of the widget.",
                ),
                io.Model.Input(
                    "model",
                    optional=True,
                    tooltip="Needed by tile_size = auto: its memory estimate and native size.",
                ),
            ],
            outputs=[
                TilePlanSocket.Output(
                    display_name="TILE_PLAN",
                    tooltip="The tile plan: connect it to the sampler, splitter, blender "
                    "and metrics that work on this canvas.",
                ),
                io.Image.Output(
                    display_name="preview",
                    tooltip="The plan drawn as an image: tile outlines, generation order, "
                    "brighter where tiles overlap.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        width: int | None = None,
        height: int | None = None,
        tile_width: int | None = None,
        tile_height: int | None = None,
        overlap: int | None = None,
        fit: str | None = None,
        order: str | None = None,
        compression: int | None = None,
        tile_size: str | None = None,
        max_tiles: int | None = None,
        image=UNLINKED,
        latent=UNLINKED,
        vae=UNLINKED,
        model=UNLINKED,
    ) -> bool:
        """Refuse impossible plans before the run (shuffle_seed is left to ComfyUI's own checks)."""
        return cross_check(cls, locals(), _plan_problem)

    @classmethod
    def execute(
        cls,
        width: int,
        height: int,
        tile_width: int,
        tile_height: int,
        overlap: int,
        fit: str,
        order: str,
        shuffle_seed: int,
        compression: int,
        tile_size: str,
        max_tiles: int = MAX_TILES,
        image: torch.Tensor | None = None,
        latent: dict | None = None,
        vae=None,
        model=None,
    ) -> io.NodeOutput:
        c = _compression(vae, compression)
        if model is not None and (mismatch := compression_problem(model, c)) is not None:
            raise PlanError(mismatch)
        if latent is not None:
            height, width = (int(s) * c for s in latent["samples"].shape[-2:])
        elif image is not None:
            height, width = int(image.shape[1]), int(image.shape[2])
            if height % c or width % c:
                raise PlanError(
                    f"The connected image is {width}×{height} px, not a multiple of the compression factor "
                    f"{c}; scale it to {width // c * c}×{height // c * c} px (e.g. with Upscale Image) first."
                )
        if tile_size == "auto":
            if model is None:
                raise PlanError("tile_size = auto needs the model input connected.")
            if width % c or height % c:
                check_plan(
                    width_px=width,
                    height_px=height,
                    tile_width_px=width,
                    tile_height_px=height,
                    overlap_px=overlap,
                    compression=c,
                )  # raises the divisibility message
            th, tw = auto_tile_cells(model, height // c, width // c)
            tile_height, tile_width = th * c, tw * c
        plan = make_plan(
            width_px=width,
            height_px=height,
            tile_width_px=tile_width,
            tile_height_px=tile_height,
            overlap_px=overlap,
            compression=c,
            order=order,
            seed=shuffle_seed,
            fit=fit,
            max_tiles=max_tiles,
        )
        shown = {
            "canvas": [plan.width_px, plan.height_px],
            "compression": plan.compression,
            "tiles": [[t.x * c, t.y * c, t.width * c, t.height * c] for t in plan.tiles],
            "summary": summary(plan),
        }
        return io.NodeOutput(plan, render_preview(plan), ui={"sana_tile_plan": [shown]})


NODES = [SanaTilePlanner]
