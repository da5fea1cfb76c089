"""SANA model loading for the engine (no ComfyUI): transformer variants, DC-AE, Gemma-2 conditioning."""

from pathlib import Path

from ..options import EMBEDDED_MODEL
from .checkpoint import CheckpointError, load_state_dict
from .text import SanaTextEncoder, load_text_encoder
from .vae import compression, decode_tiled, fit_latent_rgb, load_vae_file, load_vae_folder
from .variants import (
    SanaVariant,
    build_transformer,
    convert_original,
    detect_variant,
    load_transformer_file,
    load_transformer_folder,
    variant_from_config,
)


def is_pipeline_folder(path: str | Path) -> bool:
    """A diffusers SANA pipeline folder (model_index.json + transformer/)."""
    path = Path(path)
    return (path / "model_index.json").is_file() and (path / "transformer" / "config.json").is_file()


__all__ = [
    "EMBEDDED_MODEL",
    "CheckpointError",
    "SanaTextEncoder",
    "SanaVariant",
    "build_transformer",
    "compression",
    "convert_original",
    "decode_tiled",
    "detect_variant",
    "fit_latent_rgb",
    "is_pipeline_folder",
    "load_state_dict",
    "load_text_encoder",
    "load_transformer_file",
    "load_transformer_folder",
    "load_vae_file",
    "load_vae_folder",
    "variant_from_config",
]
