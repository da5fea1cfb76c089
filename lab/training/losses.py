"""Flow-matching math of the trainer: each rule that a plausible wrong choice breaks is one named function.

| rule                | wrong                        | here                                        |
| ------------------- | ---------------------------- | ------------------------------------------- |
| interpolation       | (1-σ)·ε + σ·x0               | `interpolate`: (1-σ)·x0 + σ·ε               |
| target              | x0 - ε                       | `velocity_target`: ε - x0                   |
| precision           | fp16                         | `autocast`: bf16 autocast, fp32 master      |
| shift               | 1.0                          | `shift_sigmas`, default `SHIFT = 3.0`       |
| timestep sampling   | Beta(1.6, 1.605)             | `sample_logit_normal`: sigmoid(N(0, 1))     |
| DC-AE encode        | .latent_dist.sample()        | `encode_latents`: `.latent` (deterministic) |
| loss                | unweighted MSE               | `flow_matching_loss` with `sigma_weights`   |

Each is guarded by a unit test that the wrong variant fails.

σ-weighting: the per-sample MSE on the velocity is multiplied by SD3's "cosmap" weight
w(σ) = 2 / (π·(1 - 2σ + 2σ²)) (the same formula as diffusers' `compute_loss_weighting_for_sd3`).
It peaks at σ = 0.5 (4/π) and falls to 2/π at both ends, so the mid-noise levels that decide layout
and colour count most, and neither the nearly-clean nor the pure-noise end dominates the gradient.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

from temporal_tiling.errors import UserInputError

SHIFT = 3.0
PRECISIONS = ("bf16", "fp32")


class TrainError(UserInputError):
    """A training setting that cannot work; the message says what to change."""


def interpolate(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """Rectified-flow point x_σ = (1-σ)·x0 + σ·ε: σ=0 is data, σ=1 is pure noise (SANA convention)."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """SANA's "flow" prediction target v = ε - x0 (= d x_σ / dσ), so x0 = x_σ - σ·v."""
    return noise - x0


def autocast(device_type: str, precision: str = "bf16") -> contextlib.AbstractContextManager:
    """bf16 autocast around the forward pass; master weights and optimizer state stay fp32.

    fp16 is refused: the sums of SANA's linear attention overflow its range (SANA trains in bf16).
    """
    if precision not in PRECISIONS:
        raise TrainError(
            f"precision {precision!r} is not supported; use one of {PRECISIONS} (SANA trains in bf16)"
        )
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


def shift_sigmas(sigma: Tensor, shift: float = SHIFT) -> Tensor:
    """SANA/SD3 timestep shift σ' = s·σ / (1 + (s-1)·σ): with s = 3 more training at high noise."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_logit_normal(n: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """σ = sigmoid(N(mean, std)) — logit-normal(0, 1) timesteps, not Beta(1.6, 1.605)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def sample_sigmas(n: int, generator: torch.Generator, shift: float = SHIFT) -> Tensor:
    """Training noise levels: logit-normal, then shifted."""
    return shift_sigmas(sample_logit_normal(n, generator), shift)


@torch.no_grad()
def encode_latents(vae: nn.Module, images: Tensor) -> Tensor:
    """Deterministic DC-AE latents of images in [0, 1]: `.latent` × scaling_factor, never sampled."""
    return vae.encode(images * 2 - 1).latent * vae.config.scaling_factor


def sigma_weights(sigma: Tensor) -> Tensor:
    """SD3 "cosmap" loss weight per sample (see the module docstring for why)."""
    return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))


def flow_matching_loss(pred: Tensor, target: Tensor, sigma: Tensor) -> Tensor:
    """σ-weighted MSE: per-sample mean squared velocity error × `sigma_weights(σ)`, averaged."""
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (sigma_weights(sigma.float()) * per_sample).mean()
