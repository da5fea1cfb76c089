"""SANA's DC-AE (diffusers AutoencoderDC): loading, tiled decoding (the engine's streaming one, in
``refine``), and a linear latent->RGB fit for previews.

Single files are read in either the original DC-AE layout (`encoder.project_in.conv.*`, converted with
diffusers' own converter) or the diffusers layout; a single file carries no config, so it must be the
published SANA DC-AE f32c32 architecture (checked key by key and shape by shape). Diffusers folders bring
their own config and may be any AutoencoderDC.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import init_empty_weights
from diffusers import AutoencoderDC
from diffusers.loaders.single_file_utils import convert_autoencoder_dc_checkpoint_to_diffusers

from ..refine import Autoencoder
from ..refine import decode_tiled as tiled_decode
from .checkpoint import CheckpointError, folder_load_error, load_state_dict, read_json

# mit-han-lab/dc-ae-f32c32-sana-1.x-diffusers: the autoencoder every SANA 0.6B/1.6B checkpoint uses.
SANA_DCAE_F32C32_CONFIG = {
    "in_channels": 3,
    "latent_channels": 32,
    "attention_head_dim": 32,
    "encoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    "decoder_block_types": ["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    "encoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "decoder_block_out_channels": [128, 256, 512, 512, 1024, 1024],
    "encoder_layers_per_block": [2, 2, 2, 3, 3, 3],
    "decoder_layers_per_block": [3, 3, 3, 3, 3, 3],
    "encoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "decoder_qkv_multiscales": [[], [], [], [5], [5], [5]],
    "upsample_block_type": "interpolate",
    "downsample_block_type": "conv",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}
ORIGINAL_VAE_MARKER = "encoder.project_in.conv.weight"
DIFFUSERS_VAE_MARKER = "encoder.conv_in.weight"


def load_vae_file(path: str | Path, dtype: torch.dtype | None = None) -> AutoencoderDC:
    """Load SANA's DC-AE from one `.safetensors`/`.pth` file (original or diffusers keys)."""
    path = Path(path)
    state_dict = load_state_dict(path)
    for prefix in ("vae.", "first_stage_model.", "ae."):
        if any(k.startswith(prefix + "encoder.") for k in state_dict):
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
            break
    return _ready(build_vae(state_dict, path.name), dtype)


def build_vae(state_dict: dict[str, torch.Tensor], name: str = "vae") -> AutoencoderDC:
    """SANA's DC-AE f32c32 holding exactly these weights (strict), without allocating a random init."""
    if ORIGINAL_VAE_MARKER in state_dict:
        state_dict = convert_autoencoder_dc_checkpoint_to_diffusers(dict(state_dict))
    elif DIFFUSERS_VAE_MARKER not in state_dict:
        raise CheckpointError(
            f"'{name}' is not a DC-AE autoencoder (no '{ORIGINAL_VAE_MARKER}' or '{DIFFUSERS_VAE_MARKER}'). "
            "SANA needs its 32-channel DC-AE (dc-ae-f32c32-sana)."
        )
    with init_empty_weights():
        vae = AutoencoderDC(**SANA_DCAE_F32C32_CONFIG)
    try:
        missing, unexpected = vae.load_state_dict(state_dict, strict=False, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"'{name}' is a DC-AE but not SANA's f32c32 one ({exc}). Use dc-ae-f32c32-sana, or its "
            "diffusers folder (which carries its own config)."
        ) from exc
    if missing or unexpected:
        raise CheckpointError(
            f"'{name}' does not match SANA's DC-AE f32c32: missing {sorted(missing)[:4]}, unexpected "
            f"{sorted(unexpected)[:4]}."
        )
    return vae


def load_vae_folder(folder: str | Path, dtype: torch.dtype | None = None) -> AutoencoderDC:
    """Load an AutoencoderDC from a diffusers folder (pipeline root or its `vae/`)."""
    folder = Path(folder)
    root = folder / "vae" if (folder / "vae" / "config.json").is_file() else folder
    config_path = root / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"'{folder}' has no vae/config.json: not a diffusers DC-AE folder.")
    class_name = read_json(config_path).get("_class_name")
    if class_name != "AutoencoderDC":
        raise CheckpointError(f"'{root}' holds a {class_name}; SANA needs an AutoencoderDC (DC-AE).")
    try:
        vae = AutoencoderDC.from_pretrained(
            root, local_files_only=True, low_cpu_mem_usage=True, torch_dtype=dtype
        )
    except Exception as exc:  # whatever diffusers raises on a broken file, named by folder_load_error
        raise folder_load_error("DC-AE", root, exc) from exc
    return _ready(vae, None)


def _ready(vae: AutoencoderDC, dtype: torch.dtype | None) -> AutoencoderDC:
    if dtype is not None:
        vae = vae.to(dtype)
    return vae.eval().requires_grad_(False)


def compression(vae: AutoencoderDC) -> int:
    """Pixels per latent cell (32 for SANA's DC-AE); the Tile Planner reads it from here, never assumes it."""
    return int(vae.spatial_compression_ratio)


def scaling_factor(vae: AutoencoderDC) -> float:
    return float(vae.config.scaling_factor)


@torch.no_grad()
def decode_tiled(vae: AutoencoderDC, latents: torch.Tensor, tile: int = 16, overlap: int = 2) -> torch.Tensor:
    """Decode raw DC-AE latents [B,C,H,W] tile by tile (sizes in latent cells) -> pixels in [-1, 1].

    The engine's streaming tiled decode (:func:`temporal_tiling.refine.decode_tiled`): the decoder's
    activations are bounded by one tile; neighbouring tiles are cross-faded linearly over ``overlap``
    cells. The result has the latents' device and dtype.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"Tiled decode needs tile >= 1 and 0 <= overlap < tile; got {tile=}, {overlap=}.")
    ratio = compression(vae)
    batch, _, height, width = latents.shape
    pixels = latents.new_empty(batch, 3, height * ratio, width * ratio)

    def write(top: int, left: int, block: torch.Tensor) -> None:
        pixels[..., top : top + block.shape[-2], left : left + block.shape[-1]] = block

    tiles = Autoencoder(
        encode=lambda image: vae.encode(image).latent,
        decode=lambda latent: vae.decode(latent).sample,
        compression=ratio,
        tile_px=tile * ratio,
        overlap_px=overlap * ratio,
    )
    tiled_decode(tiles, latents, write)
    return pixels


def _probe_images(size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth random colour fields in [-1, 1]: what previews must colour right (skies, gradients, flats)."""
    coarse = torch.rand(count, 3, 4, 4, generator=generator) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


@torch.no_grad()
def fit_latent_rgb(
    vae: AutoencoderDC, scale: float, cells: int = 8, count: int = 4, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares linear map from (scaled) latents to RGB in [-1, 1], for ComfyUI's latent previews.

    Encodes smooth colour fields (`count` images of `cells` x `cells` latent cells), pools the images to
    the latent grid and solves [latent * scale, 1] @ W = rgb. Returns (factors [C, 3], bias [3]), float32.
    """
    generator = torch.Generator().manual_seed(seed)
    ratio = compression(vae)
    param = next(vae.parameters())
    images = _probe_images(cells * ratio, count, generator)
    latents = vae.encode(images.to(param.device, param.dtype)).latent.float().cpu() * scale
    rgb = F.avg_pool2d(images, ratio)
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    y = rgb.permute(0, 2, 3, 1).reshape(-1, 3)
    design = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
    solution = torch.linalg.lstsq(design, y).solution
    return solution[:-1].contiguous(), solution[-1].contiguous()
