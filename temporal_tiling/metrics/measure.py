"""Scoring bands: gradient ratio and ΔE of every line, drift ΔE of every window, from running sums."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .bands import BAND_PX, Band
from .colour import ciede2000

SEGMENT_PX = 32
DRIFT_STRIP_PX = 16
DRIFT_SEGMENT_PX = 64
ALONG_QUANTILE = 0.5
NOISE_FLOOR_LSTAR = 0.1
"""Least noise level (L*) added to the gradient ratio, for synthetic noise-free images."""


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


class AxisView:
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

    def band_contrast(self, band: Band, scale: int) -> tuple[Tensor, Tensor, Tensor]:
        """Centre-surround Lab contrast of every line of ``band`` at ``scale``: the mean colour of the
        ``scale`` px box centred on the line less the mean of the two boxes ``scale`` px before and after
        it, per ``DRIFT_SEGMENT_PX`` segment along, the median over the segments (signed, so content
        that varies along the line cancels and a band that runs the whole line stays). Returns the
        contrast and the centre colour [B, 3, lines] and which lines [lines] have both flanks inside
        ``band.reach`` (the image without one).

        A linear gradient reads 0 (its two flanks average to the centre); a band of depth d as wide as
        the box reads d; a soft step of height s reads about ±s/3 at its foot and its top."""
        half = max(scale // 2, 1)
        low, high = band.reach or (0, self.width)
        low, high = max(low, 0), min(high, self.width)
        means = self._segment_means(self.lab_rows, band.start, band.stop, DRIFT_SEGMENT_PX)  # [B, 3, S, W]
        sums = _running(means)
        p = band.positions

        def box(centres: Tensor) -> Tensor:
            lo, hi = (centres - half).clamp(0, self.width), (centres + half).clamp(0, self.width)
            return (sums[..., hi] - sums[..., lo]) / (hi - lo).clamp_min(1).to(sums)

        centre = box(p)
        contrast = centre - (box(p - scale) + box(p + scale)) / 2
        valid = (p - scale - half >= low) & (p + scale + half <= high)
        return _along(contrast).float(), _along(centre).float(), valid

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


def axis_views(lab: Tensor, eps: Tensor) -> dict[str, AxisView]:
    """Both axis views of a Lab image."""
    return {"vertical": AxisView(lab, eps), "horizontal": AxisView(lab.transpose(-1, -2), eps)}


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


def measure_bands(views: dict[str, AxisView], bands: list[Band]) -> list[BandScores]:
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
