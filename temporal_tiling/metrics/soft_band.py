"""Soft bands: a darker or tinted stripe, or a soft step, spread over the whole overlap at every seam of
an axis, that no single line and no fitted jump sees but a person does.

At large enlargements (12.8× one-step guided, 2048×1024) every tile row leaves a soft band about as wide
as its overlap: ~1 L* darker where the rows meet, then the sky's gradient climbs in a ~25 px riser
instead of spreading over the tile. Each line differs from its neighbours by less than the sky's own
texture (the gradient ratio reads ×1.04), the colour either side of a line by 1.5 ΔE against 0.9 in the
tiles (under the floor-level target), and the drift's fitted trend follows the treads. The eye sees it
because it repeats, the same way, at every row.

What is measured (``AxisView.band_contrast``): per line, the centre-surround contrast at the overlap's
scale, the mean Lab of a box as wide as ``band_scale`` centred on the line less the mean of the two boxes
that far before and after it, the median over segments along the line (signed). A gradient reads 0, a
band its depth, a soft step a third of its height at its foot and at its top.

How it is judged, per axis:
- seams: each row of seams (the seams that share their lines; a column for vertical seams) of the
  axis' usual band width is one band along the whole canvas: content that runs along a row, a horizon,
  counts once. Per line and Lab channel the median of the rows' (× batch) contrast, shrunk toward 0 by
  ``SAMPLING_Z`` standard errors of that median (the allowance), then CIEDE2000 of it on the median
  centre colour; the worst line. A tiling band is the same at every row and survives the median;
  content has another shape and sign at each row and cancels, and rows that disagree leave nothing.
- floor: the same statistic over the tiles' seam-free middles (rows of tiles), windows of the same
  width at ``FLOOR_OFFSETS`` + 1 one-line shifts; their median.
- target: the excess (seams beyond chance less the floor) below ``delta_e_target`` of the content's
  own band contrast (the unsigned worst line of each window in each tile's middle, each tile counted
  once): busy content masks a band, a quiet sky shows one from ``QUIET_DELTA_E``.
- not judged with fewer than ``MIN_POSITIONS`` rows of seams (too few to tell a band repeated at
  every row from content that happens to agree; the line measures judge those) or where no tile has a
  seam-free middle as wide as the band and both flanks.

On the verdict cases (``tests/unit/verdict_cases``): the 2048×1024 soft bands read ΔE 1.03 against
0.03 (+0.77, target 0.55), the same sky made with the chained enlargement 0.15 against 0.07; untouched
photographs cut on the planner's plans stay below their targets.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import replace

import torch
from torch import Tensor

from ..plan import TilePlan
from .bands import BAND_PX, Axis, Band, floor_bands, seam_bands
from .colour import ciede2000
from .measure import AxisView
from .verdict import SAMPLING_Z, AxisJudgement, weighted_median

FLOOR_OFFSETS = 8
"""Floor windows are taken at this many one-line shifts (plus one) around each tile's middle."""


def band_scale(overlap_px: int) -> int:
    """Box width and flank distance of the contrast: half the overlap (a band that fills the overlap
    fills the box, its flanks land in the tiles), at least ``BAND_PX`` (zero-overlap seams)."""
    return max(BAND_PX, overlap_px // 2)


def _coherent(contrast: Tensor, centre: Tensor) -> tuple[float, float]:
    """The band every sample [N, 3, lines] shares: per line and Lab channel the median contrast, and that
    median shrunk toward 0 by ``SAMPLING_Z`` standard errors (√(π/2) · 1.4826 MAD / √n: a few seams that
    disagree, a sun on two of four, leave nothing); CIEDE2000 of each on the median centre colour, the
    worst line. Returns (raw, beyond chance)."""
    median = contrast.nanquantile(0.5, dim=0)
    spread = 1.4826 * (contrast - median).abs().nanquantile(0.5, dim=0)
    count = torch.isfinite(contrast).sum(0).clamp_min(1)
    error = math.sqrt(math.pi / 2) * spread / count.sqrt()
    shrunk = median.sign() * (median.abs() - SAMPLING_Z * error).clamp_min(0)
    base = centre.nanquantile(0.5, dim=0)
    raw, kept = (float(ciede2000(base, base + c, dim=0).nan_to_num(0.0).max()) for c in (median, shrunk))
    return raw, kept


def _whole_lines(bands: list[Band]) -> list[Band]:
    """The bands that share their lines (a row of tiles' seams, or their seam-free parts) as one band
    along all of them: content that runs along the row, a horizon, is one sample, not one per tile."""
    extents: dict[tuple, tuple[int, int]] = {}
    for b in bands:
        key = (b.axis, b.first, b.last, b.window, b.reach)
        start, stop = extents.get(key, (b.start, b.stop))
        extents[key] = (min(start, b.start), max(stop, b.stop))
    return [
        Band(a, first, last, start, stop, window, reach)
        for (a, first, last, window, reach), (start, stop) in extents.items()
    ]


MIN_POSITIONS = 4
"""Rows of seams (or columns) an axis needs for a soft band to be judged. A band at one row cannot be
told from content that runs along it (a horizon), and with two or three rows the spread the allowance
rests on is the smaller of one or two deviations: two rows of sky that agree by chance pass for a
staircase (the cameraman photo cut into 3 columns read +0.78). From four rows, a band the same at every
row is a staircase."""


def _windows(view: AxisView, band: Band, scale: int, width: int) -> tuple[Tensor, Tensor, int] | None:
    """Contrast and centre colour of every line of a floor band's whole seam-free part, and the first
    line of the ``width`` + ``FLOOR_OFFSETS`` lines in its middle; None where the part is too narrow."""
    lo, hi = band.reach
    whole = replace(band, first=max(lo, 1), last=max(lo, 1, hi - 1))  # the bands' guard is for 8 px sides
    contrast, centre, valid = view.band_contrast(whole, scale)
    lines = valid.nonzero().flatten()
    if lines.numel() < width + FLOOR_OFFSETS:
        return None
    return contrast, centre, int(lines[0]) + (lines.numel() - width - FLOOR_OFFSETS) // 2


def _content_level(view: AxisView, floors: list[Band], scale: int, width: int) -> float | None:
    """How much band contrast the content has by itself: the unsigned worst line of every ``width``-line
    window in each tile's seam-free middle, weighted so each tile counts once."""
    values, weights = [], []
    for band in floors:
        middle = _windows(view, band, scale, width)
        if middle is None:
            continue
        contrast, centre, first = middle
        lines = slice(first, first + width + FLOOR_OFFSETS)
        own = ciede2000(centre[..., lines], (centre + contrast)[..., lines])  # [B, lines]
        per_window = own.unfold(-1, width, 1).amax(-1).flatten().double()
        values.append(per_window)
        weights.append(torch.full_like(per_window, 1.0 / per_window.numel()))
    return weighted_median(torch.cat(values), torch.cat(weights)) if values else None


def judge_soft_bands(views: dict[str, AxisView], plan: TilePlan) -> dict[Axis, AxisJudgement]:
    """The soft-band :class:`AxisJudgement` of each axis that has seams (see the module docstring)."""
    seams = list(zip(seam_bands(plan), plan.seams(), strict=True))
    floors = [b for b in floor_bands(plan) if b.reach is not None]
    out = {}
    for axis in ("vertical", "horizontal"):
        mine = [(band, seam) for band, seam in seams if band.axis == axis]
        if not mine:
            continue
        view = views[axis]
        # the usual band: fit="shift" widens the last overlap, a band of another shape to align with
        width = statistics.mode(b.last - b.first + 1 for b, _ in mine)
        usual = [(b, s) for b, s in mine if b.last - b.first + 1 == width]
        scale = band_scale(usual[0][1].overlap_stop - usual[0][1].overlap_start)
        positions = _whole_lines([b for b, _ in usual])
        contrasts, centres = [], []
        for band in positions:
            contrast, centre, valid = view.band_contrast(band, scale)
            contrasts.append(contrast.masked_fill(~valid, float("nan")))
            centres.append(centre)
        seam_raw, seam_value = _coherent(torch.cat(contrasts), torch.cat(centres))
        if len(positions) < MIN_POSITIONS:
            out[axis] = AxisJudgement(seam_raw, None, seam_raw - seam_value, 0.0, judged=False)
            continue
        middles = [
            m
            for b in _whole_lines([b for b in floors if b.axis == axis])
            if (m := _windows(view, b, scale, width))
        ]
        level = _content_level(view, [b for b in floors if b.axis == axis], scale, width)
        if not middles or level is None:  # no tile has a seam-free middle this wide
            out[axis] = AxisJudgement(seam_raw, None, seam_raw - seam_value, 0.0, judged=False)
            continue
        floor = statistics.median(
            _coherent(
                torch.cat([c[..., f + k : f + k + width] for c, _, f in middles]),
                torch.cat([m[..., f + k : f + k + width] for _, m, f in middles]),
            )[1]
            for k in range(FLOOR_OFFSETS + 1)
        )
        out[axis] = AxisJudgement(seam_raw, floor, seam_raw - seam_value, seam_value - floor, True, level)
    return out
