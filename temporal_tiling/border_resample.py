"""Border resampling: RePaint's resampling near the lock edge, inside one model call.

A causal tile inpaints its known cells the way ComfyUI does (re-noised with the canvas noise at every
call, the prediction replaced by the known latent there). RePaint harmonises known and new content by
resampling: at a noise level, predict x0, composite it with the known latent, noise it back to the same
σ with fresh noise and predict again, ``repeats`` times. Done inside one model call (a
:data:`contracts.Resample`), every sampler loop runs it unchanged: the engine's flow samplers and
ComfyUI's. Only cells near the lock edge take part; elsewhere it would only cost model calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .contracts import Denoiser, Resample
from .options import DEFAULT_RESAMPLE_BAND, DEFAULT_RESAMPLE_SIGMA
from .sampling import SamplingError, within


@dataclass(frozen=True)
class BorderResample:
    """When, how often and where a causal tile's model calls resample near the lock edge."""

    below_sigma: float = DEFAULT_RESAMPLE_SIGMA
    """Resample only at noise levels 0 < σ ≤ this (the late steps, once the layout is set)."""
    repeats: int = 2
    """Extra predictions per resampled call (each one model call more)."""
    band: int = DEFAULT_RESAMPLE_BAND
    """Cells (chessboard) on each side of the lock edge that are resampled; the first prediction is
    kept everywhere else."""

    def __post_init__(self) -> None:
        if not 0.0 < self.below_sigma <= 1.0:
            raise SamplingError(
                f"border resample below_sigma must be in (0, 1] (0.5: the late steps), "
                f"got {self.below_sigma}."
            )
        if self.repeats < 1:
            raise SamplingError(
                f"border resample repeats must be ≥ 1 (leave border resample off for none), "
                f"got {self.repeats}."
            )
        if self.band < 1:
            raise SamplingError(f"border resample band must be ≥ 1 latent cell, got {self.band}.")

    def region(self, denoise_mask: Tensor) -> Tensor:
        """Cells within ``band`` of both a fully generated cell (mask 1) and a kept one (mask < 1), as a
        bool tensor of the mask's shape; empty for a tile with nothing known."""
        new = denoise_mask >= 1.0
        return within(new, self.band) & within(~new, self.band)

    def bind(self, seed: int) -> Resample:
        """The :data:`contracts.Resample` of one run: its fresh noise comes from a CPU generator seeded
        with ``seed``, in call order, so a run repeats bit for bit on any device."""
        generator = torch.Generator("cpu").manual_seed(seed)

        def resample(
            denoiser: Denoiser, x: Tensor, sigma: Tensor, denoise_mask: Tensor, known: Tensor
        ) -> Tensor:
            x0 = denoiser(x, sigma)
            level = float(torch.as_tensor(sigma).reshape(-1)[0])
            region = self.region(denoise_mask) if 0.0 < level <= self.below_sigma else None
            if region is None or not bool(region.any()):
                return x0
            region = region.to(x.device)
            for _ in range(self.repeats):
                composite = denoise_mask * x0 + (1.0 - denoise_mask) * known
                fresh = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x)
                x = torch.where(region, (1.0 - level) * composite + level * fresh, x)
                x0 = torch.where(region, denoiser(x, sigma), x0)
            return x0

        return resample
