"""Fidelity to a low-res guide of the same scene: layout (PSNR, SSIM at its size) and tile colour."""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from ..plan import TilePlan
from .colour import ciede2000, psnr, to_lab


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
