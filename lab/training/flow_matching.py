"""The transformer stage: rectified-flow training of a SanaTransformer2DModel on seam-lab latents."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from temporal_tiling.sana.vae import compression

from .data import scene_batch
from .loop import TrainConfig
from .losses import (
    SHIFT,
    autocast,
    encode_latents,
    flow_matching_loss,
    interpolate,
    sample_sigmas,
    velocity_target,
)
from .toy_models import encode_prompts


@dataclass
class FlowConfig(TrainConfig):
    """Transformer training: tokens per step are constant over the size mix (batch × cells)."""

    tokens_per_step: int = 1024
    sizes: tuple[tuple[int, int], ...] = ((8, 8), (8, 8), (8, 16), (16, 8), (16, 16))  # latent cells
    crop_prob: float = 0.3
    cfg_dropout: float = 0.1
    shift: float = SHIFT
    max_text_length: int = 32


class NoiseSettings(Protocol):
    """What `noised_batch` reads from a stage's config (FlowConfig and the temporal LoRA's have it)."""

    cfg_dropout: float
    max_text_length: int
    shift: float


def noised_batch(
    g: torch.Generator, images: Tensor, prompts: list[str], vae, tokenizer, text_encoder, cfg: NoiseSettings
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A step's flow-matching inputs (x0, noise, σ, text, mask), drawn from `g` in a fixed order: prompt
    dropout for CFG, deterministic latents, noise, logit-normal shifted σ."""
    drop = torch.rand(len(prompts), generator=g) < cfg.cfg_dropout
    prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]
    x0 = encode_latents(vae, images)
    text, mask = encode_prompts(tokenizer, text_encoder, prompts, cfg.max_text_length)
    noise = torch.randn(x0.shape, generator=g)
    sigma = sample_sigmas(len(prompts), g, cfg.shift)
    return x0, noise, sigma, text, mask


def flow_loss_fn(
    transformer, vae, tokenizer, text_encoder, cfg: FlowConfig
) -> Callable[[int, torch.Generator], Tensor]:
    """One flow-matching step's loss: scenes -> deterministic latents -> x_σ -> σ-weighted MSE on ε - x0."""
    device_type = next(transformer.parameters()).device.type

    def loss_fn(step: int, g: torch.Generator) -> Tensor:
        h, w = cfg.sizes[int(torch.randint(len(cfg.sizes), (1,), generator=g))]
        batch = max(1, cfg.tokens_per_step // (h * w))
        c = compression(vae)
        images, prompts = scene_batch(g, batch, h * c, w * c, cfg.crop_prob)
        x0, noise, sigma, text, mask = noised_batch(g, images, prompts, vae, tokenizer, text_encoder, cfg)
        x_t = interpolate(x0, noise, sigma)
        with autocast(device_type, cfg.precision):
            pred = transformer(x_t, text, sigma * 1000, encoder_attention_mask=mask).sample
        return flow_matching_loss(pred, velocity_target(x0, noise), sigma)

    return loss_fn
