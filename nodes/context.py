"""Global Context Encoder node: what a low-res pass of the whole scene tells every tile.

The node encodes the guide (an IMAGE through the VAE, or a LATENT as is) and carries the strengths.
The ``bcla_seed`` pass, which runs the model once on the noised guide, happens inside the Causal SANA
Sampler: it needs the sampler's own BCLA cache, model, prompts and cfg, so both CFG branches get the
seed that matches what the tiles will read.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..temporal_tiling.context import ContextError, ContextSettings, guide_from_image, scaled_size
from ..temporal_tiling.options import (
    DEFAULT_GUIDE_BCLA_SEED,
    DEFAULT_GUIDE_SKIP_POWER,
    DEFAULT_GUIDE_SKIP_RESIDUAL,
    DEFAULT_GUIDE_STATS,
)
from .common import CATEGORY, UNLINKED, GlobalContextSocket, connected, cross_check, vae_compression


def _guide_problem(values: dict) -> str | None:
    image, latent, vae = (connected(values[k]) for k in ("image", "latent", "vae"))
    if image == latent:
        return "Connect exactly one guide: an image (with a vae) or a latent."
    if image and not vae:
        return "An image guide needs the vae input connected to encode it."
    return None


class SanaGlobalContext(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTemporalGlobalContext",
            display_name="Global Context Encoder",
            category=CATEGORY,
            description=(
                "Gives every tile a view of the whole scene from a low-res pass (same aspect ratio as the "
                "canvas): skip_residual pulls each tile's prediction toward the guide (DemoFusion; by "
                "default held to the last step, as mode = guided does), stats matches each tile's colour "
                "statistics to the guide (AdaIN), bcla_seed seeds the BCLA cache with the guide's own "
                "attention statistics. Strengths combine; 0 turns one off. With tile prompts, give a guide "
                "that shows the told objects where the tiles' words put them: the pull keeps its layout."
            ),
            inputs=[
                io.Float.Input(
                    "skip_residual",
                    default=DEFAULT_GUIDE_SKIP_RESIDUAL,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="DemoFusion skip residual: pull of each tile's low band (what the guide "
                    "carries) toward the guide's; finer detail stays the tile's. With skip_power 0 it is "
                    "held to the last step, so tiles keep the guide's layout and no tile paints its own "
                    "gradient or, with tile prompts, its own copy of an object. 0 = off.",
                ),
                io.Float.Input(
                    "stats",
                    default=DEFAULT_GUIDE_STATS,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Move each tile's per-channel mean/std (the guide's frequency band) "
                    "toward the guide crop's; fights colour drift between tiles.",
                ),
                io.Float.Input(
                    "bcla_seed",
                    default=DEFAULT_GUIDE_BCLA_SEED,
                    min=0.0,
                    max=4.0,
                    step=0.05,
                    tooltip="β in S_ctx = α·S_cache + β·S_seed: the guide's own linear-attention "
                    "statistics join every tile's context (needs a BCLA Cache MODEL).",
                ),
                io.Float.Input(
                    "skip_power",
                    default=DEFAULT_GUIDE_SKIP_POWER,
                    min=0.0,
                    max=10.0,
                    step=0.1,
                    tooltip="Exponent of the skip-residual cosine decay with noise: 0 holds the pull "
                    "to the last step (the default, as mode = guided); DemoFusion uses 3, which lets go "
                    "in the late steps, where causal tiles then paint their own bands and objects.",
                ),
                io.Float.Input(
                    "seed_sigma",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Noise level of the bcla_seed pass over the guide. 0 = every noise level "
                    "of the sampler's schedule, one low-res model call each, so each step's tiles "
                    "read the guide's statistics at their own level (as the benchmark measures it).",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=2**63 - 1,
                    control_after_generate=True,
                    tooltip="Noise seed of the bcla_seed pass.",
                ),
                io.Int.Input(
                    "guide_long_side",
                    default=512,
                    min=0,
                    max=4096,
                    step=8,
                    tooltip="Resize an input image to this many pixels on its long side before "
                    "encoding (a cheap guide); 0 keeps its size.",
                ),
                io.Image.Input(
                    "image",
                    optional=True,
                    tooltip="Low-res picture of the whole scene (needs vae); e.g. a 1K "
                    "generation or the image being upscaled.",
                ),
                io.Vae.Input("vae", optional=True, tooltip="Encodes the image into the guide latent."),
                io.Latent.Input(
                    "latent",
                    optional=True,
                    tooltip="Low-res latent of the whole scene, used as the guide directly.",
                ),
            ],
            outputs=[
                GlobalContextSocket.Output(
                    display_name="GLOBAL_CONTEXT",
                    tooltip="Connect to the Causal SANA Sampler (mode = causal).",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        skip_residual: float | None = None,
        stats: float | None = None,
        bcla_seed: float | None = None,
        skip_power: float | None = None,
        seed_sigma: float | None = None,
        image=UNLINKED,
        vae=UNLINKED,
        latent=UNLINKED,
    ) -> bool:
        return cross_check(cls, locals(), _guide_problem)

    @classmethod
    def execute(
        cls,
        skip_residual: float,
        stats: float,
        bcla_seed: float,
        skip_power: float,
        seed_sigma: float,
        seed: int,
        guide_long_side: int,
        image: torch.Tensor | None = None,
        vae=None,
        latent: dict | None = None,
    ) -> io.NodeOutput:
        if latent is not None:
            guide = latent["samples"]
        elif image is not None and vae is not None:
            guide = _encoded(image, vae, guide_long_side)
        else:
            raise ContextError("Connect a guide: an image with a vae, or a latent.")
        if guide.ndim != 4:
            raise ContextError(f"The guide latent must be [B, C, h, w], got {tuple(guide.shape)}.")
        spec = ContextSettings(guide, skip_residual, stats, bcla_seed, skip_power, seed_sigma, seed)
        return io.NodeOutput(spec)


def _encoded(image: torch.Tensor, vae, long_side: int) -> torch.Tensor:
    """IMAGE [B, H, W, C] resized to about ``long_side`` px on its long side (0 = its own size), both
    sides whole latent cells, and encoded by ``vae``."""
    pixels = image[..., :3].movedim(-1, 1)
    height, width = pixels.shape[-2:]
    size = scaled_size(height, width, long_side or max(height, width), vae_compression(vae))
    return guide_from_image(pixels, lambda x: vae.encode(x.movedim(1, -1)), size=size)


NODES = [SanaGlobalContext]
