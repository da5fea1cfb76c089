"""Scoring bands: gradient ratio and ΔE of every line, drift ΔE of every window, from running sums."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .bands import BAND_PX, Band
from .colour import ciede2000
from .regions import Pixels

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


SELECT_BINS = 1 << 16
"""Histogram bins of one pass of :func:`_kth_value`."""
SELECT_GATHER = 1 << 22
"""Candidates :func:`_kth_value` sorts once a pass has narrowed them down to this many."""


def image_noise(pixels: Pixels) -> Tensor:
    """:func:`noise_lstar` of the whole image, [B, 1], read in strips of rows: the same two medians (of the
    signed neighbour differences, then of their distances to it), found exactly without holding the
    differences together (:func:`_kth_value`). An image of one chunk is measured whole."""
    if pixels.whole:
        return noise_lstar(pixels.lab(0, pixels.height, 0, pixels.width)[:, :1])
    height, width = pixels.height, pixels.width
    count = height * (width - 1) + (height - 1) * width
    out = []
    for b in range(pixels.batch):

        def differences(shift: Tensor | None = None, b: int = b) -> Iterator[Tensor]:
            """Each strip's neighbour differences (less ``shift``, as distances, when given), as
            :func:`noise_lstar` takes them: along every row and across every row boundary once."""
            for top, stop, bottom in pixels.row_strips(extra=1):
                lum = pixels.lab(top, bottom, 0, width)[b, 0]
                for diffs in (lum[: stop - top, 1:] - lum[: stop - top, :-1], lum[1:] - lum[:-1]):
                    yield diffs.flatten() if shift is None else (diffs.flatten() - shift).abs()

        median = torch.tensor(_kth_value(differences, (count - 1) // 2), dtype=torch.float32)
        deviation = _kth_value(lambda m=median: differences(m), (count - 1) // 2)
        sigma = 1.4826 * torch.tensor([[deviation]], dtype=torch.float32)
        out.append((sigma * math.sqrt(2 / math.pi)).clamp_min(NOISE_FLOOR_LSTAR))
    return torch.cat(out)


def _kth_value(stream: Callable[[], Iterator[Tensor]], k: int) -> float:
    """The ``k``-th smallest (0-based) of all values ``stream()`` yields, exactly, as ``torch.median``
    picks it, in passes that each hold one chunk and a histogram: a pass counts the candidates into
    ``SELECT_BINS`` bins and keeps the bin that holds the ``k``-th (its least and greatest value bound the
    next candidates: bins are monotone in the value); once at most ``SELECT_GATHER`` candidates remain,
    or all are equal, they are gathered and sorted. Values of L* differences take two or three passes."""
    low, high, candidates = -256.0, 256.0, math.inf  # L* differences and their distances lie within
    while True:
        if low == high:
            return low
        if candidates <= SELECT_GATHER:
            kept = torch.cat([v[(v >= low) & (v <= high)] for v in stream()])
            return float(kept.double().kthvalue(k + 1).values)
        counts = torch.zeros(SELECT_BINS, dtype=torch.int64)
        least = torch.full((SELECT_BINS,), math.inf, dtype=torch.float64)
        most = torch.full((SELECT_BINS,), -math.inf, dtype=torch.float64)
        scale = SELECT_BINS / (high - low)
        for values in stream():
            values = values.double()
            values = values[(values >= low) & (values <= high)]
            bins = ((values - low) * scale).floor_().clamp_(0, SELECT_BINS - 1).long()
            counts += torch.bincount(bins, minlength=SELECT_BINS)
            least.scatter_reduce_(0, bins, values, "amin")
            most.scatter_reduce_(0, bins, values, "amax")
        below = counts.cumsum(0)
        chosen = int(torch.searchsorted(below, k, right=True))
        k -= int(below[chosen - 1]) if chosen else 0
        low, high, candidates = float(least[chosen]), float(most[chosen]), int(counts[chosen])


def _along(per_segment: Tensor) -> Tensor:
    """A line's score from its segments' [..., S, lines]: their ``ALONG_QUANTILE`` quantile, so a step that
    runs the whole line (a seam) counts and content crossing a part of it does not."""
    return torch.quantile(per_segment, ALONG_QUANTILE, dim=-2)


class AxisView:
    """One image seen with its lines vertical (horizontal lines: the image transposed). Each band reads
    only its own lines and their sides (:class:`BandCrop`), so a band costs a pass over those pixels and
    no measure holds the whole image's Lab or running sums."""

    def __init__(self, pixels: Pixels, eps: Tensor, transposed: bool):
        self.pixels, self.transposed = pixels, transposed
        self.eps = eps.double()
        self.width = pixels.height if transposed else pixels.width  # lines 0..width across

    def crop(self, band: Band, margin: int) -> BandCrop:
        """``band``'s lines with ``margin`` px more on either side (clamped to the image)."""
        return BandCrop(self, band, max(band.first - margin, 0), min(band.last + margin, self.width))

    def band_contrast(self, band: Band, scale: int) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`BandCrop.band_contrast` of ``band`` at ``scale``."""
        return self.crop(band, scale + max(scale // 2, 1)).band_contrast(scale)


LINES_MARGIN_PX = max(BAND_PX, DRIFT_STRIP_PX + 1)
"""Pixels beyond a band's lines that its line scores (``BAND_PX`` sides) and drift strips read."""


class BandCrop:
    """The pixels one band's measures read: its lines ``lo``..``hi`` across (image coordinates; the band's
    lines and their sides) × ``band.start``..``band.stop`` along, as per-segment means along each line
    (Lab and |ΔL*| to the next line), read in chunks (``Pixels.chunk``) of whole segments: a band of any
    length. Lines and positions stay in image coordinates; only indexing subtracts ``lo``."""

    def __init__(self, view: AxisView, band: Band, lo: int, hi: int):
        self.band, self.lo, self.width, self.eps = band, lo, view.width, view.eps
        self.x = torch.arange(lo, hi, dtype=torch.float64)
        pixels, start, stop = view.pixels, band.start, band.stop
        per_row = max(1, pixels.batch * (hi - lo))
        rows = (
            max(1, pixels.chunk // per_row // DRIFT_SEGMENT_PX) * DRIFT_SEGMENT_PX
        )  # whole segments of both
        lab_means: dict[int, list[Tensor]] = {SEGMENT_PX: [], DRIFT_SEGMENT_PX: []}
        step_means: list[Tensor] = []
        for top in range(start, stop, rows):
            lab = pixels.lab_along(view.transposed, (top, min(top + rows, stop)), (lo, hi)).double()
            steps = (lab[:, 0, :, 1:] - lab[:, 0, :, :-1]).abs()  # [B, h, w-1]: boundary j is line lo + j + 1
            lab_rows, steps_rows = F.pad(lab.cumsum(-2), (0, 0, 1, 0)), F.pad(steps.cumsum(-2), (0, 0, 1, 0))
            for segment, out in lab_means.items():
                out.append(_segment_means(lab_rows, segment))
            step_means.append(_segment_means(steps_rows, SEGMENT_PX))
        self.lab = {segment: torch.cat(parts, -2) for segment, parts in lab_means.items()}  # [B, 3, S, w]
        self.steps = torch.cat(step_means, -2)  # [B, S, w-1]

    def lines(self) -> tuple[Tensor, Tensor]:
        """Gradient ratio and ΔE of every line of the band, each [B, lines]."""
        p, o = self.band.positions, self.lo
        side = torch.minimum(p, self.width - p).clamp_max(BAND_PX)
        running = _running(self.steps)
        across = running[..., p - o] - running[..., p - 1 - o]
        inside = (
            running[..., p - 1 - o]
            - running[..., p - side - o]
            + running[..., p + side - 1 - o]
            - running[..., p - o]
        )
        count = 2 * (side - 1)
        eps = self.eps[..., None]
        ratio = (across + eps) / (inside / count.clamp_min(1) + eps)
        ratio = torch.where(count > 0, ratio, torch.ones_like(ratio))

        columns = _running(self.lab[SEGMENT_PX])
        left = (columns[..., p - o] - columns[..., p - side - o]) / side
        right = (columns[..., p + side - o] - columns[..., p - o]) / side
        delta_e = ciede2000(left, right)  # [B, S, lines]
        return _along(ratio).float(), _along(delta_e).float()

    def band_contrast(self, scale: int) -> tuple[Tensor, Tensor, Tensor]:
        """Centre-surround Lab contrast of every line of the band at ``scale``: the mean colour of the
        ``scale`` px box centred on the line less the mean of the two boxes ``scale`` px before and after
        it, per ``DRIFT_SEGMENT_PX`` segment along, the median over the segments (signed, so content
        that varies along the line cancels and a band that runs the whole line stays). Returns the
        contrast and the centre colour [B, 3, lines] and which lines [lines] have both flanks inside
        ``band.reach`` (the image without one). The crop must reach ``scale + scale // 2`` px beyond
        the band (:meth:`AxisView.band_contrast`).

        A linear gradient reads 0 (its two flanks average to the centre); a band of depth d as wide as
        the box reads d; a soft step of height s reads about ±s/3 at its foot and its top."""
        half = max(scale // 2, 1)
        low, high = self.band.reach or (0, self.width)
        low, high = max(low, 0), min(high, self.width)
        sums = _running(self.lab[DRIFT_SEGMENT_PX])
        p = self.band.positions

        def box(centres: Tensor) -> Tensor:
            lo, hi = (centres - half).clamp(0, self.width), (centres + half).clamp(0, self.width)
            return (sums[..., hi - self.lo] - sums[..., lo - self.lo]) / (hi - lo).clamp_min(1).to(sums)

        centre = box(p)
        contrast = centre - (box(p - scale) + box(p + scale)) / 2
        valid = (p - scale - half >= low) & (p + scale + half <= high)
        return _along(contrast).float(), _along(centre).float(), valid

    def drift(self, firsts: Tensor, lasts: Tensor) -> Tensor:
        """Drift ΔE [B, windows] of the windows ``firsts``..``lasts`` of the band: the colour step across
        each window that the colour trend on either side does not explain. NaN where a strip falls off
        the image or out of ``band.reach``.

        The ``DRIFT_STRIP_PX`` strips just outside the window on either side are fitted with one common
        linear trend plus a jump between them (least squares, per Lab channel and ``DRIFT_SEGMENT_PX``
        segment along the band); the jump is the drift. A sky's own gradient continues through the
        window and leaves no jump; a tile-sized colour cast feathered over the overlap, a soft brightness
        step at every tile row, or a second row that starts its gradient over (the trend reverses) do.
        """
        low, high = self.band.reach or (0, self.width)
        a0, a1 = (firsts - 1 - DRIFT_STRIP_PX).clamp_min(max(low, 0)), firsts - 1
        b0, b1 = lasts, (lasts + DRIFT_STRIP_PX).clamp_max(min(high, self.width))
        means = self.lab[DRIFT_SEGMENT_PX]  # [B, 3, S, w]
        sums, moments = _running(means), _running(means * self.x)
        o = self.lo

        def strip(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            """Mean colour, centre, Σ(x - centre)·colour and Σ(x - centre)² of columns lo..hi-1."""
            n = (hi - lo).clamp_min(1).to(means.dtype)
            centre = (lo + hi - 1).to(means.dtype) / 2
            mean = (sums[..., hi - o] - sums[..., lo - o]) / n
            cov = moments[..., hi - o] - moments[..., lo - o] - n * centre * mean
            return mean, centre, cov, n * (n**2 - 1) / 12

        before, before_x, before_cov, before_var = strip(a0, a1)
        after, after_x, after_cov, after_var = strip(b0, b1)
        slope = (before_cov + after_cov) / (before_var + after_var).clamp_min(1e-9)
        jump = after - before - slope * (after_x - before_x)
        # a tile's colour cast shifts every segment the same way; content differences vary along the seam
        base = _along(before)
        drift = ciede2000(base, base + _along(jump)).float()
        return torch.where((a1 > a0) & (b1 > b0), drift, torch.full_like(drift, math.nan))


def _segment_means(rows: Tensor, segment: int) -> Tensor:
    """Mean of each ``segment`` px piece (the last one shorter) of a row-running-summed [..., h+1, w]
    tensor, per column: [..., S, w]."""
    stop = rows.shape[-2] - 1
    cuts = torch.arange(0, stop + segment - 1, segment).clamp_max(stop).unique()
    lengths = (cuts[1:] - cuts[:-1]).to(rows)[:, None]
    return (rows[..., cuts[1:], :] - rows[..., cuts[:-1], :]) / lengths


def _running(values: Tensor) -> Tensor:
    """Running sum over the last dim with a leading 0: ``out[..., j] - out[..., i]`` sums ``i..j-1``."""
    return F.pad(values.cumsum(-1), (1, 0))


def axis_views(pixels: Pixels, eps: Tensor) -> dict[str, AxisView]:
    """Both axis views of an image."""
    return {"vertical": AxisView(pixels, eps, False), "horizontal": AxisView(pixels, eps, True)}


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
        crop = views[band.axis].crop(band, LINES_MARGIN_PX)
        ratio, delta_e = crop.lines()
        width = min(band.window or ratio.shape[-1], ratio.shape[-1])
        firsts = torch.arange(band.first, band.last - width + 2)
        worst_ratio = ratio.unfold(-1, width, 1).amax(-1)
        worst_delta_e = delta_e.unfold(-1, width, 1).amax(-1)
        drift = crop.drift(firsts, firsts + width - 1)
        out.append(BandScores(band, ratio, delta_e, worst_ratio, worst_delta_e, drift))
    return out
