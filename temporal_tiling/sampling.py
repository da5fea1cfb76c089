"""Tile loops: causal (tiles one after another, earlier content locked), independent tiles,
MultiDiffusion, and :func:`generate`, the one call that wires a SANA transformer into them.

The loops only decide what each tile sees and where its result goes; how a tile is denoised is a
:data:`DenoiseTile` callable (ComfyUI's samplers in the nodes, :func:`flow.sample_tile` here), so
the same loop serves both. All tensors are batched: ``B`` canvases at once; tile batches are
``[T*B, ...]`` tile-major (index ``t*B + b``), tiles in plan order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .context import encode_global_context, guide_size
from .errors import UserInputError
from .flow import CFGDenoiser, Denoiser, flow_sigmas, sample_tile
from .options import DEFAULT_GUIDE_DENOISE, DEFAULT_LOCK_FEATHER, DEFAULT_LOCK_MARGIN, METHODS
from .options import DEFAULT_LOCK_RELEASE as DEFAULT_LOCK_RELEASE  # the nodes' widget default
from .options import DEFAULT_RELEASE_BAND as DEFAULT_RELEASE_BAND  # the nodes' widget default
from .plan import Tile, TilePlan, make_plan

CLEAN_SIGMA = 1e-3
"""Noise level of the clean re-encoding pass (BCLA ``source = "clean"``): a finished tile, near t = 0."""


X0Hook = Callable[[Tensor, Tensor], Tensor]
MaskSchedule = Callable[[Tensor, Tensor], Tensor]
"""``(sigma, denoise_mask) -> denoise_mask`` for one model call: ComfyUI's ``denoise_mask_function``."""
TileCallback = Callable[[int, int], None]
"""``(tile index, tile count)``, called as each tile starts; it may raise to cancel."""


class SamplingError(UserInputError):
    """Inputs that do not fit the plan or each other; the message says what to change."""


@dataclass
class TileJob:
    """Everything one tile's sampler needs; the crops are views of canvas-sized tensors."""

    tile: Tile
    noise: Tensor
    """[B,C,h,w] this tile's crop of the one seeded canvas noise."""
    latent: Tensor
    """[B,C,h,w] known content: the canvas so far in locked cells, the input latent elsewhere."""
    denoise_mask: Tensor
    """[1,1,h,w] in [0, 1], ComfyUI's convention: 1 = generate, 0 = keep ``latent``."""
    x0_hook: X0Hook | None = None
    """Applied to the post-CFG clean prediction after every model call (global context)."""
    mask_schedule: MaskSchedule | None = None
    """Changes ``denoise_mask`` per model call (lock release); None keeps it fixed."""


DenoiseTile = Callable[[TileJob], Tensor]
"""Returns the finished clean tile latent [B,C,h,w]."""


@dataclass
class CanvasResult:
    canvas: Tensor
    """[B,C,H,W] the stitched latent canvas."""
    tiles: Tensor
    """[T*B,C,h,w] each tile's own finished latent, tile-major, in plan order (unblended)."""
    guide: Tensor | None = None
    """[B,C,h,w] the whole-scene pass ``method="guided"`` started from; None for the other methods."""


Upscale = Callable[[Tensor, int, int], Tensor]
"""``(guide latent [B,C,h,w], canvas height, canvas width in cells) -> canvas latent [B,C,H,W]``."""


def latent_upscale(guide: Tensor, height: int, width: int) -> Tensor:
    """Bilinear enlargement in latent space: no VAE round trip."""
    return F.interpolate(guide, size=(height, width), mode="bilinear", align_corners=False)


def pixel_upscale(
    decode: Callable[[Tensor], Tensor], encode: Callable[[Tensor], Tensor], compression: int
) -> Upscale:
    """Enlargement in pixel space: decode, bicubic resize, re-encode (``decode``/``encode`` map
    latents to [B,3,H,W] images in [0, 1] and back), so the autoencoder makes the new detail."""

    def upscale(guide: Tensor, height: int, width: int) -> Tensor:
        size = (height * compression, width * compression)
        image = F.interpolate(decode(guide).float(), size=size, mode="bicubic", align_corners=False)
        return encode(image.clamp(0, 1)).to(guide)

    return upscale


@dataclass(frozen=True)
class GuideFirst:
    """Settings of ``method="guided"``: the whole scene in one pass first, then causal tiles from it.

    A tile without position embedding paints its window as a whole picture (the second tile row
    repaints the sky's top); starting every tile from the upscaled whole-scene pass at partial
    denoise gives the canvas one layout, and the guide's attention statistics seed the BCLA cache.
    """

    long_side: int | None = None
    """Long side of the whole-scene pass in px; None = the plan's tile long side (the model's size)."""
    denoise: float = DEFAULT_GUIDE_DENOISE
    """Share of the schedule the tiles run from the upscaled guide (1 = from noise, guide unused)."""
    skip_residual: float = 0.0
    """DemoFusion skip residual toward the guide in the early steps (GlobalContext.skip_residual)."""
    stats: float = 0.0
    """Per-tile mean/std alignment to the guide (GlobalContext.stats)."""
    bcla_seed: float = 1.0
    """Strength of the guide's attention statistics in every tile's BCLA cache (needs cache_config)."""
    upscale: Upscale | None = None
    """How the guide is enlarged to the canvas; None = :func:`latent_upscale`."""

    def __post_init__(self) -> None:
        if not 0.0 < self.denoise <= 1.0:
            raise SamplingError(
                f"guide denoise must be in (0, 1] (0.5 keeps the layout), got {self.denoise}."
            )


def guide_plan(plan: TilePlan, long_side: int | None = None) -> TilePlan:
    """One tile of the whole scene with the canvas's aspect, ``long_side`` px (default: the tile's)."""
    long_side = long_side or max(plan.tile_width_px, plan.tile_height_px)
    height, width = guide_size(plan, long_side)
    return make_plan(width, height, width, height, 0, plan.compression)


def lock_mask(
    plan: TilePlan, index: int, feather: int = DEFAULT_LOCK_FEATHER, margin: int = DEFAULT_LOCK_MARGIN
) -> Tensor:
    """Denoise mask [1,1,h,w] of tile ``index``: 1 on new cells, 0 deep inside the known overlap.

    Known cells are ``plan.known_mask(index, margin)``: with ``margin`` > 0 the earlier tiles'
    outermost cells, painted as an image edge, count as new and are regenerated.

    Feather profile: a known cell at chessboard distance ``d`` from the nearest new cell gets
    ``max(0, 1 - d / (feather + 1))``, a linear ramp over ``feather`` cells that rises toward the
    tile's new area (``feather = 0``: hard lock). Known cells in the ramp keep some of their content
    and let the new tile blend into them, so the lock edge is not a hard step.
    """
    if feather < 0:
        raise SamplingError(f"lock_feather must be ≥ 0 cells, got {feather}.")
    if margin < 0:
        raise SamplingError(f"lock_margin must be ≥ 0 cells (0 = lock every known cell), got {margin}.")
    new = (~plan.known_mask(index, margin)).float()[None, None]
    total, grown = new, new
    for _ in range(feather):
        grown = F.max_pool2d(grown, 3, stride=1, padding=1)
        total = total + grown
    return total / (feather + 1)


@dataclass(frozen=True)
class LockRelease:
    """The hybrid of locking and overlap averaging: the lock loosens near its edge as σ falls.

    At noise level σ a released known cell loses ``amount·(1 - σ)`` of its lock weight: fully
    locked at σ = 1, ``1 - amount`` at σ = 0. In the late steps the new tile's prediction is then
    averaged with the earlier content there instead of being overwritten by it, so both sides of the
    lock edge meet halfway; early steps, which set the layout, still see the locked content.
    """

    amount: float = 0.5
    """Share of the lock released by σ = 0 (0 = ComfyUI's constant lock; 1 = the new tile's
    prediction alone at the end)."""
    band: int = 0
    """Release only known cells within ``band`` cells (chessboard) of the tile's new cells; 0 = every
    known cell."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.amount <= 1.0:
            raise SamplingError(f"lock_release must lie in [0, 1] (0 = constant lock), got {self.amount}.")
        if self.band < 0:
            raise SamplingError(f"release_band must be ≥ 0 cells (0 = the whole overlap), got {self.band}.")

    def __call__(self, sigma: Tensor, denoise_mask: Tensor) -> Tensor:
        """The denoise mask at ``sigma`` (a :data:`MaskSchedule`; ComfyUI passes [B, C, h, w] masks)."""
        level = float(torch.as_tensor(sigma).reshape(-1)[0].clamp(0.0, 1.0))
        keep = 1.0 - denoise_mask
        if self.band > 0:
            new = (denoise_mask >= 1.0).to(denoise_mask.dtype)
            size = 2 * self.band + 1
            keep = keep * F.max_pool2d(new.flatten(0, -3)[:, None], size, 1, self.band).reshape(new.shape)
        return denoise_mask + keep * self.amount * (1.0 - level)


def _start_canvas(plan: TilePlan, noise: Tensor, latent: Tensor | None) -> Tensor:
    """The canvas before any tile: the input latent (img2img) or zeros (ComfyUI's empty latent)."""
    expected = (plan.canvas_height, plan.canvas_width)
    if noise.ndim != 4 or tuple(noise.shape[-2:]) != expected:
        raise SamplingError(
            f"noise has shape {tuple(noise.shape)} but the plan's canvas is {expected[0]}×{expected[1]} "
            "latent cells; make the noise [B, C, H, W] for this plan."
        )
    if latent is None:
        return torch.zeros_like(noise)
    if latent.shape[1:] != noise.shape[1:] or latent.shape[0] not in (1, noise.shape[0]):
        raise SamplingError(
            f"latent {tuple(latent.shape)} does not match the noise {tuple(noise.shape)}; give a latent "
            "of the plan's canvas size with the model's latent channels."
        )
    return latent.to(noise).expand_as(noise).clone()


def sample_causal(
    plan: TilePlan,
    noise: Tensor,
    denoise_tile: DenoiseTile,
    *,
    latent: Tensor | None = None,
    cache: Any = None,
    lock_feather: int = DEFAULT_LOCK_FEATHER,
    lock_margin: int = DEFAULT_LOCK_MARGIN,
    lock_release: LockRelease | None = None,
    context: Any = None,
    on_tile: TileCallback | None = None,
    reencode: Callable[[Tensor], None] | None = None,
) -> CanvasResult:
    """Tiles one after another in plan order, each locked to what the earlier ones produced.

    The known cells of a tile (``plan.known_mask`` less each earlier tile's outermost ``lock_margin``
    cells, feathered by :func:`lock_mask`) are inpainted the way ComfyUI does: re-noised with the
    same canvas noise at every step. The BCLA cache still records only the plan's new cells. A
    finished tile is written whole into the canvas: its sampler already returns the known content
    in mask-0 cells and the feathered blend in the ramp, so this equals "new cells plus the blend
    across the feather". ``lock_release`` loosens the lock near its edge in the late steps (each job's
    ``mask_schedule``); the overlap written back is then the blend of old and new content.
    ``cache`` (BCLACache) is told where each tile starts and ends; with
    ``cache.needs_clean_pass`` the finished tile is re-encoded by ``reencode`` (one denoiser call
    near σ = 0, owned by whoever owns the denoiser) while ``cache.clean_pass()`` is open.
    ``context`` (GlobalContext) gives each tile an x0 hook and, with ``bcla_seed``, seeds the cache
    before the first tile.
    """
    canvas = _start_canvas(plan, noise, latent)
    if cache is not None and cache.needs_clean_pass and reencode is None:
        raise SamplingError("The BCLA cache uses source='clean'; pass reencode= or use source='synchronous'.")
    if cache is not None:
        cache.reset()
    if context is not None and context.seeds_cache:
        if cache is None:
            raise SamplingError("The global context has a BCLA seed (bcla_seed > 0); pass a cache too.")
        cache.seed(context.seed_stats, context.bcla_seed)
    release = lock_release if lock_release is not None and lock_release.amount > 0 else None
    finished = []
    for tile in plan.tiles:
        if on_tile is not None:
            on_tile(tile.index, len(plan))
        rows, cols = tile.slices
        mask = lock_mask(plan, tile.index, lock_feather, lock_margin).to(canvas)
        hook = context.x0_hook(tile, plan) if context is not None else None
        job = TileJob(tile, noise[..., rows, cols], canvas[..., rows, cols].clone(), mask, hook, release)
        if cache is not None:
            cache.begin_tile(tile, ~plan.known_mask(tile.index))
        out = denoise_tile(job)
        if cache is not None:
            if cache.needs_clean_pass:
                with cache.clean_pass():
                    reencode(out)
            cache.end_tile()
        canvas[..., rows, cols] = out
        finished.append(out)
    return CanvasResult(canvas, torch.cat(finished))


def sample_independent(
    plan: TilePlan,
    noise: Tensor,
    denoise_tile: DenoiseTile,
    *,
    latent: Tensor | None = None,
    on_tile: TileCallback | None = None,
) -> CanvasResult:
    """The "independent tiles" baseline: no lock, no cache; overlapping cells are averaged."""
    start = _start_canvas(plan, noise, latent)
    total = torch.zeros_like(start)
    generate_all = noise.new_ones(1, 1, plan.tile_height, plan.tile_width)
    finished = []
    for tile in plan.tiles:
        if on_tile is not None:
            on_tile(tile.index, len(plan))
        rows, cols = tile.slices
        out = denoise_tile(TileJob(tile, noise[..., rows, cols], start[..., rows, cols], generate_all))
        total[..., rows, cols] += out
        finished.append(out)
    return CanvasResult(total / plan.coverage().to(total), torch.cat(finished))


def multidiffusion_denoiser(
    plan: TilePlan, denoiser: Denoiser, on_tile: TileCallback | None = None
) -> Denoiser:
    """MultiDiffusion: the canvas prediction is every tile's x0 averaged per cell by coverage.

    Any sampler then runs over the whole canvas ``[B,C,H,W]``; the model only ever sees tiles.
    """
    coverage = plan.coverage()

    def model(x: Tensor, sigma: Tensor) -> Tensor:
        total = torch.zeros_like(x)
        for tile in plan.tiles:
            if on_tile is not None:
                on_tile(tile.index, len(plan))
            rows, cols = tile.slices
            total[..., rows, cols] += denoiser(x[..., rows, cols], sigma)
        return total / coverage.to(total)

    return model


def canvas_noise(seed: int, shape: tuple[int, ...]) -> Tensor:
    """The one seeded canvas noise, drawn on CPU like ComfyUI's prepare_noise (device independent)."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def _tile_crops(plan: TilePlan, canvas: Tensor) -> Tensor:
    return torch.cat([canvas[..., t.slices[0], t.slices[1]] for t in plan.tiles])


def generate(
    plan: TilePlan,
    transformer: torch.nn.Module,
    prompt_embeds: Tensor,
    negative_embeds: Tensor | None,
    *,
    method: str = "causal",
    steps: int = 20,
    cfg: float = 4.5,
    sampler: str = "euler",
    shift: float = 3.0,
    seed: int = 0,
    cache_config: Any = None,
    context: Any = None,
    latent: Tensor | None = None,
    denoise: float = 1.0,
    lock_feather: int = DEFAULT_LOCK_FEATHER,
    lock_margin: int = DEFAULT_LOCK_MARGIN,
    lock_release: LockRelease | None = None,
    guide_first: GuideFirst | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CanvasResult:
    """Generate a latent canvas with a diffusers SanaTransformer2DModel.

    ``method``: ``causal`` (BCLA cache from ``cache_config`` if given), ``guided`` (text to image:
    the whole scene at :func:`guide_plan`'s size first, then causal tiles refined from it, see
    :class:`GuideFirst`), ``independent``, ``multidiffusion`` or ``full`` (one pass over the whole
    canvas, the no-tiling reference). ``progress(done, total)`` counts tile-steps (one tile through
    one model step; ``full``: steps; ``guided``: the guide pass's steps too) and may raise to cancel.
    The batch is the prompt batch (or the latent's, for img2img).
    """
    if method not in METHODS:
        raise SamplingError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if method == "guided" and (latent is not None or context is not None):
        raise SamplingError(
            "method='guided' renders its own guide and start latent; drop latent= and context=."
        )
    if guide_first is not None and method != "guided":
        raise SamplingError(f"guide_first is only used by method='guided', not {method!r}.")
    if denoise < 1 and latent is None:
        raise SamplingError(f"denoise = {denoise} needs an input latent; pass latent= or use denoise=1.0.")
    if context is not None and method != "causal":
        raise SamplingError(f"A global context is only used by method='causal', not {method!r}.")
    settings = guide_first or GuideFirst()
    if method == "guided" and settings.bcla_seed > 0 and cache_config is None:
        raise SamplingError("A guide's bcla_seed > 0 seeds the BCLA cache; pass cache_config or set it to 0.")
    device = next(transformer.parameters()).device
    done, total, guide = 0, 0, None
    if method == "guided":
        total = steps * (1 + len(plan))

        def guide_progress(step: int, _: int) -> None:
            if progress is not None:
                progress(step, total)

        guide = generate(
            guide_plan(plan, settings.long_side),
            transformer,
            prompt_embeds,
            negative_embeds,
            method="full",
            steps=steps,
            cfg=cfg,
            sampler=sampler,
            shift=shift,
            seed=seed,
            progress=guide_progress,
        ).canvas
        latent = (settings.upscale or latent_upscale)(guide, plan.canvas_height, plan.canvas_width)
        denoise, done = settings.denoise, steps
    batch = prompt_embeds.shape[0] if latent is None else latent.shape[0]
    shape = (batch, transformer.config.in_channels, plan.canvas_height, plan.canvas_width)
    noise = canvas_noise(seed, shape).to(device)
    latent = None if latent is None else latent.to(device, noise.dtype)
    sigmas = flow_sigmas(steps, shift, denoise)
    tile_count = 1 if method == "full" else len(plan)
    total = total or (len(sigmas) - 1) * tile_count

    def tick(*_: object) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    cache, undo = None, None
    if method in ("causal", "guided") and cache_config is not None:
        from .bcla import BCLACache, install_bcla

        cache = BCLACache(cache_config, plan)
        undo = install_bcla(transformer, cache)
    try:
        negative = None if negative_embeds is None else negative_embeds.to(device)
        denoiser = CFGDenoiser(transformer, prompt_embeds.to(device), negative, cfg, cache)

        def denoise_tile(job: TileJob) -> Tensor:
            return sample_tile(denoiser, job, sigmas, sampler, tick)

        with torch.no_grad():
            if guide is not None:
                context = encode_global_context(
                    guide,
                    skip_residual=settings.skip_residual,
                    stats=settings.stats,
                    bcla_seed=settings.bcla_seed,
                    denoiser=denoiser if cache is not None else None,
                    cache=cache,
                    sigma=sigmas[:-1],
                    seed=seed,
                )
            if method in ("causal", "guided"):
                result = sample_causal(
                    plan,
                    noise,
                    denoise_tile,
                    latent=latent,
                    cache=cache,
                    lock_feather=lock_feather,
                    lock_margin=lock_margin,
                    lock_release=lock_release,
                    context=context,
                    reencode=lambda x0: denoiser(x0, x0.new_full((x0.shape[0],), CLEAN_SIGMA)),
                )
                return CanvasResult(result.canvas, result.tiles, guide)
            if method == "independent":
                return sample_independent(plan, noise, denoise_tile, latent=latent)
            whole = Tile(0, 0, 0, 0, 0, plan.canvas_height, plan.canvas_width, ())
            start = _start_canvas(plan, noise, latent)
            job = TileJob(whole, noise, start, noise.new_ones(1, 1, *shape[-2:]))
            if method == "full":
                canvas = sample_tile(denoiser, job, sigmas, sampler, tick)
            else:
                canvas = sample_tile(multidiffusion_denoiser(plan, denoiser, tick), job, sigmas, sampler)
            return CanvasResult(canvas, _tile_crops(plan, canvas))
    finally:
        if undo is not None:
            undo()
