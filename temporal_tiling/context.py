"""Global context for causal tiling: what a low-res pass of the whole scene tells every tile.

Tiles see their neighbours through locking and BCLA, but nothing that says what the whole picture
looks like. A low-res pass (image or latent of the same scene, any size with the canvas's aspect
ratio) supplies that, three ways, combinable, each with its own strength:

* ``skip_residual`` (DemoFusion's skip residual): after every model call the tile's
  predicted clean latent is pulled toward the guide crop, ``x0 += w(σ)·lowpass(guide - x0)`` with
  ``w(σ) = strength·((1 - cos πσ)/2)^power``. That is DemoFusion's cosine decay
  ``c = ((1 + cos(π(T - t)/T))/2)^α`` with the normalised time written as σ: full weight at pure
  noise, zero at the end, so the guide fixes the layout early and the tile owns its detail late.
  DemoFusion blends the noisy latent with the re-noised guide; blending the x0 prediction instead
  is the same thing for a flow sampler (it keeps the noise estimate) and works for every ComfyUI
  sampler through one post-CFG hook. Only the band the guide really carries is pulled: the
  difference is low-passed with a Gaussian of σ = half the guide's upsampling factor (at least
  ``band_sigma``: a guide of the canvas's size would otherwise be pulled whole), so a 4× smaller
  guide shapes structure and colour and leaves finer texture alone. ``power`` 0 (the
  default, as in ``guided``) holds the pull to the last call: a tile that lets go late paints its
  window's own gradient, and with tile prompts its own copy of the object.
* ``stats`` (CMod/AdaIN, training-free): per batch element and channel, the tile's predicted
  clean latent gets its mean and standard deviation moved toward the guide crop's by ``strength``.
  Statistics are taken over the whole tile (a tile is the natural unit of drift; the guide crop
  already varies across the canvas, so tile-level matching keeps lighting gradients). Only the
  guide's band is aligned (the tile's low-passed part, same low-pass as above) and the finer
  texture is added back untouched: a smooth upsampled guide says nothing about it, and matching the
  full-band std to it would flatten the tile. The mean moves by ``strength`` at every call; the
  std by ``strength·(1 - σ)``: a high-noise x0 prediction is a posterior mean whose spread is
  shrunk by construction, and matching that to the guide's inflated early tiles into blotches on
  the embedded model. The contrast gain is capped (``MAX_STATS_GAIN``).
* ``bcla_seed`` (bottleneck attention to global tokens at O(D²), as in DehazeXL): the model
  runs on the noised low-res guide while the BCLA cache records (the run's seed pass); those S, Z
  statistics seed every tile's cache (``S_ctx = α·S_cache + β·S_seed``, β = strength; the cache
  owns the mixing).

Zero strength everywhere gives ``x0_hook(...) is None`` and no seed, so sampling with such a context
is bit-identical to sampling without one. The context is one explicit argument of the causal tile
loop, never global state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from torch import Tensor

from .contracts import X0Hook
from .errors import UserInputError
from .options import (
    DEFAULT_GUIDE_BCLA_SEED,
    DEFAULT_GUIDE_SKIP_POWER,
    DEFAULT_GUIDE_SKIP_RESIDUAL,
    DEFAULT_GUIDE_STATS,
)
from .plan import Tile, TilePlan

ASPECT_TOLERANCE = 0.1
"""Largest relative aspect-ratio difference between guide and canvas (beyond one cell of rounding)."""

MAX_STATS_GAIN = 10.0
"""Cap on the contrast gain of ``stats``: a nearly flat early prediction is not blown up into
amplified numerical noise (adding the guide's structure is ``skip_residual``'s job)."""


class ContextError(UserInputError):
    """A global context that cannot be applied; the message says what to change."""


def _check_strength(name: str, value: float, upper: float | None) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (upper is not None and value > upper):
        bound = f"between 0 and {upper:g}" if upper is not None else "zero or positive"
        raise ContextError(f"{name} strength must be {bound}, got {value!r}.")
    return value


def _check_guide(guide: object) -> Tensor:
    if not isinstance(guide, Tensor) or guide.ndim != 4:
        shape = tuple(guide.shape) if isinstance(guide, Tensor) else type(guide).__name__
        raise ContextError(f"The guide must be a latent of shape [B, C, h, w], got {shape}.")
    if not guide.is_floating_point():
        raise ContextError(f"The guide latent must be floating point, got {guide.dtype}.")
    if min(guide.shape) == 0:
        raise ContextError(f"The guide latent is empty (shape {tuple(guide.shape)}).")
    if not torch.isfinite(guide).all():
        raise ContextError("The guide latent contains NaN or infinite values; re-encode the low-res pass.")
    return guide


def resize_latent(latent: Tensor, height: int, width: int) -> Tensor:
    """Antialiased bicubic resize (area-like when shrinking, smooth when enlarging)."""
    if latent.shape[-2:] == (height, width):
        return latent
    resized = F.interpolate(latent.float(), size=(height, width), mode="bicubic", antialias=True)
    return resized.to(latent.dtype)


def resize_crop(latent: Tensor, height: int, width: int, rows: slice, cols: slice) -> Tensor:
    """``resize_latent(latent, height, width)[..., rows, cols]`` without the whole resized latent: the
    resize is separable, one [out, in] matrix per axis, so a crop is two small matrix products (a tile's
    guide costs its own size, not the canvas's)."""
    if latent.shape[-2:] == (height, width):
        return latent[..., rows, cols]
    along_y = _resize_matrix(latent.shape[-2], height, latent.device)[rows]
    along_x = _resize_matrix(latent.shape[-1], width, latent.device)[cols]
    return torch.einsum("yh,bchw,xw->bcyx", along_y, latent.float(), along_x).to(latent.dtype)


def _resize_matrix(size: int, out: int, device: torch.device) -> Tensor:
    """[out, size]: :func:`resize_latent` along one axis, read off by resizing the identity (4 columns
    wide: torch's antialiased bicubic takes another path on a 1-wide image and gives other values)."""
    identity = torch.eye(size, device=device)[:, None, :, None].expand(size, 1, size, 4)
    return F.interpolate(identity, size=(out, 4), mode="bicubic", antialias=True)[:, 0, :, 0].T


def lowpass(x: Tensor, scale: float) -> Tensor:
    """Keep the band a guide upsampled by ``scale`` carries: Gaussian blur with σ = scale/2 cells."""
    if scale <= 1.0:
        return x
    sigma = 0.5 * scale
    size = 2 * math.ceil(3 * sigma) + 1
    return gaussian_blur2d(x, (size, size), (sigma, sigma), border_type="replicate")


def edge_ramp(tile: Tile, plan: TilePlan, cells: float) -> Tensor:
    """[h, w] weights of ``tile``'s cells: 0 on the canvas's outermost cells, rising linearly to 1 at
    ``cells`` cells in from the nearest canvas edge (all 1 when ``cells`` is 0)."""
    rows = torch.arange(tile.y, tile.y + tile.height, dtype=torch.float32)
    cols = torch.arange(tile.x, tile.x + tile.width, dtype=torch.float32)
    from_row_edge = torch.minimum(rows, plan.canvas_height - 1 - rows)
    from_col_edge = torch.minimum(cols, plan.canvas_width - 1 - cols)
    distance = torch.minimum(from_row_edge[:, None], from_col_edge[None, :])
    return (distance / cells).clamp(max=1.0) if cells > 0 else torch.ones_like(distance)


def skip_weight(sigma: Tensor, strength: float, power: float) -> Tensor:
    """DemoFusion's cosine decay in σ: ``strength·((1 - cos πσ)/2)^power`` (1 at σ=1, 0 at σ=0); power 0 is
    a constant ``strength`` down to the last call (the guide's band is held to the end)."""
    s = sigma.float().clamp(0.0, 1.0)
    return strength * ((1.0 - torch.cos(math.pi * s)) / 2.0) ** power


def _per_sample(sigma: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """σ as [B,1,1,1] whether it arrives as a float, a 0-d tensor, [1] or [B]."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=device).reshape(-1)
    if s.numel() not in (1, batch):
        raise ContextError(f"sigma has {s.numel()} values for a batch of {batch}.")
    return s.expand(batch).reshape(batch, 1, 1, 1)


def _mean_std(x: Tensor) -> tuple[Tensor, Tensor]:
    return x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True, unbiased=False)


def scaled_size(height: int, width: int, long_side: int, multiple: int) -> tuple[int, int]:
    """(height, width) with the same aspect ratio and about ``long_side`` on the longer side, each rounded
    to a whole number (at least one) of ``multiple`` px: latent cells, so the VAE can encode it."""
    scale = long_side / max(height, width)
    rows, cols = (max(1, math.floor(side * scale / multiple + 0.5)) for side in (height, width))
    return rows * multiple, cols * multiple


def guide_size(plan: TilePlan, long_side: int, patch: int = 1) -> tuple[int, int]:
    """(height, width) px of a low-res pass with the canvas's aspect ratio and ``long_side`` px on its
    longer side, rounded to whole latent cells, and to whole ``patch``-cell tokens (a transformer with
    patch size 2 cannot run an odd number of cells): the size to render or resize the guide image to."""
    multiple = plan.compression * patch
    if long_side < multiple:
        raise ContextError(
            f"The low-res pass needs at least {multiple} px on its long side, got {long_side}."
        )
    return scaled_size(plan.height_px, plan.width_px, long_side, multiple)


def guide_from_image(
    image: Tensor, encode: Callable[[Tensor], Tensor], *, size: tuple[int, int] | None = None
) -> Tensor:
    """Encode a low-res image into a guide latent.

    ``image`` is [B, 3, H, W] in [0, 1] (engine convention); ``encode`` maps such an image to the
    model's latent (e.g. a VAE wrapper that scales to [-1, 1] and applies the latent scaling).
    ``size`` = (height, width) px resizes first (antialiased) — e.g. ``guide_size(plan, 512)`` —
    so a full-resolution photo becomes a cheap guide.
    """
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ContextError(f"The guide image must be [B, 3, H, W] RGB, got {shape}.")
    if not torch.isfinite(image).all():
        raise ContextError("The guide image contains NaN or infinite pixels.")
    if image.min() < -1e-3 or image.max() > 1 + 1e-3:
        raise ContextError(
            f"The guide image must be in [0, 1], got [{float(image.min()):.3g}, {float(image.max()):.3g}]."
        )
    if size is not None and tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(image.float(), size=size, mode="bicubic", antialias=True).clamp(0, 1)
    with torch.no_grad():
        return _check_guide(encode(image))


@dataclass(frozen=True, eq=False)
class GlobalContext:
    """A low-res guide and how strongly each global-context method uses it.

    ``guide`` is a latent [B, C, h, w] of the whole scene (B = 1 or the canvas batch), any size with
    the canvas's aspect ratio; it is resized to the canvas latent size (antialiased bicubic).
    ``seed_stats`` is what ``BCLACache.record_seed()`` captured on the guide (the run's seed pass,
    ``pipeline.global_context``).
    """

    guide: Tensor
    skip_residual: float = 0.0
    stats: float = 0.0
    bcla_seed: float = 0.0
    seed_stats: object = None
    skip_power: float = 3.0
    edge_release: float = 0.0
    """Guide cells, from the canvas edge in, over which the pull ramps up from 0 (:func:`edge_ramp`):
    the tiles paint the canvas's own border there instead of holding the guide's. 0 = held everywhere."""
    band_sigma: float = 0.0
    """Gaussian σ in canvas cells of the low-pass that picks the band the pull acts on, at least (0: half
    the guide's upsampling, the band an upsampled guide carries; a guide of the canvas's size would
    otherwise be pulled whole, its own detail included)."""

    def __post_init__(self) -> None:
        _check_guide(self.guide)
        object.__setattr__(self, "skip_residual", _check_strength("skip_residual", self.skip_residual, 1.0))
        object.__setattr__(self, "stats", _check_strength("stats", self.stats, 1.0))
        object.__setattr__(self, "bcla_seed", _check_strength("bcla_seed", self.bcla_seed, None))
        power = float(self.skip_power)
        if not math.isfinite(power) or power < 0:
            raise ContextError(
                f"skip_power must be zero or positive (DemoFusion uses 3; 0 = a constant pull), "
                f"got {self.skip_power!r}."
            )
        object.__setattr__(self, "skip_power", power)
        if not self.edge_release >= 0:
            raise ContextError(f"edge_release must be ≥ 0 guide cells (0: none), got {self.edge_release!r}.")
        band = float(self.band_sigma)
        if not math.isfinite(band) or band < 0:
            raise ContextError(
                f"band_sigma is a blur in latent cells, zero or positive; got {self.band_sigma!r}."
            )
        object.__setattr__(self, "band_sigma", band)
        if self.bcla_seed > 0 and self.seed_stats is None:
            raise ContextError(
                "bcla_seed > 0 needs seed statistics; give the run ContextSettings (it records them) "
                "or set bcla_seed=0."
            )

    @property
    def seeds_cache(self) -> bool:
        """Whether the sampler must call ``cache.seed(self.seed_stats, self.bcla_seed)`` before tile 0."""
        return self.bcla_seed > 0 and self.seed_stats is not None

    @property
    def channels(self) -> int:
        return self.guide.shape[1]

    def check(self, plan: TilePlan, latent_shape: tuple[int, ...] | torch.Size | None = None) -> None:
        """Refuse a guide that does not fit the canvas: aspect ratio, channels, batch."""
        h, w = self.guide.shape[-2:]
        H, W = plan.canvas_height, plan.canvas_width
        # One guide cell of rounding is always allowed on top of the relative tolerance: tiny guides
        # (a 4×2-cell latent) cannot hit the canvas's ratio exactly.
        expected_w, expected_h = h * W / H, w * H / W
        fits_w = abs(w - expected_w) <= max(1.0, ASPECT_TOLERANCE * expected_w)
        fits_h = abs(h - expected_h) <= max(1.0, ASPECT_TOLERANCE * expected_h)
        if not (fits_w or fits_h):
            raise ContextError(
                f"The guide's aspect ratio ({w}×{h} cells, {w / h:.3f}) is far from the canvas's "
                f"({W}×{H} cells, {W / H:.3f}); render the low-res pass at the canvas's aspect ratio "
                "(guide_size(plan, long_side))."
            )
        if latent_shape is None:
            return
        batch, channels = int(latent_shape[0]), int(latent_shape[1])
        if channels != self.channels:
            raise ContextError(
                f"The guide latent has {self.channels} channels but the model's latent has {channels}; "
                "encode the guide with the same model's VAE."
            )
        if self.guide.shape[0] not in (1, batch):
            raise ContextError(
                f"The guide has batch {self.guide.shape[0]} but the canvas batch is {batch}; "
                "use one guide for all or one per canvas."
            )

    def guide_crop(self, tile: Tile, plan: TilePlan) -> Tensor:
        """The guide resized to the canvas latent and cut to ``tile``: [B_guide, C, h, w]."""
        return resize_crop(self.guide, plan.canvas_height, plan.canvas_width, *tile.slices)

    def upsampling(self, plan: TilePlan) -> float:
        """How many canvas cells one guide cell spans (≤ 1: the guide has full detail)."""
        h, w = self.guide.shape[-2:]
        return max(plan.canvas_height / h, plan.canvas_width / w)

    def x0_hook(self, tile: Tile, plan: TilePlan) -> X0Hook | None:
        """The post-CFG x0 correction for ``tile``; None when it would do nothing (bit-identical path)."""
        if self.skip_residual == 0 and self.stats == 0:
            return None
        self.check(plan)
        crop = self.guide_crop(tile, plan).float()
        scale = max(self.upsampling(plan), 2.0 * self.band_sigma)  # lowpass: σ = scale / 2
        skip, stats, power = self.skip_residual, self.stats, self.skip_power
        guide_mean, guide_std = _mean_std(lowpass(crop, scale))
        release = edge_ramp(tile, plan, self.edge_release * self.upsampling(plan))

        def hook(x0: Tensor, sigma: Tensor) -> Tensor:
            self.check(plan, x0.shape)
            if x0.shape[-2:] != crop.shape[-2:]:
                raise ContextError(
                    f"x0 has spatial size {tuple(x0.shape[-2:])} but tile {tile.index} is "
                    f"{tile.height}×{tile.width} cells; the hook belongs to another plan."
                )
            out = x0.float()
            g = crop.to(out.device)
            if skip > 0:
                weight = skip_weight(_per_sample(sigma, out.shape[0], out.device), skip, power)
                out = out + weight * release.to(out.device) * lowpass(g - out, scale)
            if stats > 0:
                low = lowpass(out, scale)
                mean, std = _mean_std(low)
                g_mean, g_std = guide_mean.to(out.device), guide_std.to(out.device)
                target_mean = mean + stats * (g_mean - mean)
                # The std of a high-noise prediction (a posterior mean) is shrunk by construction: trust
                # it, and match it, only as σ → 0. The mean is unbiased at every σ.
                std_weight = stats * (1.0 - _per_sample(sigma, out.shape[0], out.device).clamp(0.0, 1.0))
                target_std = std + std_weight * (g_std - std)
                gain = (target_std / std.clamp_min(1e-6)).clamp_max(MAX_STATS_GAIN)
                out = (low - mean) * gain + target_mean + (out - low)
            return out.to(x0.dtype)

        return hook


@dataclass(frozen=True)
class ContextSettings:
    """A global context as the user asks for it (the Global Context node, the CLI's flags): a guide
    and the strengths. The run turns it into a :class:`GlobalContext`, recording the guide's BCLA
    statistics with the run's own model and cache when ``bcla_seed`` > 0."""

    guide: Tensor
    """[B, C, h, w] latent of the whole scene, in the host's latent space."""
    skip_residual: float = DEFAULT_GUIDE_SKIP_RESIDUAL
    """Pull of each tile's low band toward the guide's (:attr:`GlobalContext.skip_residual`); by default
    guided's, held to the last step (``options.DEFAULT_GUIDE_SKIP_POWER`` says why)."""
    stats: float = DEFAULT_GUIDE_STATS
    """Per-tile mean/std alignment to the guide (:attr:`GlobalContext.stats`)."""
    bcla_seed: float = DEFAULT_GUIDE_BCLA_SEED
    """Strength of the guide's attention statistics in every tile's BCLA cache (needs a cache)."""
    skip_power: float = DEFAULT_GUIDE_SKIP_POWER
    """Decay of the pull with σ: 0 holds it to the last step, DemoFusion's 3 lets go in the late steps."""
    seed_sigma: float = 0.0
    """Noise level of the seed pass; 0 = every level of the run's schedule, one model call each, so
    each step's tiles read the guide's statistics at their own level."""
    seed: int = 0
    """Seed of the seed pass's noise."""
    edge_release: float = 0.0
    """Guide cells at the canvas edge over which the pull is released (:attr:`GlobalContext.edge_release`)."""
    seed_guide: Tensor | None = None
    """The latent the BCLA seed pass runs on; None = ``guide`` (a refine pulls toward the photo at the
    canvas's size but seeds from a copy shrunk to one tile, so the seed pass costs one tile)."""
    band_sigma: float = 0.0
    """:attr:`GlobalContext.band_sigma`."""
