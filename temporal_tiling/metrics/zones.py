"""Where tiles share pixels: the seam zone mask and the PSNR between tiles over their overlaps."""

from __future__ import annotations

import torch
from torch import Tensor

from ..plan import TilePlan
from .bands import BAND_PX
from .colour import psnr


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
