"""Where tiles share pixels: the seam zone mask and the PSNR between tiles over their overlaps."""

from __future__ import annotations

import kornia
import torch
from torch import Tensor

from ..plan import TilePlan
from .bands import BAND_PX
from .colour import psnr, psnr_of_mse
from .regions import Pixels


def seam_zone_mask(plan: TilePlan, region: tuple[int, int, int, int] | None = None) -> Tensor:
    """[H, W] bool: union of the overlap zones of all adjacent pairs; a zero-overlap pair contributes
    the 8 px bands either side of its shared edge (so the zone is never empty). ``region`` (top, bottom,
    left, right px): that part of it only."""
    return _zone_in(_zone_rectangles(plan), region or (0, plan.height_px, 0, plan.width_px))


def _zone_rectangles(plan: TilePlan) -> Tensor:
    """The seam zone as one rectangle per seam, [seams, 4]: top, bottom, left, right px."""
    rectangles = []
    for s in plan.seams():
        lo, hi = s.overlap_start, s.overlap_stop
        if hi <= lo:
            lo, hi = s.position - BAND_PX, s.position + BAND_PX
        along, across = (s.start, s.stop), (max(lo, 0), hi)
        rectangles.append((*along, *across) if s.axis == "vertical" else (*across, *along))
    return torch.tensor(rectangles, dtype=torch.int64).reshape(-1, 4)


def _zone_in(rectangles: Tensor, region: tuple[int, int, int, int]) -> Tensor:
    """The zone's part in ``region`` (top, bottom, left, right px): only the rectangles that reach it are
    drawn, so a region costs what lies in it."""
    top, bottom, left, right = region
    mask = torch.zeros(bottom - top, right - left, dtype=torch.bool)
    y0, y1, x0, x1 = rectangles.unbind(-1)
    inside = (y0 < bottom) & (y1 > top) & (x0 < right) & (x1 > left)
    shifted = (rectangles[inside] - torch.tensor([top, top, left, left])).clamp_min(0)
    for a, b, c, d in shifted.tolist():
        mask[a:b, c:d] = True
    return mask


SSIM_WINDOW = 11
"""Side of SSIM's Gaussian window (px): regions are read ``SSIM_WINDOW // 2`` px wider so that every
pixel's window sees what it sees in the whole image."""


def reference_scores(
    image: Pixels, reference: Pixels, plan: TilePlan, ssim: bool
) -> tuple[float, float, float | None]:
    """Seam-zone PSNR, full-image PSNR and (``ssim``) SSIM of ``image`` against ``reference`` (same size
    and batch), region by region: squared errors and SSIM map summed per image, so the result is the
    whole image's (PSNR through the mean squared error; SSIM's windows read a margin, reflected only at
    the image's own borders, as kornia does)."""
    batch = image.batch
    sums = [torch.zeros(batch, dtype=torch.float64) for _ in range(4)]
    squared, zone_squared, zone_count, similarity = sums
    margin = SSIM_WINDOW // 2 if ssim else 0
    rectangles = _zone_rectangles(plan)
    for (top, bottom, left, right), (rows, cols) in image.regions(margin):
        a, b = image.rgb(top, bottom, left, right).float(), reference.rgb(top, bottom, left, right).float()
        err = ((a - b) ** 2)[..., rows, cols]
        squared += err.flatten(1).sum(1).double()
        inner = (top + rows.start, top + rows.stop, left + cols.start, left + cols.stop)
        zone = _zone_in(rectangles, inner).to(err.device)
        zone_squared += (err * zone).flatten(1).sum(1).double()
        zone_count += float(zone.sum()) * err.shape[1]
        if ssim:
            similarity += kornia.metrics.ssim(a, b, SSIM_WINDOW)[..., rows, cols].flatten(1).sum(1).double()
    pixels = 3 * image.height * image.width
    zone_psnr = float(psnr_of_mse(zone_squared / zone_count.clamp_min(1)).mean())
    whole_psnr = float(psnr_of_mse(squared / pixels).mean())
    return zone_psnr, whole_psnr, float((similarity / pixels).mean()) if ssim else None


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
