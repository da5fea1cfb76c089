"""Tile loops: causal (tiles one after another, earlier content locked), independent tiles and
MultiDiffusion.

The loops only decide what each tile sees and where its result goes; how a tile is denoised is a
:data:`DenoiseTile` callable (the run path's host: ComfyUI's samplers in the nodes, the engine's flow
sampler elsewhere), so the same loop serves both. All tensors are batched: ``B`` canvases at once;
tile batches are ``[T*B, ...]`` tile-major (index ``t*B + b``), tiles in plan order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .contracts import Denoiser, Resample, TileCache, TileCallback, TileContext, TileJob
from .errors import UserInputError
from .options import DEFAULT_LOCK_FEATHER, DEFAULT_LOCK_MARGIN, DEFAULT_LOCK_RELEASE, DEFAULT_RELEASE_BAND
from .plan import Tile, TilePlan

CLEAN_SIGMA = 1e-3
"""Noise level of the clean re-encoding pass (BCLA ``source = "clean"``): a finished tile, near t = 0."""


class SamplingError(UserInputError):
    """Inputs that do not fit the plan or each other; the message says what to change."""


DenoiseTile = Callable[[TileJob], Tensor]
"""Returns the finished clean tile latent [B,C,h,w]."""


@dataclass
class CanvasResult:
    canvas: Tensor
    """[B,C,H,W] the stitched latent canvas."""
    tiles: Tensor | None
    """[T*B,C,h,w] each tile's own finished latent, tile-major, in plan order (unblended, and as the
    method made it: a seam refine pass changes only ``canvas``); None when the caller asked for the
    canvas alone (``keep_tiles=False``)."""
    guide: Tensor | None = None
    """[B,C,h,w] the whole-scene pass ``method="guided"`` started from; None for the other methods."""


def lock_mask(
    plan: TilePlan,
    index: int,
    feather: int = DEFAULT_LOCK_FEATHER,
    margin: int = DEFAULT_LOCK_MARGIN,
    window: Tile | None = None,
) -> Tensor:
    """Denoise mask [1,1,h,w] of tile ``index`` (or of its halo ``window``, ``TilePlan.window``): 1 on
    new cells, 0 deep inside the known overlap.

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
    new = (~plan.known_mask(index, margin, window)).float()[None, None]
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

    amount: float = DEFAULT_LOCK_RELEASE
    """Share of the lock released by σ = 0 (0 = ComfyUI's constant lock; 1 = the new tile's
    prediction alone at the end)."""
    band: int = DEFAULT_RELEASE_BAND
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
            keep = keep * within(denoise_mask >= 1.0, self.band).to(denoise_mask.dtype)
        return denoise_mask + keep * self.amount * (1.0 - level)


def within(cells: Tensor, band: int) -> Tensor:
    """The cells of a bool mask [..., h, w] within ``band`` cells (chessboard) of a True cell."""
    grown = F.max_pool2d(cells.flatten(0, -3)[:, None].float(), 2 * band + 1, 1, band)
    return grown.reshape(cells.shape) > 0


def start_canvas(plan: TilePlan, noise: Tensor, latent: Tensor | None, overwrite: bool = False) -> Tensor:
    """The canvas before any tile: the input latent (img2img) or zeros (ComfyUI's empty latent).

    ``overwrite``: the canvas is ``latent`` itself when it already has the noise's shape, dtype and
    device (a latent nobody reads afterwards: the tiles are then painted over it, without a
    canvas-sized copy); otherwise a copy."""
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
    same = (latent.shape, latent.dtype, latent.device) == (noise.shape, noise.dtype, noise.device)
    if overwrite and same:
        return latent
    return latent.to(noise).expand_as(noise).clone()


def sample_causal(
    plan: TilePlan,
    noise: Tensor,
    denoise_tile: DenoiseTile,
    *,
    latent: Tensor | None = None,
    cache: TileCache | None = None,
    lock_feather: int = DEFAULT_LOCK_FEATHER,
    lock_margin: int = DEFAULT_LOCK_MARGIN,
    lock_release: LockRelease | None = None,
    context: TileContext | None = None,
    on_tile: TileCallback | None = None,
    reencode: Callable[[Tensor], None] | None = None,
    halo: int = 0,
    resample: Resample | None = None,
    overwrite_latent: bool = False,
    keep_tiles: bool = True,
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
    before the first tile. ``halo`` > 0 samples each tile on its window grown by that many cells
    (``TilePlan.window``): earlier content there is locked like the overlap, cells no tile has made
    yet are generated; only the tile's own area is kept, so its border is no longer the model's
    image border. ``resample`` (``BorderResample.bind``) becomes every job's model call near the lock
    edge. ``overwrite_latent``: the tiles are painted over ``latent`` itself (:func:`start_canvas`);
    ``keep_tiles=False``: no per-tile latents (``CanvasResult.tiles`` is None; at 512/64 px tiles
    they are 1.4× the canvas).
    """
    canvas = start_canvas(plan, noise, latent, overwrite_latent)
    if cache is not None and cache.needs_clean_pass and reencode is None:
        raise SamplingError("The BCLA cache uses source='clean'; pass reencode= or use source='synchronous'.")
    if cache is not None:
        cache.reset()
    if context is not None and context.seeds_cache:
        if cache is None:
            raise SamplingError("The global context has a BCLA seed (bcla_seed > 0); pass a cache too.")
        cache.seed(context.seed_stats, context.bcla_seed)
    release = lock_release if lock_release is not None and lock_release.amount > 0 else None
    finished, batch = _tile_batch(plan, canvas) if keep_tiles else None, canvas.shape[0]
    for number, tile in enumerate(plan.tiles):
        if on_tile is not None:
            on_tile(tile.index, len(plan))
        window = plan.window(tile, halo)
        rows, cols = window.slices
        own_rows, own_cols = own = tile.slices_in(window)
        mask = lock_mask(plan, tile.index, lock_feather, lock_margin, window).to(canvas)
        hook = context.x0_hook(window, plan) if context is not None else None
        crops = noise[..., rows, cols], canvas[..., rows, cols].clone()
        job = TileJob(window, *crops, mask, hook, release, resample=resample)
        if cache is not None:
            generated = torch.zeros(window.height, window.width, dtype=torch.bool)
            generated[own] = ~plan.known_mask(tile.index)
            cache.begin_tile(tile, generated, window)
        sampled = denoise_tile(job)
        if cache is not None:
            if cache.needs_clean_pass:
                with cache.clean_pass():
                    reencode(sampled)
            cache.end_tile()
        out = sampled[..., own_rows, own_cols]
        canvas[..., tile.slices[0], tile.slices[1]] = out
        if finished is not None:
            finished[number * batch : (number + 1) * batch] = out
    return CanvasResult(canvas, finished)


def sample_independent(
    plan: TilePlan,
    noise: Tensor,
    denoise_tile: DenoiseTile,
    *,
    latent: Tensor | None = None,
    on_tile: TileCallback | None = None,
    halo: int = 0,
    keep_tiles: bool = True,
) -> CanvasResult:
    """The "independent tiles" baseline: no lock, no cache; overlapping cells are averaged.

    ``halo`` > 0 samples each tile on its window grown by that many cells and keeps the tile's area;
    ``keep_tiles=False``: no per-tile latents (``CanvasResult.tiles`` is None).
    """
    start = start_canvas(plan, noise, latent)
    total = torch.zeros_like(start)
    finished, batch = _tile_batch(plan, start) if keep_tiles else None, start.shape[0]
    for number, tile in enumerate(plan.tiles):
        if on_tile is not None:
            on_tile(tile.index, len(plan))
        window = plan.window(tile, halo)
        rows, cols = window.slices
        own_rows, own_cols = tile.slices_in(window)
        generate_all = noise.new_ones(1, 1, window.height, window.width)
        sampled = denoise_tile(TileJob(window, noise[..., rows, cols], start[..., rows, cols], generate_all))
        out = sampled[..., own_rows, own_cols]
        total[..., tile.slices[0], tile.slices[1]] += out
        if finished is not None:
            finished[number * batch : (number + 1) * batch] = out
    return CanvasResult(total / plan.coverage().to(total), finished)


def _tile_batch(plan: TilePlan, canvas: Tensor) -> Tensor:
    """The empty [T*B, C, h, w] batch the loops write each finished tile into as it comes (filled in
    place: a list concatenated at the end would hold every tile twice)."""
    batch, channels = canvas.shape[:2]
    return canvas.new_empty(len(plan) * batch, channels, plan.tile_height, plan.tile_width)


def multidiffusion_denoiser(
    plan: TilePlan, denoiser: Denoiser, on_tile: TileCallback | None = None, halo: int = 0
) -> Denoiser:
    """MultiDiffusion: the canvas prediction is every tile's x0 averaged per cell by coverage.

    Any sampler then runs over the whole canvas ``[B,C,H,W]``; the model only ever sees tiles (with
    ``halo`` > 0, each tile's window grown by that many cells, of which only the tile's x0 counts).
    """
    coverage = plan.coverage()
    windows = [(plan.window(tile, halo), tile) for tile in plan.tiles]

    def model(x: Tensor, sigma: Tensor) -> Tensor:
        total = torch.zeros_like(x)
        for window, tile in windows:
            if on_tile is not None:
                on_tile(tile.index, len(plan))
            rows, cols = window.slices
            own_rows, own_cols = tile.slices_in(window)
            total[..., tile.slices[0], tile.slices[1]] += denoiser(x[..., rows, cols], sigma)[
                ..., own_rows, own_cols
            ]
        return total / coverage.to(total)

    return model


def canvas_noise(seed: int, shape: tuple[int, ...]) -> Tensor:
    """The one seeded canvas noise, drawn on CPU like ComfyUI's prepare_noise (device independent)."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))
