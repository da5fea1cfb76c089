"""Seam quality metrics for stitched tile images, judged against the image's own floor.

Images are engine-side ``[B, 3, H, W]`` floats in [0, 1]; luminance is CIE L* and colour is CIE Lab
(kornia, sRGB / D65). A *line* is the boundary between pixel ``position - 1`` and ``position`` across
its axis (``vertical`` lines run down the image), ``start``..``stop`` along it.

Where a seam is measured. Two tiles' content meets anywhere inside their overlap: an unblended stitch
cuts at the later tile's border, a feather hides the centre, a lock ramp or a lock margin moves the step
to any line between. So each seam is measured on its *band*: every line from ``MARGIN_PX`` before its
overlap to ``MARGIN_PX`` after it (the shared edge ± ``MARGIN_PX`` without overlap). A seam's headline
is its worst line.

Against what. Content has edges and colour changes of its own, so windows shaped like each seam's
band (same axis, same width) are slid through the part of every tile no other tile reaches: the
*floor*, what this image scores where there is no seam. The verdict (``SeamReport.meets_targets``) is
the seams' excess over that floor, on each axis apart (``AxisJudgement``): the median over that axis'
seams of the worst-line gradient ratio below ``TARGET_RATIO`` times the floor's median, of the
worst-line ΔE and the drift ΔE less than ``delta_e_target`` above the floor's (beyond the sampling
noise of both medians, ``SAMPLING_Z``): ``TARGET_DELTA_E`` on busy content, the floor itself (at least
``QUIET_DELTA_E``) where the content is quieter than that, since a step shows against what surrounds
it. A tiling artefact is at every seam of its axis; a sun crossing a band is at a few, and a line at
every horizontal seam is not averaged away by clean vertical ones.
Worst seams are reported (and drawn by ``mark_measured_lines``) but not judged: one band crossing a
strong edge of the content decides a worst value.

The numbers:
- gradient ratio of a line: mean |ΔL*| across the line over mean |ΔL*| between neighbouring pixel lines
  within ``BAND_PX`` on both sides, both plus the image's own noise level (``noise_lstar``), so flat,
  noise-free areas do not turn rounding into drama; per ``SEGMENT_PX`` segment along the line, the
  median over the segments (``ALONG_QUANTILE``). 1 = like its surroundings.
- ΔE of a line: CIEDE2000 between the mean Lab of the ``BAND_PX`` bands on either side, per
  ``SEGMENT_PX`` segment along the line, the median over the segments.
- drift ΔE of a band: the colour step across the band that the colour trend on either side does not
  explain (``DRIFT_STRIP_PX`` strips just outside it fitted with one linear trend plus a jump, per
  ``DRIFT_SEGMENT_PX`` segment, the median jump; CIEDE2000 of it): a tile-sized colour change spread
  over the whole overlap (a feather between tiles of different colour casts, a soft step at every tile
  row) that no single line sees, while a sky's own gradient passes through.
- line jump (plan-free): for every row and column boundary the mean |ΔL*| along it; the worst over the
  median of its axis. A seam across the canvas is a peak; it needs no plan, so it also judges images
  from other tools.
- with a low-res guide: the image downscaled to the guide's size against the guide (PSNR, SSIM) and
  each tile's mean colour against the guide's over the same area (ΔE): layout and colour fidelity.
- overlap PSNR (between unblended tiles) and seam-zone PSNR (against a same-size reference) are
  reported but never judged: overlap PSNR is 100 dB by construction for hard locking and MultiDiffusion.

PSNR of identical inputs is infinite; it is reported as ``PSNR_CAP_DB`` (100 dB, i.e. MSE ≤ 1e-10) so
the result stays a finite JSON number.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UserInputError
from .plan import TilePlan

PSNR_CAP_DB = 100.0
BAND_PX = 8
SEGMENT_PX = 32
MARGIN_PX = 2
"""Lines measured beyond each side of an overlap: a step at the overlap border can land a pixel or two out."""
DRIFT_STRIP_PX = 16
DRIFT_SEGMENT_PX = 64
ALONG_QUANTILE = 0.5
LINE_JUMP_BORDER_PX = 4
"""Row/column boundaries this close to the image border are left out of the line jump: decoders and
padding treat the outermost pixels differently in every method, the untiled render included."""
NOISE_FLOOR_LSTAR = 0.1
"""Least noise level (L*) added to the gradient ratio, for synthetic noise-free images."""
TARGET_RATIO = 1.2
TARGET_DELTA_E = 2.0
QUIET_DELTA_E = 0.5
"""Least ΔE excess judged visible: on a smooth sky a whole-width step this large above the floor shows."""
SAMPLING_Z = 2.0
"""ΔE excesses are counted beyond two standard errors of the difference of the seams' and the floor's
medians: on busy photos bands of content differ by several ΔE, and a handful of seams can land on busier
content than the tiles' middles by chance; on flat content that allowance is near zero."""

Axis = Literal["vertical", "horizontal"]


class MetricsError(UserInputError):
    """Inputs the metrics cannot measure; the message says what to change."""


@dataclass(frozen=True)
class Band:
    """Measuring lines ``first``..``last`` (inclusive) across ``axis``, each ``start``..``stop`` along it.

    ``window`` > 0 slides a window of that many lines across the band and scores every position (the
    floor: many samples of what a seam-wide band scores in this image); 0 scores the band as one window.
    ``reach`` bounds the pixels (across) its drift strips may use: a floor band's strips stay off seams.
    """

    axis: Axis
    first: int
    last: int
    start: int
    stop: int
    window: int = 0
    reach: tuple[int, int] | None = None

    @property
    def positions(self) -> Tensor:
        return torch.arange(self.first, self.last + 1)


# --- colour science ------------------------------------------------------------------------------
def ciede2000(lab1: Tensor, lab2: Tensor, dim: int = 1) -> Tensor:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005) between Lab colours held along ``dim``.

    kornia has no ΔE; this is the textbook formula, vectorised, evaluated in float64 (float32 on MPS,
    which has none) because the hue terms are ill-conditioned near neutral colours.
    """
    precise = torch.float32 if lab1.device.type == "mps" else torch.float64
    lab1, lab2 = lab1.to(precise), lab2.to(precise)
    l1, a1, b1 = lab1.unbind(dim)
    l2, a2, b2 = lab2.unbind(dim)
    c_bar = (torch.hypot(a1, b1) + torch.hypot(a2, b2)) / 2
    g = 0.5 * (1 - torch.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = torch.hypot(a1p, b1), torch.hypot(a2p, b2)
    h1p = torch.remainder(torch.atan2(b1, a1p), 2 * math.pi)
    h2p = torch.remainder(torch.atan2(b2, a2p), 2 * math.pi)
    chroma_zero = (c1p * c2p) == 0

    dh = h2p - h1p
    dh = torch.where(dh > math.pi, dh - 2 * math.pi, torch.where(dh < -math.pi, dh + 2 * math.pi, dh))
    dh = torch.where(chroma_zero, torch.zeros_like(dh), dh)
    d_l, d_c = l2 - l1, c2p - c1p
    d_h = 2 * torch.sqrt(c1p * c2p) * torch.sin(dh / 2)

    l_bar, cp_bar = (l1 + l2) / 2, (c1p + c2p) / 2
    h_sum = h1p + h2p
    h_bar = torch.where(
        (h1p - h2p).abs() <= math.pi,
        h_sum / 2,
        torch.where(h_sum < 2 * math.pi, (h_sum + 2 * math.pi) / 2, (h_sum - 2 * math.pi) / 2),
    )
    h_bar = torch.where(chroma_zero, h_sum, h_bar)
    t = (
        1
        - 0.17 * torch.cos(h_bar - math.radians(30))
        + 0.24 * torch.cos(2 * h_bar)
        + 0.32 * torch.cos(3 * h_bar + math.radians(6))
        - 0.20 * torch.cos(4 * h_bar - math.radians(63))
    )
    d_theta = math.radians(30) * torch.exp(-(((torch.rad2deg(h_bar) - 275) / 25) ** 2))
    r_c = 2 * torch.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / torch.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * cp_bar
    s_h = 1 + 0.015 * cp_bar * t
    r_t = -torch.sin(2 * d_theta) * r_c
    terms = (d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2 + r_t * (d_c / s_c) * (d_h / s_h)
    return torch.sqrt(terms.clamp_min(0))


def to_lab(image: Tensor) -> Tensor:
    """sRGB [B,3,H,W] in [0,1] → CIE Lab (L* 0..100) in float32."""
    return kornia.color.rgb_to_lab(image.float().clamp(0, 1))


def psnr(a: Tensor, b: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-batch-element PSNR (range 1.0), optionally inside a [H,W] mask, capped at ``PSNR_CAP_DB``."""
    err = (a.float() - b.float()) ** 2
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = mask.to(err.dtype).expand_as(err[:, :1])
        mse = (err * m).flatten(1).sum(1) / (m.flatten(1).sum(1) * err.shape[1]).clamp_min(1)
    floor = 10 ** (-PSNR_CAP_DB / 10)
    return (10 * torch.log10(1 / mse.clamp_min(floor))).clamp_max(PSNR_CAP_DB)


# --- where to measure ------------------------------------------------------------------------------
def _axis_size(plan: TilePlan, axis: Axis) -> int:
    return plan.width_px if axis == "vertical" else plan.height_px


def _clamped_band(axis: Axis, first: int, last: int, start: int, stop: int, size: int) -> Band:
    first, last = max(first, 1), min(last, size - 1)
    return Band(axis, first, max(first, last), start, stop)


def seam_bands(plan: TilePlan) -> list[Band]:
    """Every line of every seam's overlap and ``MARGIN_PX`` beyond, in ``plan.seams()`` order."""
    bands = []
    for s in plan.seams():
        lo, hi = (s.overlap_start, s.overlap_stop) if s.overlap_stop > s.overlap_start else (s.position,) * 2
        size = _axis_size(plan, s.axis)
        bands.append(_clamped_band(s.axis, lo - MARGIN_PX, hi + MARGIN_PX, s.start, s.stop, size))
    return bands


def floor_bands(plan: TilePlan) -> list[Band]:
    """Per tile and axis, every line of the part of the tile no neighbour covers, kept ``BAND_PX`` clear
    of the seam bands so no line's side bands see a seam, with a window as wide as that axis' seam bands
    (median). Tiles that neighbours cover (nearly) whole give none."""
    c = plan.compression
    by_cell = {(t.row, t.col): t for t in plan.tiles}
    seams = seam_bands(plan)
    bands = []
    for axis in ("vertical", "horizontal"):
        widths = [b.last - b.first + 1 for b in seams if b.axis == axis]
        if not widths:
            continue
        window = int(statistics.median(widths))
        for t in plan.tiles:
            if axis == "vertical":
                before, after = by_cell.get((t.row, t.col - 1)), by_cell.get((t.row, t.col + 1))
                lo = (before.x + before.width) * c if before else t.x * c
                hi = after.x * c if after else (t.x + t.width) * c
                start, stop = t.y * c, (t.y + t.height) * c
            else:
                before, after = by_cell.get((t.row - 1, t.col)), by_cell.get((t.row + 1, t.col))
                lo = (before.y + before.height) * c if before else t.y * c
                hi = after.y * c if after else (t.y + t.height) * c
                start, stop = t.x * c, (t.x + t.width) * c
            guard = MARGIN_PX + BAND_PX
            first, last = lo + guard if before else lo, hi - guard if after else hi
            if last < first:  # neighbours cover (nearly) all of it: no seam-free lines here
                continue
            reach = (lo + MARGIN_PX if before else lo, hi - MARGIN_PX if after else hi)
            band = _clamped_band(axis, first, last, start, stop, _axis_size(plan, axis))
            bands.append(replace(band, window=window, reach=reach))
    return bands


# --- measuring -------------------------------------------------------------------------------------
def noise_lstar(lum: Tensor) -> Tensor:
    """The image's own noise as the mean |ΔL*| it alone puts between neighbouring pixels, [B, 1].

    Robust (median absolute deviation of the signed neighbour differences, so smooth gradients and
    edges do not count), at least ``NOISE_FLOOR_LSTAR``.
    """
    diffs = torch.cat(
        [(lum[..., 1:] - lum[..., :-1]).flatten(1), (lum[..., 1:, :] - lum[..., :-1, :]).flatten(1)], 1
    )
    centred = diffs - diffs.median(1, keepdim=True).values
    sigma = 1.4826 * centred.abs().median(1, keepdim=True).values
    return (sigma * math.sqrt(2 / math.pi)).clamp_min(NOISE_FLOOR_LSTAR)


def _along(per_segment: Tensor) -> Tensor:
    """A line's score from its segments' [..., S, lines]: their ``ALONG_QUANTILE`` quantile, so a step that
    runs the whole line (a seam) counts and content crossing a part of it does not."""
    return torch.quantile(per_segment, ALONG_QUANTILE, dim=-2)


class _AxisView:
    """One image seen with its lines vertical (horizontal lines: the image transposed), with the running
    sums every band measure needs, so each band costs a few gathers instead of a pass over pixels."""

    def __init__(self, lab: Tensor, eps: Tensor):
        lab = lab.double()
        lum = lab[:, 0]
        self.eps = eps.double()
        self.width = lab.shape[-1]
        steps = (lum[..., 1:] - lum[..., :-1]).abs()  # [B, H, W-1]: boundary j is line j + 1
        self.steps_rows = F.pad(steps.cumsum(-2), (0, 0, 1, 0))
        self.lab_rows = F.pad(lab.cumsum(-2), (0, 0, 1, 0))

    @staticmethod
    def _segment_means(rows: Tensor, start: int, stop: int, segment: int) -> Tensor:
        """Mean of each ``segment`` px piece of rows start..stop of a row-running-summed [..., H+1, W]
        tensor, per column: [..., S, W]."""
        cuts = torch.arange(start, stop + segment - 1, segment).clamp_max(stop).unique()
        lengths = (cuts[1:] - cuts[:-1]).to(rows)[:, None]
        return (rows[..., cuts[1:], :] - rows[..., cuts[:-1], :]) / lengths

    def lines(self, band: Band) -> tuple[Tensor, Tensor]:
        """Gradient ratio and ΔE of every line of ``band``, each [B, lines]."""
        p = band.positions
        side = torch.minimum(p, self.width - p).clamp_max(BAND_PX)
        running = _running(self._segment_means(self.steps_rows, band.start, band.stop, SEGMENT_PX))
        across = running[..., p] - running[..., p - 1]
        inside = running[..., p - 1] - running[..., p - side] + running[..., p + side - 1] - running[..., p]
        count = 2 * (side - 1)
        eps = self.eps[..., None]
        ratio = (across + eps) / (inside / count.clamp_min(1) + eps)
        ratio = torch.where(count > 0, ratio, torch.ones_like(ratio))

        columns = _running(self._segment_means(self.lab_rows, band.start, band.stop, SEGMENT_PX))
        left = (columns[..., p] - columns[..., p - side]) / side
        right = (columns[..., p + side] - columns[..., p]) / side
        delta_e = ciede2000(left, right)  # [B, S, lines]
        return _along(ratio).float(), _along(delta_e).float()

    def drift(self, band: Band, firsts: Tensor, lasts: Tensor) -> Tensor:
        """Drift ΔE [B, windows] of the windows ``firsts``..``lasts`` of ``band``: the colour step across
        each window that the colour trend on either side does not explain. NaN where a strip falls off
        the image or out of ``band.reach``.

        The ``DRIFT_STRIP_PX`` strips just outside the window on either side are fitted with one common
        linear trend plus a jump between them (least squares, per Lab channel and ``DRIFT_SEGMENT_PX``
        segment along the band); the jump is the drift. A sky's own gradient continues through the
        window and leaves no jump; a tile-sized colour cast feathered over the overlap, a soft brightness
        step at every tile row, or a second row that starts its gradient over (the trend reverses) do.
        """
        low, high = band.reach or (0, self.width)
        a0, a1 = (firsts - 1 - DRIFT_STRIP_PX).clamp_min(max(low, 0)), firsts - 1
        b0, b1 = lasts, (lasts + DRIFT_STRIP_PX).clamp_max(min(high, self.width))
        means = self._segment_means(self.lab_rows, band.start, band.stop, DRIFT_SEGMENT_PX)  # [B, 3, S, W]
        x = torch.arange(self.width, dtype=means.dtype, device=means.device)
        sums, moments = _running(means), _running(means * x)

        def strip(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            """Mean colour, centre, Σ(x - centre)·colour and Σ(x - centre)² of columns lo..hi-1."""
            n = (hi - lo).clamp_min(1).to(means.dtype)
            centre = (lo + hi - 1).to(means.dtype) / 2
            mean = (sums[..., hi] - sums[..., lo]) / n
            return mean, centre, moments[..., hi] - moments[..., lo] - n * centre * mean, n * (n**2 - 1) / 12

        before, before_x, before_cov, before_var = strip(a0, a1)
        after, after_x, after_cov, after_var = strip(b0, b1)
        slope = (before_cov + after_cov) / (before_var + after_var).clamp_min(1e-9)
        jump = after - before - slope * (after_x - before_x)
        # a tile's colour cast shifts every segment the same way; content differences vary along the seam
        base = _along(before)
        drift = ciede2000(base, base + _along(jump)).float()
        return torch.where((a1 > a0) & (b1 > b0), drift, torch.full_like(drift, math.nan))


def _running(values: Tensor) -> Tensor:
    """Running sum over the last dim with a leading 0: ``out[..., j] - out[..., i]`` sums ``i..j-1``."""
    return F.pad(values.cumsum(-1), (1, 0))


def _views(lab: Tensor, eps: Tensor) -> dict[str, _AxisView]:
    """Both axis views of a Lab image."""
    return {"vertical": _AxisView(lab, eps), "horizontal": _AxisView(lab.transpose(-1, -2), eps)}


@dataclass
class BandScores:
    """One band: ratio and ΔE of every line [B, lines]; per window position the worst line's ratio and
    ΔE and the window's drift ΔE [B, windows] (one window for a seam band)."""

    band: Band
    ratio: Tensor
    delta_e: Tensor
    worst_ratio: Tensor
    worst_delta_e: Tensor
    drift: Tensor

    def at(self, position: int) -> tuple[Tensor, Tensor]:
        """Ratio and ΔE [B] of the line at ``position`` (clamped into the band)."""
        i = min(max(position, self.band.first), self.band.last) - self.band.first
        return self.ratio[:, i], self.delta_e[:, i]


def measure_bands(views: dict[str, _AxisView], bands: list[Band]) -> list[BandScores]:
    out = []
    for band in bands:
        view = views[band.axis]
        ratio, delta_e = view.lines(band)
        width = min(band.window or ratio.shape[-1], ratio.shape[-1])
        firsts = torch.arange(band.first, band.last - width + 2)
        worst_ratio = ratio.unfold(-1, width, 1).amax(-1)
        worst_delta_e = delta_e.unfold(-1, width, 1).amax(-1)
        drift = view.drift(band, firsts, firsts + width - 1)
        out.append(BandScores(band, ratio, delta_e, worst_ratio, worst_delta_e, drift))
    return out


@dataclass(frozen=True)
class LineJump:
    """The plan-free line detector's answer: the worst row/column boundary over its axis' median."""

    value: float
    axis: Axis
    position: int


def line_jump(image: Tensor) -> LineJump:
    """Mean |ΔL*| of every row and column boundary; the worst of them over the median of its axis (both
    plus the noise level). ~1–3 on seamless images, a peak where a line crosses the canvas."""
    lab = to_lab(_check_image(image))
    return _line_jump(lab, noise_lstar(lab[:, :1]))


def _line_jump(lab: Tensor, eps: Tensor) -> LineJump:
    lum, eps = lab[:, :1].double(), float(eps.mean())
    profiles = {  # the batch's images share their tiling: one profile per axis
        "vertical": (lum[..., 1:] - lum[..., :-1]).abs().mean((0, 1, 2)),
        "horizontal": (lum[..., 1:, :] - lum[..., :-1, :]).abs().mean((0, 1, 3)),
    }
    best = LineJump(1.0, "vertical", 0)
    for axis, profile in profiles.items():
        kept = profile[LINE_JUMP_BORDER_PX - 1 : profile.shape[0] - LINE_JUMP_BORDER_PX + 1]
        if kept.shape[0] < 3:
            continue
        ratio = (kept + eps) / (kept.median() + eps)
        if float(ratio.max()) > best.value:
            best = LineJump(float(ratio.max()), axis, int(ratio.argmax()) + LINE_JUMP_BORDER_PX)
    return best


def guide_fidelity(image: Tensor, guide: Tensor, plan: TilePlan) -> dict[str, float]:
    """How closely the image follows a low-res guide of the same scene: the image area-downscaled to the
    guide's size against the guide (PSNR, SSIM), and each tile's mean colour against the guide's over the
    same area (CIEDE2000, mean and worst tile)."""
    small = F.interpolate(image.float(), size=guide.shape[-2:], mode="area")
    guide = guide.float().expand_as(small)
    window = max(3, min(11, min(guide.shape[-2:]) // 2 * 2 - 1))
    ssim = kornia.metrics.ssim(small, guide, window).flatten(1).mean(1)
    big = F.interpolate(guide, size=image.shape[-2:], mode="bilinear", align_corners=False)
    lab, guide_lab = to_lab(image), to_lab(big.clamp(0, 1))
    c = plan.compression
    tile_means = [
        (lab[..., ys, xs].mean((-2, -1)), guide_lab[..., ys, xs].mean((-2, -1)))
        for ys, xs in (t.pixel_slices(c) for t in plan.tiles)
    ]
    delta = torch.stack([ciede2000(a, b) for a, b in tile_means])  # [T, B]
    return {
        "guide_psnr": float(psnr(small, guide).mean()),
        "guide_ssim": float(ssim.mean()),
        "guide_delta_e_mean": float(delta.mean()),
        "guide_delta_e_worst": float(delta.max()),
    }


# --- zones -----------------------------------------------------------------------------------------
def seam_zone_mask(plan: TilePlan) -> Tensor:
    """[H, W] bool: union of the overlap zones of all adjacent pairs; a zero-overlap pair contributes
    the 8 px bands either side of its shared edge (so the zone is never empty)."""
    mask = torch.zeros(plan.height_px, plan.width_px, dtype=torch.bool)
    for s in plan.seams():
        lo, hi = s.overlap_start, s.overlap_stop
        if hi <= lo:
            lo, hi = s.position - BAND_PX, s.position + BAND_PX
        if s.axis == "vertical":
            mask[s.start : s.stop, max(lo, 0) : hi] = True
        else:
            mask[max(lo, 0) : hi, s.start : s.stop] = True
    return mask


def overlap_psnr(tiles: Tensor, plan: TilePlan) -> Tensor:
    """PSNR (range 1.0) between two tiles' own pixels in their shared overlap, [seams, B]; rows of
    zero-overlap pairs are NaN (nothing shared)."""
    batch = plan.check_tile_batch(tiles)
    c = plan.compression
    grid = tiles.reshape(len(plan), batch, *tiles.shape[1:])
    rows = []
    for s in plan.seams():
        a, b = plan.tiles[s.first], plan.tiles[s.second]
        y0, y1 = max(a.y, b.y) * c, min(a.y + a.height, b.y + b.height) * c
        x0, x1 = max(a.x, b.x) * c, min(a.x + a.width, b.x + b.width) * c
        if y1 <= y0 or x1 <= x0:
            rows.append(tiles.new_full((batch,), float("nan")))
            continue
        crop_a = grid[s.first][..., y0 - a.y * c : y1 - a.y * c, x0 - a.x * c : x1 - a.x * c]
        crop_b = grid[s.second][..., y0 - b.y * c : y1 - b.y * c, x0 - b.x * c : x1 - b.x * c]
        rows.append(psnr(crop_a, crop_b))
    return torch.stack(rows) if rows else tiles.new_zeros(0, batch)


# --- views -----------------------------------------------------------------------------------------
def seam_heatmap(image: Tensor, window: int = 17) -> Tensor:
    """Per-pixel seam score [B,1,H,W]: |ΔL*| between neighbouring pixels divided by its local average
    across the same direction (a ``window`` px band, 5 px along). ~1 on texture, ≫ 1 on a seam."""
    lum = to_lab(_check_image(image))[:, :1]
    gx = F.pad((lum[..., 1:] - lum[..., :-1]).abs(), (0, 1, 0, 0), mode="replicate")
    gy = F.pad((lum[..., 1:, :] - lum[..., :-1, :]).abs(), (0, 0, 0, 1), mode="replicate")
    local_x = kornia.filters.box_blur(gx, (5, window), border_type="replicate")
    local_y = kornia.filters.box_blur(gy, (window, 5), border_type="replicate")
    soft = 0.2  # L* units: keeps flat, noise-only regions from lighting up
    return torch.maximum((gx + soft) / (local_x + soft), (gy + soft) / (local_y + soft))


def heatmap_image(heat: Tensor, vmax: float = 6.0) -> Tensor:
    """Render a seam heatmap as an RGB image: 1 (no seam) → dark, ``vmax`` and above → hot."""
    scaled = ((heat - 1) / (vmax - 1)).clamp(0, 1)
    return kornia.color.apply_colormap(scaled, kornia.color.ColorMap("hot", num_colors=256))


SEAM_BAND_COLOUR = (0.25, 0.5, 1.0)
FLOOR_BAND_COLOUR = (0.2, 0.9, 0.3)
WORST_LINE_COLOUR = (0.0, 1.0, 1.0)


def mark_measured_lines(picture: Tensor, plan: TilePlan, report: SeamReport) -> Tensor:
    """``picture`` [B, 3, H, W] with the edges of the measured bands outlined (seams blue, floor green)
    and each seam's worst line drawn in cyan: shows where the report looked and where it found each
    seam's step, and leaves the picture itself visible."""
    out = picture.clone()
    height, width = out.shape[-2:]

    def draw(axis: Axis, position: int, start: int, stop: int, rgb: tuple[float, float, float]) -> None:
        size = width if axis == "vertical" else height
        across = min(max(position, 0), size - 1)
        colour = torch.tensor(rgb, dtype=out.dtype, device=out.device)[:, None]
        if axis == "vertical":
            out[..., start:stop, across] = colour
        else:
            out[..., across, start:stop] = colour

    for bands, rgb in ((floor_bands(plan), FLOOR_BAND_COLOUR), (seam_bands(plan), SEAM_BAND_COLOUR)):
        for b in bands:
            for edge in (b.first - 1, b.last):
                draw(b.axis, edge, b.start, b.stop, rgb)
    for entry, seam in zip(report.seams, plan.seams(), strict=True):
        draw(seam.axis, entry["worst_line"], seam.start, seam.stop, WORST_LINE_COLOUR)
    return out


def solar_view(image: Tensor, cycles: float = 3.0) -> Tensor:
    """Solar curve: L* mapped through 0.5 - 0.5·cos(2π·cycles·L*/100), shown as grey.

    The curve inverts tones at every mid-tone crest, so a 1 L* step — invisible in the photo —
    becomes a several-percent jump and faint seams and gradient breaks show as contour kinks.
    """
    lum = to_lab(_check_image(image))[:, :1]
    return (0.5 - 0.5 * torch.cos(2 * math.pi * cycles * lum / 100)).expand(-1, 3, -1, -1).contiguous()


# --- report ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AxisJudgement:
    """One measure on the seams of one axis, as the verdict sees it.

    ``seams`` is the median over those seams (× batch), ``floor`` the median over the floor windows
    shaped like them. A tiling artefact is systematic: the lock border, a gradient that starts over, a
    cast feathered over each overlap sit at every seam of their axis, while content (a sun straddling a
    band) sits at a few; the median counts the first and not the second. ``allowance`` (ΔE measures) is
    what chance gives: ``SAMPLING_Z`` standard errors of the difference of the two medians, from the
    robust spreads of the seams and of the floor (each tile's windows counted as one). ``excess``:
    ``seams / floor`` for the gradient ratio, ``seams - floor - allowance`` for ΔE. ``judged`` is False
    where the plan leaves no floor to compare with.
    """

    seams: float | None
    floor: float | None
    allowance: float
    excess: float
    judged: bool


@dataclass
class SeamReport:
    """All seam metrics of one stitched image (batch-pooled: mean over seams × batch, worst = max).

    Headline: ``gradient_ratio_*`` and ``delta_e_*`` are each seam's worst line of its band; ``floor_*``
    the same measure through the tiles' middles (no seam there); ``meets_targets`` judges the excess.
    """

    gradient_ratio_mean: float
    gradient_ratio_worst: float
    delta_e_mean: float
    delta_e_worst: float
    floor_gradient_ratio_mean: float
    floor_gradient_ratio_worst: float
    floor_delta_e_mean: float
    floor_delta_e_worst: float
    drift_delta_e_mean: float
    drift_delta_e_worst: float
    floor_drift_delta_e_mean: float
    floor_drift_delta_e_worst: float
    seam_count: int
    centre_gradient_ratio_mean: float
    centre_delta_e_mean: float
    line_jump: float
    line_jump_axis: str
    line_jump_position: int
    noise_lstar: float
    border_gradient_ratio_mean: float | None = None
    border_gradient_ratio_worst: float | None = None
    border_delta_e_mean: float | None = None
    overlap_psnr_mean: float | None = None
    overlap_psnr_worst: float | None = None
    seam_zone_psnr: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    guide_psnr: float | None = None
    guide_ssim: float | None = None
    guide_delta_e_mean: float | None = None
    guide_delta_e_worst: float | None = None
    axes: dict[str, dict[str, AxisJudgement]] = field(default_factory=dict)
    """Per seam axis and judged measure: what the verdict compares (see :class:`AxisJudgement`)."""
    seams: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["excess"] = self.excess()
        data["meets_targets"] = self.meets_targets()
        data["verdict"] = self.verdict()
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def excess(self) -> dict[str, float]:
        """How far the seams stand out from the image's floor, per measure on the worse of the two seam
        axes (:class:`AxisJudgement`): the gradient ratio as a factor over the floor's, ΔE and drift ΔE in
        ΔE2000 units above it beyond sampling noise. No seam: 1, 0, 0."""
        neutral = {"gradient_ratio": 1.0, "delta_e": 0.0, "drift_delta_e": 0.0}
        return {
            name: max([axis[name].excess for axis in self.axes.values() if axis[name].judged] or [value])
            for name, value in neutral.items()
        }

    def target(self, name: str) -> float:
        """The target of one measure of :meth:`excess`, on the axis that gives that excess (ΔE targets
        follow the axis' floor, :func:`delta_e_target`)."""
        if name == "gradient_ratio":
            return TARGET_RATIO
        judged = [axis[name] for axis in self.axes.values() if axis[name].judged]
        return delta_e_target(max(judged, key=lambda j: j.excess).floor) if judged else TARGET_DELTA_E

    def failures(self) -> list[str]:
        """One sentence per axis and measure whose excess over the floor misses its target."""
        out = []
        for axis, measures in self.axes.items():
            lines = "vertical seams" if axis == "vertical" else "horizontal seams"
            for name, j in measures.items():
                target = TARGET_RATIO if name == "gradient_ratio" else delta_e_target(j.floor)
                if not j.judged or j.excess < target:
                    continue
                if name == "gradient_ratio":
                    out.append(
                        f"lines stand out at the {lines}: gradient ratio {j.seams:.2f} against the image's "
                        f"own {j.floor:.2f} (×{j.excess:.2f}, target < {TARGET_RATIO})"
                    )
                else:
                    what = "a colour step" if name == "delta_e" else "colour drift between tiles"
                    out.append(
                        f"{what} at the {lines}: ΔE {j.seams:.2f} against {j.floor:.2f} inside the tiles "
                        f"({j.excess:+.2f}, target < {target:.2f})"
                    )
        return out

    def meets_targets(self) -> bool:
        """Seams no more visible than the image's own content: every excess over the floor below target
        (gradient ratio < 1.2× the floor's, ΔE and drift ΔE < 2 above it). PSNRs are not judged."""
        return not self.failures()

    def verdict(self) -> str:
        failures = self.failures()
        if not failures:
            return "seamless: no seam stands out from the image's own content"
        return "seams visible: " + "; ".join(failures)

    def to_markdown(self) -> str:
        e = self.excess()
        rows = [
            (
                "gradient ratio, worst line per seam (mean / worst)",
                f"{self.gradient_ratio_mean:.3f} / {self.gradient_ratio_worst:.3f}",
                f"{self.floor_gradient_ratio_mean:.3f} / {self.floor_gradient_ratio_worst:.3f}",
                f"×{e['gradient_ratio']:.2f} (< {TARGET_RATIO})",
            ),
            (
                "ΔE2000, worst line per seam (mean / worst)",
                f"{self.delta_e_mean:.2f} / {self.delta_e_worst:.2f}",
                f"{self.floor_delta_e_mean:.2f} / {self.floor_delta_e_worst:.2f}",
                f"{e['delta_e']:+.2f} (< {self.target('delta_e'):.2f})",
            ),
            (
                "drift ΔE2000 across the overlap (mean / worst)",
                f"{self.drift_delta_e_mean:.2f} / {self.drift_delta_e_worst:.2f}",
                f"{self.floor_drift_delta_e_mean:.2f} / {self.floor_drift_delta_e_worst:.2f}",
                f"{e['drift_delta_e']:+.2f} (< {self.target('drift_delta_e'):.2f})",
            ),
            (
                "line jump, plan-free (worst row/column over median)",
                f"{self.line_jump:.2f} ({self.line_jump_axis} line at {self.line_jump_position} px)",
                "",
                "",
            ),
            (
                "centre lines: gradient ratio / ΔE (mean)",
                f"{self.centre_gradient_ratio_mean:.3f} / {self.centre_delta_e_mean:.2f}",
                "",
                "",
            ),
        ]
        if self.border_gradient_ratio_mean is not None:
            rows.append(
                (
                    "overlap-border lines: gradient ratio (mean / worst) / ΔE",
                    f"{self.border_gradient_ratio_mean:.3f} / {self.border_gradient_ratio_worst:.3f} / "
                    f"{self.border_delta_e_mean:.2f}",
                    "",
                    "",
                )
            )
        if self.overlap_psnr_mean is not None:
            rows.append(
                (
                    "overlap PSNR between tiles (mean / worst)",
                    f"{self.overlap_psnr_mean:.2f} / {self.overlap_psnr_worst:.2f} dB",
                    "",
                    "not judged",
                )
            )
        if self.seam_zone_psnr is not None:
            ssim = "not measured" if self.ssim is None else f"{self.ssim:.4f}"
            rows.append(("seam-zone PSNR vs reference", f"{self.seam_zone_psnr:.2f} dB", "", "not judged"))
            rows.append(("full-image PSNR / SSIM vs reference", f"{self.psnr:.2f} dB / {ssim}", "", ""))
        if self.guide_psnr is not None:
            rows.append(
                (
                    "guide: PSNR / SSIM at its size, tile colour ΔE (mean / worst)",
                    f"{self.guide_psnr:.2f} dB / {self.guide_ssim:.3f}, {self.guide_delta_e_mean:.2f} / "
                    f"{self.guide_delta_e_worst:.2f}",
                    "",
                    "",
                )
            )
        lines = [
            self.verdict(),
            "",
            "| metric | seams | floor (no seam) | excess (judged: the worse axis, below) |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        if self.axes:
            lines += [
                "",
                "Judged per axis: medians over that axis' seams and over its floor windows.",
                "",
                "| seams | measure | seams (median) | floor (median) | chance allowance | excess |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for axis, measures in self.axes.items():
                for name, j in measures.items():
                    if not j.judged:
                        lines.append(f"| {axis} | {name} | – | – | – | not judged (no floor as wide) |")
                        continue
                    excess = f"×{j.excess:.2f}" if name == "gradient_ratio" else f"{j.excess:+.2f}"
                    lines.append(
                        f"| {axis} | {name} | {j.seams:.2f} | {j.floor:.2f} | {j.allowance:.2f} | {excess} |"
                    )
        return "\n".join(lines)


def _finite_or_none(values: Tensor, reduce: str) -> float | None:
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return None
    return float(values.mean() if reduce == "mean" else values.min() if reduce == "min" else values.max())


WINDOW_MEASURES = ("worst_ratio", "worst_delta_e", "drift")


def delta_e_target(floor: float | None) -> float:
    """Largest ΔE excess over the floor a seam may have: ``TARGET_DELTA_E`` where the image's own bands
    differ by that much (content masks a step), the floor's own level where it is quieter (at least
    ``QUIET_DELTA_E``). A night sky whose rows step by 1.3 ΔE on a 0.4 floor shows a staircase a person
    sees at once; big suns that lift the seams to 2.9 on a 1.4 floor do not read as a line."""
    return min(TARGET_DELTA_E, max(QUIET_DELTA_E, floor or 0.0))


@dataclass(frozen=True)
class _Floor:
    mean: float
    worst: float


def _floor(scores: list[BandScores], name: str, seams: Tensor, seamless: float | None) -> _Floor:
    """Mean and worst of one measure over floor windows. A plan whose tiles neighbours cover whole leaves
    no seam-free line: then the floor is what a flat image scores (``seamless``: the ratio's 1), or, for
    the colour measures whose no-seam level depends on the content, the seams' own (not judged)."""
    pooled, _ = _tile_weighted(scores, name)
    if pooled.numel():
        return _Floor(float(pooled.mean()), float(pooled.max()))
    if seamless is None:
        return _Floor(float(seams.mean()), float(seams.max()))
    return _Floor(seamless, seamless)


class _FloorSampler:
    """Floor windows shaped like one seam: on its own axis (content is seldom alike across the two: a sky
    changes colour top to bottom) and as wide as its band (a colour change across a band grows with its
    width: fit="shift" gives the last tiles wider overlaps). Measured once per (axis, width). ``exact`` is
    False where the plan has no seam-free part that shape fits (then both axes' regions, windows cut to
    fit): good enough for the line measures, not for drift, which is then not judged for that seam."""

    def __init__(self, views: dict[str, _AxisView], plan: TilePlan):
        self.views, self.regions, self.measured = views, floor_bands(plan), {}

    def __call__(self, band: Band) -> tuple[list[BandScores], bool]:
        width = band.last - band.first + 1
        key = (band.axis, width)
        if key not in self.measured:
            own = [b for b in self.regions if b.axis == band.axis]
            exact = any(b.last - b.first + 1 >= width for b in own)
            windows = [replace(b, window=width) for b in (own or self.regions)]
            self.measured[key] = (measure_bands(self.views, windows), exact)
        return self.measured[key]


def _seam_floor(seams: Tensor, floors: list[_Floor]) -> tuple[float, float]:
    """The floor the seams [S, B] are reported against, each seam by its axis' floor: mean over seams and
    the floor's worst on the worst seam's axis."""
    worst_seam = int(seams.amax(-1).argmax())
    return sum(f.mean for f in floors) / len(floors), floors[worst_seam].worst


JUDGED = {"gradient_ratio": "worst_ratio", "delta_e": "worst_delta_e", "drift_delta_e": "drift"}
"""Verdict measure -> the :class:`BandScores` window measure behind it."""


def _judge(
    seam_scores: list[BandScores], samples: list[tuple[list[BandScores], bool]]
) -> dict[str, dict[str, AxisJudgement]]:
    """:class:`AxisJudgement` of every judged measure on each axis that has seams."""
    axes = {}
    for axis in ("vertical", "horizontal"):
        mine = [(s, sample) for s, sample in zip(seam_scores, samples, strict=True) if s.band.axis == axis]
        if mine:
            axes[axis] = {name: _judge_measure(mine, name) for name in JUDGED}
    return axes


def _judge_measure(mine: list[tuple[BandScores, tuple[list[BandScores], bool]]], name: str) -> AxisJudgement:
    key = JUDGED[name]
    # drift needs floor windows as wide as the seam's band (``_FloorSampler``); other seams sit it out
    kept = [(s, floor) for s, (floor, exact) in mine if exact or key != "drift"]
    seams = torch.cat([getattr(s, key)[:, 0] for s, _ in kept]) if kept else torch.zeros(0)
    seams = seams[torch.isfinite(seams)].double()
    shared = {id(floor): floor for _, floor in kept}  # seams of one width share their floor windows
    floor, weights = _tile_weighted([band for f in shared.values() for band in f], key)
    floor = floor.double()
    if seams.numel() == 0 or (floor.numel() == 0 and name != "gradient_ratio"):
        return AxisJudgement(None, None, 0.0, 0.0, judged=False)
    seam_median = float(seams.quantile(0.5))
    if name == "gradient_ratio":  # no floor: a flat image's ratio, 1
        floor_median = _weighted_median(floor, weights) if floor.numel() else 1.0
        return AxisJudgement(seam_median, floor_median, 0.0, seam_median / floor_median, judged=True)
    floor_median = _weighted_median(floor, weights)
    # the difference of two medians: each one's standard error from its robust spread (1.4826 MAD) and
    # its count (seams; floor bands, one per tile), √(π/2) σ / √n for a median
    seam_spread = 1.4826 * float((seams - seam_median).abs().quantile(0.5))
    floor_spread = 1.4826 * _weighted_median((floor - floor_median).abs(), weights)
    bands = float(weights.sum())
    error = math.sqrt(math.pi / 2 * (seam_spread**2 / seams.numel() + floor_spread**2 / bands))
    allowance = SAMPLING_Z * error
    return AxisJudgement(seam_median, floor_median, allowance, seam_median - floor_median - allowance, True)


def _tile_weighted(bands: list[BandScores], key: str) -> tuple[Tensor, Tensor]:
    """Finite values of one measure over every floor window, and weights that give each floor band (a
    tile's seam-free part) and image the same say: a tile at the canvas edge has a wider seam-free part
    and so more windows, and its content (often background) would otherwise set the floor."""
    values, weights = [], []
    for band in bands:
        v = getattr(band, key)  # [B, windows]
        finite = torch.isfinite(v)
        counts = finite.sum(-1, keepdim=True).clamp_min(1)
        values.append(v[finite])
        weights.append((1.0 / counts).expand_as(v)[finite])
    if not values:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(values), torch.cat(weights)


def _weighted_median(values: Tensor, weights: Tensor) -> float:
    """The value where the sorted weights reach half their total."""
    order = values.argsort()
    cumulative = weights[order].cumsum(0)
    return float(values[order][torch.searchsorted(cumulative, cumulative[-1] / 2).clamp_max(len(values) - 1)])


def seam_report(
    image: Tensor,
    plan: TilePlan,
    *,
    tiles: Tensor | None = None,
    reference: Tensor | None = None,
    guide: Tensor | None = None,
    ssim: bool = True,
) -> SeamReport:
    """Measure a stitched image against its plan; ``tiles`` (the unblended tile batch) adds overlap
    PSNR, ``reference`` (same size as the image) adds seam-zone and full-image PSNR and, unless
    ``ssim=False`` (it is the slowest part on large images), SSIM; ``guide`` (a low-res image of the
    scene, any size) adds layout and colour fidelity to it.

    Only the plan's area (top-left ``plan.height_px`` × ``plan.width_px``) is measured.
    """
    if reference is not None and (
        not isinstance(reference, Tensor)
        or reference.shape[-2:] != image.shape[-2:]
        or reference.shape[0] not in (1, image.shape[0])
    ):
        raise MetricsError(
            f"reference is {tuple(getattr(reference, 'shape', ()))} but the image is {tuple(image.shape)}; "
            "give a reference of the same size (batch 1 or the same batch)."
        )
    image = _check_image(image, plan)
    lab = to_lab(image)
    eps = noise_lstar(lab[:, :1])
    views = _views(lab, eps)
    seams = plan.seams()
    seam_scores = measure_bands(views, seam_bands(plan))
    sample_floor = _FloorSampler(views, plan)
    if seam_scores:  # [seams, B]
        ratio, delta, drift = (
            torch.stack([getattr(s, k)[:, 0] for s in seam_scores]) for k in WINDOW_MEASURES
        )
        drift = drift.nan_to_num(0.0)
        samples = [sample_floor(s.band) for s in seam_scores]
        floors = {
            key: _seam_floor(
                values,
                [
                    _floor(scores if exact or key != "drift" else [], key, values[i], seamless)
                    for i, (scores, exact) in enumerate(samples)
                ],
            )
            for key, values, seamless in zip(
                WINDOW_MEASURES, (ratio, delta, drift), (1.0, None, None), strict=True
            )
        }
        axes = _judge(seam_scores, samples)
    else:  # a single tile: nothing to measure, report the invisible-seam values
        ratio, delta, drift = torch.ones(1, 1), torch.zeros(1, 1), torch.zeros(1, 1)
        floors = {key: (value, value) for key, value in zip(WINDOW_MEASURES, (1.0, 0.0, 0.0), strict=True)}
        axes = {}
    centre = [s.at(seam.position) for s, seam in zip(seam_scores, seams, strict=True)] or [
        (ratio[0], delta[0])
    ]
    jump = _line_jump(lab, eps)
    report = SeamReport(
        gradient_ratio_mean=float(ratio.mean()),
        gradient_ratio_worst=float(ratio.max()),
        delta_e_mean=float(delta.mean()),
        delta_e_worst=float(delta.max()),
        floor_gradient_ratio_mean=floors["worst_ratio"][0],
        floor_gradient_ratio_worst=floors["worst_ratio"][1],
        floor_delta_e_mean=floors["worst_delta_e"][0],
        floor_delta_e_worst=floors["worst_delta_e"][1],
        drift_delta_e_mean=float(drift.mean()),
        drift_delta_e_worst=float(drift.max()),
        floor_drift_delta_e_mean=floors["drift"][0],
        floor_drift_delta_e_worst=floors["drift"][1],
        seam_count=len(seams) * image.shape[0],
        centre_gradient_ratio_mean=float(torch.stack([r for r, _ in centre]).mean()),
        centre_delta_e_mean=float(torch.stack([d for _, d in centre]).mean()),
        line_jump=jump.value,
        line_jump_axis=jump.axis,
        line_jump_position=jump.position,
        noise_lstar=float(eps.mean()),
        axes=axes,
    )
    overlapping = [
        (s, seam)
        for s, seam in zip(seam_scores, seams, strict=True)
        if seam.overlap_stop > seam.overlap_start
    ]
    if overlapping:
        borders = [s.at(p) for s, seam in overlapping for p in (seam.overlap_start, seam.overlap_stop)]
        border_ratio = torch.stack([r for r, _ in borders])
        report.border_gradient_ratio_mean = float(border_ratio.mean())
        report.border_gradient_ratio_worst = float(border_ratio.max())
        report.border_delta_e_mean = float(torch.stack([d for _, d in borders]).mean())
    seam_psnr = overlap_psnr(tiles, plan) if tiles is not None else None
    if seam_psnr is not None:
        report.overlap_psnr_mean = _finite_or_none(seam_psnr, "mean")
        report.overlap_psnr_worst = _finite_or_none(seam_psnr, "min")
    if reference is not None:
        reference = _check_image(reference, plan, name="reference").expand_as(image)
        zone = seam_zone_mask(plan).to(image.device)
        report.seam_zone_psnr = float(psnr(image, reference, zone).mean())
        report.psnr = float(psnr(image, reference).mean())
        if ssim:
            report.ssim = float(
                kornia.metrics.ssim(image.float(), reference.float(), 11).flatten(1).mean(1).mean()
            )
    if guide is not None:
        guide = _check_image(guide, name="guide")
        if guide.shape[0] not in (1, image.shape[0]):
            raise MetricsError(
                f"guide has a batch of {guide.shape[0]} but the image {image.shape[0]}; "
                "give one guide or one per image."
            )
        for key, value in guide_fidelity(image, guide.to(image.device), plan).items():
            setattr(report, key, value)
    for i, (scores, seam) in enumerate(zip(seam_scores, seams, strict=True)):
        worst_line = int(scores.ratio.mean(0).argmax()) + scores.band.first
        entry = {
            "first": seam.first,
            "second": seam.second,
            "axis": seam.axis,
            "position": seam.position,
            "band": [scores.band.first, scores.band.last],
            "worst_line": worst_line,
            "gradient_ratio": float(ratio[i].mean()),
            "delta_e": float(delta[i].mean()),
            "drift_delta_e": float(drift[i].mean()),
        }
        if seam_psnr is not None and torch.isfinite(seam_psnr[i]).all():
            entry["overlap_psnr"] = float(seam_psnr[i].mean())
        report.seams.append(entry)
    return report


# --- input checks ----------------------------------------------------------------------------------
def _check_image(image: Tensor, plan: TilePlan | None = None, name: str = "image") -> Tensor:
    if not isinstance(image, Tensor) or image.ndim != 4 or image.shape[1] != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise MetricsError(f"{name} must be a [B, 3, H, W] RGB tensor, got {shape}.")
    if torch.isnan(image).any():
        raise MetricsError(f"{name} contains NaN pixels; fix the upstream node (decode/blend) first.")
    if plan is None:
        return image
    if image.shape[-2] < plan.height_px or image.shape[-1] < plan.width_px:
        raise MetricsError(
            f"{name} is {image.shape[-1]}×{image.shape[-2]} px but the tile plan covers "
            f"{plan.width_px}×{plan.height_px} px; use the plan made for this image."
        )
    return image[..., : plan.height_px, : plan.width_px]
