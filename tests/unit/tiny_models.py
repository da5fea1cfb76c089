"""The tiny random SanaTransformer2DModel the unit tests share: CPU, seeded, milliseconds per call."""

import torch
from diffusers import SanaTransformer2DModel

TINY_SANA = {
    "in_channels": 4,
    "out_channels": 4,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "num_layers": 2,
    "num_cross_attention_heads": 2,
    "cross_attention_head_dim": 8,
    "cross_attention_dim": 16,
    "caption_channels": 16,
    "sample_size": 8,
    "patch_size": 1,
}


def tiny_sana(**overrides) -> SanaTransformer2DModel:
    """Seeded with 0, so every test that builds it gets the same weights."""
    torch.manual_seed(0)
    return SanaTransformer2DModel(**{**TINY_SANA, **overrides}).eval()
