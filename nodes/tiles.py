"""Split Into Tiles and Seam Blender nodes: any image or latent, tile by tile, and back."""

from __future__ import annotations

import comfy.model_management
import torch
from comfy_api.latest import io

from ..temporal_tiling.blend import COLORS, METHODS, RAMPS, BlendError, split_tiles, stitch
from ..temporal_tiling.options import DEFAULT_RAMP, DEFAULT_STITCH
from ..temporal_tiling.plan import TilePlan
from .common import (
    CATEGORY,
    UNLINKED,
    TilePlanSocket,
    connected,
    cross_check,
    image_from_engine,
    image_to_engine,
)


def _source_problem(values: dict) -> str | None:
    if not connected(values["image"]) and not connected(values["latent"]):
        return "Connect an image or a latent to cut into tiles."
    return None


def _reference_problem(values: dict) -> str | None:
    if values["color_correction"] == "reference" and not connected(values["reference"]):
        return "color_correction = reference needs the reference input connected (e.g. the low-res pass)."
    return None


class SanaTileSplit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTemporalTileSplit",
            display_name="Split Into Tiles",
            category=CATEGORY,
            description=(
                "Cuts an image or latent into the plan's tiles: one batch, tile-major, in plan order, all "
                "tiles the same size. Process the batch with any nodes, then stitch it with Seam Blender."
            ),
            inputs=[
                TilePlanSocket.Input("tile_plan", tooltip="The plan made for this image's size."),
                io.Image.Input(
                    "image", optional=True, tooltip="Image to cut (its size must cover the plan)."
                ),
                io.Latent.Input(
                    "latent",
                    optional=True,
                    tooltip="Latent to cut (plan cells; from the same VAE the plan was made for).",
                ),
            ],
            outputs=[
                io.Image.Output(
                    display_name="image_tiles",
                    tooltip="The image's tiles as a batch (one black tile if no image is connected).",
                ),
                io.Latent.Output(
                    display_name="latent_tiles",
                    tooltip="The latent's tiles as a batch (one zero tile if no latent is connected).",
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, image=UNLINKED, latent=UNLINKED) -> bool:
        return cross_check(cls, locals(), _source_problem)

    @classmethod
    def execute(
        cls, tile_plan: TilePlan, image: torch.Tensor | None = None, latent: dict | None = None
    ) -> io.NodeOutput:
        if image is None and latent is None:
            raise BlendError("Connect an image or a latent to cut into tiles.")
        image_tiles = torch.zeros(1, tile_plan.tile_height_px, tile_plan.tile_width_px, 3)
        if image is not None:
            image_tiles = image_from_engine(split_tiles(image_to_engine(image), tile_plan))
        latent_tiles = {"samples": torch.zeros(1, 1, tile_plan.tile_height, tile_plan.tile_width)}
        if latent is not None:
            latent_tiles = {"samples": split_tiles(latent["samples"], tile_plan, scale=1)}
        return io.NodeOutput(image_tiles, latent_tiles)


def as_tile_batch(images: torch.Tensor, plan: TilePlan, canvases: int) -> torch.Tensor:
    """Engine tile batch from a batch of ``canvases`` × the plan's tiles or ``canvases`` stitched images
    (cut into the plan's tiles). The count is given, not guessed: 4 tiles fit a 2-tile plan as 2 canvases
    too, and stitching another plan's tiles that way gives wrong pictures without any error."""
    tile_size = (plan.tile_height_px, plan.tile_width_px)
    count = images.shape[0]
    if tuple(images.shape[-2:]) == tile_size and count == canvases * len(plan):
        return images
    stitched = images.shape[-2] >= plan.height_px and images.shape[-1] >= plan.width_px
    if stitched and count == canvases:
        return split_tiles(images, plan)
    raise BlendError(
        f"images are {count} × {images.shape[-1]}×{images.shape[-2]} px: neither the plan's tile batch "
        f"({canvases} × {len(plan)} tiles of {tile_size[1]}×{tile_size[0]} px) nor {canvases} stitched "
        f"image(s) of at least {plan.width_px}×{plan.height_px} px; connect the plan these images were made "
        "with, or set batch_size to the number of canvases in the batch."
    )


class SanaSeamBlender(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTemporalSeamBlender",
            display_name="Seam Blender",
            category=CATEGORY,
            description=(
                "Stitches a tile batch into the canvas and hides the seams: feather (weighted ramp), "
                "laplacian (multi-band), poisson (gradient domain); optional colour matching of the tiles "
                "first (apt: to the tiles already placed, in Lab; reference: low frequencies of a guide)."
            ),
            inputs=[
                io.Image.Input(
                    "images",
                    tooltip="The decoded tile batch (tile-major, plan order), or an already "
                    "stitched image (cut into the plan's tiles first).",
                ),
                TilePlanSocket.Input("tile_plan", tooltip="The plan the tiles were made with."),
                io.Combo.Input(
                    "method",
                    options=list(METHODS),
                    default=DEFAULT_STITCH,
                    tooltip="none: paste in order (later tiles win). feather: ramped weights over "
                    "each overlap. laplacian: multi-band blend (hides colour drift, keeps "
                    "detail sharp). poisson: gradient-domain stitch.",
                ),
                io.Combo.Input(
                    "ramp",
                    options=list(RAMPS),
                    default=DEFAULT_RAMP,
                    tooltip="Shape of the feather weights across an overlap (also used by "
                    "laplacian and poisson).",
                ),
                io.Combo.Input(
                    "color_correction",
                    options=list(COLORS),
                    default="none",
                    tooltip="apt: match each tile's Lab mean/std to what is already placed, in plan "
                    "order. reference: take each tile's low frequencies from the reference "
                    "image.",
                ),
                io.Image.Input(
                    "reference",
                    optional=True,
                    tooltip="Global image (e.g. the low-res pass) for color_correction = reference; "
                    "same aspect ratio as the canvas.",
                ),
                io.Int.Input(
                    "batch_size",
                    default=1,
                    min=1,
                    max=64,
                    optional=True,
                    tooltip="Canvases in the batch (the sampler's batch_size): images must hold "
                    "batch_size × the plan's tiles, or batch_size stitched images.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="IMAGE", tooltip="The stitched, blended canvas."),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        method: str | None = None,
        ramp: str | None = None,
        color_correction: str | None = None,
        reference=UNLINKED,
    ) -> bool:
        return cross_check(cls, locals(), _reference_problem)

    @classmethod
    def execute(
        cls,
        images: torch.Tensor,
        tile_plan: TilePlan,
        method: str,
        ramp: str,
        color_correction: str,
        reference: torch.Tensor | None = None,
        batch_size: int = 1,
    ) -> io.NodeOutput:
        device = comfy.model_management.get_torch_device()
        tiles = as_tile_batch(image_to_engine(images).to(device), tile_plan, batch_size)
        ref = None if reference is None else image_to_engine(reference).to(device)
        out = stitch(tiles, tile_plan, method, ramp, color_correction, ref)
        return io.NodeOutput(image_from_engine(out).to(comfy.model_management.intermediate_device()))


NODES = [SanaTileSplit, SanaSeamBlender]
