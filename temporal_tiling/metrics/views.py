"""Pictures for a person: the seam heatmap, the measured lines drawn on the image, the solar curve."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from ..plan import TilePlan
from .bands import Axis, floor_bands, seam_bands
from .colour import to_lab
from .inputs import check_image

if TYPE_CHECKING:
    from .report import SeamReport


def seam_heatmap(image: Tensor, window: int = 17) -> Tensor:
    """Per-pixel seam score [B,1,H,W]: |ΔL*| between neighbouring pixels divided by its local average
    across the same direction (a ``window`` px band, 5 px along). ~1 on texture, ≫ 1 on a seam."""
    lum = to_lab(check_image(image))[:, :1]
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
    lum = to_lab(check_image(image))[:, :1]
    return (0.5 - 0.5 * torch.cos(2 * math.pi * cycles * lum / 100)).expand(-1, 3, -1, -1).contiguous()
