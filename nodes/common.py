"""What the pack's nodes share: category, the custom socket types and IMAGE/LATENT conversions.

ComfyUI's IMAGE is [B, H, W, C] in [0, 1]; the engine works on [B, 3, H, W]. Converting in one place
keeps every node a thin adapter.
"""

from __future__ import annotations

from comfy_api.latest import io
from comfy_execution.validation import validate_node_input
from torch import Tensor

CATEGORY = "sana/temporal tiling"

TilePlanSocket = io.Custom("TILE_PLAN")
"""A ``temporal_tiling.plan.TilePlan``: canvas, tiles and generation order."""

GlobalContextSocket = io.Custom("GLOBAL_CONTEXT")
"""A ``nodes.context.ContextSpec``: low-res guide latent and the global-context strengths."""


def image_to_engine(image: Tensor) -> Tensor:
    """ComfyUI IMAGE [B, H, W, C] → engine [B, 3, H, W] (alpha dropped)."""
    return image[..., :3].movedim(-1, 1)


def image_from_engine(image: Tensor) -> Tensor:
    """Engine [B, C, H, W] → ComfyUI IMAGE [B, H, W, C], float32 on the intermediate device, clamped."""
    return image.movedim(1, -1).clamp(0.0, 1.0).float().contiguous()


def vae_compression(vae) -> object:
    """Pixels per latent cell of a ComfyUI VAE. ExtraModels' VAE skips ``comfy.sd.VAE.__init__``, so
    ``spacial_compression_encode`` fails on it; it keeps the factor as ``latent_scale``."""
    try:
        return vae.spacial_compression_encode()
    except AttributeError:
        return getattr(vae, "latent_scale", None)


def check_links(input_types: dict | None, expected: dict[str, str]) -> str | None:
    """Type-check linked optional inputs; needed when ``validate_inputs`` asks for ``input_types``
    (ComfyUI then leaves link type checks to the node). Returns an error message or None."""
    for name, socket in expected.items():
        received = (input_types or {}).get(name)
        if received is not None and not validate_node_input(received, socket):
            return f"{name} expects {socket}, but a {received} is connected."
    return None
