"""Seam refine: a low-denoise pass over bands straddling every tile border, after any method.

A tile paints its window's borders as image borders (no position embedding, Mix-FFN's depthwise
convolutions pad with zeros), so whatever a method does, its canvas can keep a step where two tiles
meet. Re-denoising a band across each border at low σ, with the canvas on both sides in view, lets
the model paint the two sides as one image while the band's feathered mask keeps everything away from
the border (UltimateSDUpscale's "band" seam fix). It runs through the host like any tile, so it works
the same in ComfyUI and in the engine, for every method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .contracts import Host, TileJob
from .plan import Tile, TilePlan
from .sampling import SamplingError

DEFAULT_SEAM_REFINE_PAD = 4
"""Cells of context each side of the overlap: enough for the model to see both tiles' content."""


@dataclass(frozen=True)
class SeamRefine:
    """How the bands across tile borders are re-denoised once a method's canvas is done."""

    denoise: float = 0.25
    """Share of the schedule each band runs again (SDEdit strength): low keeps the content and only
    repaints the step at the border."""
    pad: int = DEFAULT_SEAM_REFINE_PAD
    """Cells added to the overlap on each side (and beyond the tile's ends along the border); the
    denoise mask falls linearly from 1 at the overlap to 0 at the band's edge over them."""
    steps: int | None = None
    """Sampler steps of each band; None = :meth:`steps_per_band` of the run's steps."""

    def __post_init__(self) -> None:
        if not 0.0 < self.denoise <= 1.0:
            raise SamplingError(
                f"seam refine denoise must be in (0, 1] (0.15–0.3 repaints only the border), got "
                f"{self.denoise}; leave seam refine off (None) for no refine pass."
            )
        if self.pad < 1:
            raise SamplingError(f"seam refine pad must be ≥ 1 latent cell of context, got {self.pad}.")
        if self.steps is not None and self.steps < 1:
            raise SamplingError(f"seam refine steps must be ≥ 1 (None: the default), got {self.steps}.")

    def steps_per_band(self, steps: int) -> int:
        """``steps × denoise`` by default: the schedule's last ``denoise`` share at the run's step size."""
        return self.steps or max(1, round(steps * self.denoise))


@dataclass(frozen=True)
class RefineBand:
    """One band across the border of two grid-adjacent tiles (``first``, ``second``: plan indices)."""

    first: int
    second: int
    axis: str
    """``vertical`` (left/right neighbours: the border runs down the canvas) or ``horizontal``."""
    window: Tile
    """The band's cells on the canvas (sampled like a tile)."""
    mask: Tensor
    """[1, 1, h, w] denoise mask: 1 on the overlap along the tiles' length, falling to 0 at the edges."""


def _profile(start: int, stop: int, core_start: int, core_stop: int, pad: int) -> Tensor:
    """Over cells ``[start, stop)``: 1 on ``[core_start, core_stop)``, falling linearly to 0 ``pad``
    cells away."""
    cells = torch.arange(start, stop)
    distance = (core_start - cells).clamp_min(0) + (cells - (core_stop - 1)).clamp_min(0)
    return (1.0 - distance / pad).clamp_min(0.0)


def _span(core_start: int, core_stop: int, pad: int, size: int) -> tuple[int, int]:
    return max(core_start - pad, 0), min(core_stop + pad, size)


def refine_bands(plan: TilePlan, pad: int = DEFAULT_SEAM_REFINE_PAD) -> list[RefineBand]:
    """One band per pair of grid-adjacent tiles (``TilePlan.seams``), inside the canvas.

    Across the border the band is the overlap (the two cells at the shared edge when tiles do not
    overlap) plus ``pad`` cells each side; along it, the tiles' length plus ``pad`` cells beyond each end
    that is not the canvas border, so consecutive bands of one border line fade into each other.
    """
    if pad < 1:
        raise SamplingError(f"seam refine pad must be ≥ 1 latent cell of context, got {pad}.")
    bands = []
    for seam in plan.seams():
        a, b = sorted((plan.tiles[seam.first], plan.tiles[seam.second]), key=lambda t: (t.y, t.x))
        vertical = seam.axis == "vertical"
        across_a, across_b = (a.x, b.x) if vertical else (a.y, b.y)
        length = a.width if vertical else a.height
        core_start, core_stop = min(across_b, across_a + length - 1), max(across_a + length, across_b + 1)
        along_start, along_size = (a.y, a.height) if vertical else (a.x, a.width)
        canvas_across, canvas_along = (
            (plan.canvas_width, plan.canvas_height) if vertical else (plan.canvas_height, plan.canvas_width)
        )
        across = _span(core_start, core_stop, pad, canvas_across)
        along = _span(along_start, along_start + along_size, pad, canvas_along)
        across_profile = _profile(*across, core_start, core_stop, pad)
        along_profile = _profile(*along, along_start, along_start + along_size, pad)
        if vertical:
            y, x, mask = along[0], across[0], along_profile[:, None] * across_profile[None, :]
        else:
            y, x, mask = across[0], along[0], across_profile[:, None] * along_profile[None, :]
        window = Tile(len(bands), a.row, a.col, y, x, mask.shape[0], mask.shape[1], ())
        bands.append(RefineBand(seam.first, seam.second, seam.axis, window, mask[None, None]))
    return bands


def refine_seams(plan: TilePlan, host: Host, canvas: Tensor, noise: Tensor, options: SeamRefine) -> Tensor:
    """``canvas`` [B,C,H,W] with every :func:`refine_bands` band re-denoised at ``options.denoise``, one
    band after another (a later band sees the earlier ones' result), each from its crop of the run's
    canvas noise; cells outside the bands are returned unchanged."""
    canvas = canvas.clone()
    steps = options.steps_per_band(host.steps)
    for band in refine_bands(plan, options.pad):
        rows, cols = band.window.slices
        job = TileJob(
            band.window,
            noise[..., rows, cols],
            canvas[..., rows, cols].clone(),
            band.mask.to(canvas),
            denoise=options.denoise,
            steps=steps,
        )
        canvas[..., rows, cols] = host.denoise(job)
    return canvas


def refine_steps_total(plan: TilePlan, options: SeamRefine | None, steps: int) -> int:
    """Band-steps a seam refine adds to a run's progress total (0 without one)."""
    if options is None:
        return 0
    return len(plan.seams()) * options.steps_per_band(steps)
