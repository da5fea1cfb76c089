"""Split Into Tiles and Seam Blender nodes: any image or latent, tile by tile, and back."""

from __future__ import annotations

import comfy.model_management
import torch
from comfy_api.latest import io

from ..temporal_tiling.blend import COLORS, METHODS, RAMPS, BlendError, split_tiles, stitch
from ..temporal_tiling.plan import TilePlan
from .common import CATEGORY, TilePlanSocket, check_links, image_from_engine, image_to_engine


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
    def validate_inputs(cls, input_types: dict | None = None) -> bool | str:
        linked = input_types or {}
        if mismatch := check_links(linked, {"tile_plan": "TILE_PLAN", "image": "IMAGE", "latent": "LATENT"}):
            return mismatch
        if "image" not in linked and "latent" not in linked:
            return "Connect an image or a latent to cut into tiles."
        return True

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


def as_tile_batch(images: torch.Tensor, plan: TilePlan) -> torch.Tensor:
    """Engine tile batch from either a tile batch or a stitched image (cut into the plan's tiles)."""
    tile_size = (plan.tile_height_px, plan.tile_width_px)
    is_tiles = tuple(images.shape[-2:]) == tile_size and images.shape[0] % len(plan) == 0
    if is_tiles:
        return images
    if images.shape[-2] >= plan.height_px and images.shape[-1] >= plan.width_px:
        return split_tiles(images, plan)
    raise BlendError(
        f"images are {images.shape[0]} × {images.shape[-1]}×{images.shape[-2]} px: neither the plan's tile "
        f"batch ({len(plan)}·B × {tile_size[1]}×{tile_size[0]} px) nor a stitched image of at least "
        f"{plan.width_px}×{plan.height_px} px; use the plan these images were made with."
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
                    default="feather",
                    tooltip="none: paste in order (later tiles win). feather: ramped weights over "
                    "each overlap. laplacian: multi-band blend (hides colour drift, keeps "
                    "detail sharp). poisson: gradient-domain stitch.",
                ),
                io.Combo.Input(
                    "ramp",
                    options=list(RAMPS),
                    default="cosine",
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
            ],
            outputs=[
                io.Image.Output(display_name="IMAGE", tooltip="The stitched, blended canvas."),
            ],
        )

    @classmethod
    def validate_inputs(
        cls, color_correction: str | None = None, input_types: dict | None = None
    ) -> bool | str:
        linked = input_types or {}
        if mismatch := check_links(
            linked, {"images": "IMAGE", "tile_plan": "TILE_PLAN", "reference": "IMAGE"}
        ):
            return mismatch
        if color_correction is not None and color_correction not in COLORS:
            return f"Unknown color_correction {color_correction!r}; choose one of {', '.join(COLORS)}."
        if color_correction == "reference" and "reference" not in linked:
            return "color_correction = reference needs the reference input connected (e.g. the low-res pass)."
        return True

    @classmethod
    def execute(
        cls,
        images: torch.Tensor,
        tile_plan: TilePlan,
        method: str,
        ramp: str,
        color_correction: str,
        reference: torch.Tensor | None = None,
    ) -> io.NodeOutput:
        device = comfy.model_management.get_torch_device()
        tiles = as_tile_batch(image_to_engine(images).to(device), tile_plan)
        ref = None if reference is None else image_to_engine(reference).to(device)
        out = stitch(tiles, tile_plan, method, ramp, color_correction, ref)
        return io.NodeOutput(image_from_engine(out).to(comfy.model_management.intermediate_device()))


NODES = [SanaTileSplit, SanaSeamBlender]
