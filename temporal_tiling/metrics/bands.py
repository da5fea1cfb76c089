"""Where a seam is measured: each seam's band of lines, and the floor bands through the tiles' seam-free
parts."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from ..plan import TilePlan

BAND_PX = 8
"""Width of the side bands a line is compared with, and the seam zone of a zero-overlap pair."""
MARGIN_PX = 2
"""Lines measured beyond each side of an overlap: a step at the overlap border can land a pixel or two out."""

Axis = Literal["vertical", "horizontal"]


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
