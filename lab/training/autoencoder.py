"""The autoencoder stage: a small DC-AE trained on random seam-lab crops, its PSNR and latent scale."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import seamlab
from .data import scene_batch
from .loop import TrainConfig
from .losses import autocast


@dataclass
class AEConfig(TrainConfig):
    """Autoencoder training on random crops (fully convolutional: crop size does not limit use size)."""

    batch: int = 16
    crop: int = 32
    grad_weight: float = 0.5
    ema_decay: float = 0.99


def ae_loss_fn(vae, cfg: AEConfig) -> Callable[[int, torch.Generator], Tensor]:
    """L1 + L1 on Sobel gradients (a cheap perceptual-ish term that keeps edges and textures sharp)."""
    import kornia

    device_type = next(vae.parameters()).device.type

    def loss_fn(step: int, g: torch.Generator) -> Tensor:
        src = int(cfg.crop * (1 + int(torch.randint(3, (1,), generator=g))))
        images, _ = scene_batch(g, cfg.batch, src, src)
        images = seamlab.random_crops(images, cfg.crop, g) * 2 - 1
        with autocast(device_type, cfg.precision):
            recon = vae.decode(vae.encode(images).latent).sample
        recon = recon.float()
        grad = kornia.filters.spatial_gradient(recon) - kornia.filters.spatial_gradient(images)
        return F.l1_loss(recon, images) + cfg.grad_weight * grad.abs().mean()

    return loss_fn


@torch.no_grad()
def reconstruction_psnr(vae, images: Tensor) -> float:
    """Mean PSNR (dB, range 1.0) of decode(encode(images)) on images in [0, 1]."""
    recon = ((vae.decode(vae.encode(images * 2 - 1).latent).sample + 1) / 2).clamp(0, 1)
    mse = (recon - images).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return float((-10 * torch.log10(mse)).mean())


@torch.no_grad()
def latent_scaling_factor(vae, seed: int = 123, n: int = 64, size: int = 64) -> float:
    """1 / std of the raw latents, so scaled latents have unit variance like noise."""
    images = seamlab.render(seamlab.sample_scenes(n, seed=seed), size, size)
    return float(1.0 / vae.encode(images * 2 - 1).latent.std())
