"""Seam quality metrics for stitched tile images, exactly as DESIGN.md ("Metrics") defines them.

Images are engine-side ``[B, 3, H, W]`` floats in [0, 1]; luminance is CIE L* and colour is CIE Lab
(kornia, sRGB / D65). Every metric is measured on *lines*: a line is the boundary between pixel
``position - 1`` and ``position`` across its axis, ``start``..``stop`` along it.

- Seam lines are the centre lines of each adjacent pair's overlap (the shared edge with no overlap),
  as ``TilePlan.seams()`` gives them.
- Edge lines are the two borders of each overlap. An unblended stitch (later tiles win) cuts there,
  not at the centre, so the report also measures them: a blender that hides the centre but leaves a
  step at the overlap border must not look clean.
- Interior lines run through every tile's centre: the same measures where no seam exists, i.e. what
  the photo itself scores (the honest reference for ``delta_e``).

PSNR of identical inputs is infinite; it is reported as ``PSNR_CAP_DB`` (100 dB, i.e. MSE ≤ 1e-10) so
the result stays a finite JSON number.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
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
RATIO_EPS = 1e-2
"""L* units added to numerator and denominator of the gradient ratio: a perfectly flat region is 1.0."""

Axis = Literal["vertical", "horizontal"]


class MetricsError(UserInputError):
    """Inputs the metrics cannot measure; the message says what to change."""


@dataclass(frozen=True)
class Line:
    """A measuring line in pixels (see the module docstring)."""

    axis: Axis
    position: int
    start: int
    stop: int


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


# --- lines -----------------------------------------------------------------------------------------
def seam_lines(plan: TilePlan) -> list[Line]:
    """The DESIGN seam lines: centre line of every adjacent pair's overlap, in ``plan.seams()`` order."""
    return [Line(s.axis, s.position, s.start, s.stop) for s in plan.seams()]


def edge_lines(plan: TilePlan) -> list[Line]:
    """Both borders of every non-empty overlap (where an unblended later tile cuts in)."""
    out: list[Line] = []
    for s in plan.seams():
        if s.overlap_stop > s.overlap_start:
            out += [Line(s.axis, p, s.start, s.stop) for p in (s.overlap_start, s.overlap_stop)]
    return out


def interior_lines(plan: TilePlan) -> list[Line]:
    """A vertical and a horizontal line through every tile's centre (no seam there)."""
    c = plan.compression
    out: list[Line] = []
    for t in plan.tiles:
        y, x, h, w = t.y * c, t.x * c, t.height * c, t.width * c
        out += [Line("vertical", x + w // 2, y, y + h), Line("horizontal", y + h // 2, x, x + w)]
    return out


def _strip(image: Tensor, line: Line) -> tuple[Tensor, int]:
    """Pixels within ``BAND_PX`` of a line as [B, C, length, 2*band], the across-axis last."""
    size = image.shape[-1] if line.axis == "vertical" else image.shape[-2]
    band = min(BAND_PX, line.position, size - line.position)
    across = slice(line.position - band, line.position + band)
    along = slice(line.start, line.stop)
    if line.axis == "vertical":
        return image[:, :, along, across], band
    return image[:, :, across, along].transpose(-1, -2), band


def line_gradient_ratio(lum: Tensor, line: Line) -> Tensor:
    """DESIGN gradient ratio of one line, per batch element: mean |ΔL*| across the line over mean
    |ΔL*| between neighbouring pixel lines inside the 8 px bands on both sides."""
    strip, band = _strip(lum, line)
    steps = (strip[..., 1:] - strip[..., :-1]).abs()
    across = steps[..., band - 1].flatten(1).mean(1)
    inside = torch.cat([steps[..., : band - 1], steps[..., band:]], -1)
    if inside.shape[-1] == 0:
        return torch.ones_like(across)
    return (across + RATIO_EPS) / (inside.flatten(1).mean(1) + RATIO_EPS)


def line_delta_e(lab: Tensor, line: Line) -> Tensor:
    """DESIGN ΔE of one line, per batch element: CIEDE2000 between the mean Lab of the 8 px bands on
    either side, per 32 px segment along the line, averaged over the segments."""
    strip, band = _strip(lab, line)
    sides = torch.stack([strip[..., :band].mean(-1), strip[..., band:].mean(-1)])  # [2, B, 3, L]
    sides = sides.cpu().double()  # a few hundred numbers: float64 everywhere, MPS included
    length = sides.shape[-1]
    cuts = torch.unique(torch.arange(0, length + SEGMENT_PX - 1, SEGMENT_PX).clamp_max(length))
    summed = F.pad(sides.cumsum(-1), (1, 0))
    means = (summed[..., cuts[1:]] - summed[..., cuts[:-1]]) / (cuts[1:] - cuts[:-1])
    return ciede2000(means[0], means[1]).mean(-1).float().to(lab.device)


def _measure(lum: Tensor, lab: Tensor, lines: list[Line]) -> tuple[Tensor, Tensor]:
    """Gradient ratio and ΔE of every line, each [len(lines), B]."""
    if not lines:
        empty = lum.new_zeros(0, lum.shape[0])
        return empty, empty
    ratio = torch.stack([line_gradient_ratio(lum, line) for line in lines])
    delta = torch.stack([line_delta_e(lab, line) for line in lines])
    return ratio, delta


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


def solar_view(image: Tensor, cycles: float = 3.0) -> Tensor:
    """Solar curve (seed 001): L* mapped through 0.5 - 0.5·cos(2π·cycles·L*/100), shown as grey.

    The curve inverts tones at every mid-tone crest, so a 1 L* step — invisible in the photo —
    becomes a several-percent jump and faint seams and gradient breaks show as contour kinks.
    """
    lum = to_lab(_check_image(image))[:, :1]
    return (0.5 - 0.5 * torch.cos(2 * math.pi * cycles * lum / 100)).expand(-1, 3, -1, -1).contiguous()


# --- report ----------------------------------------------------------------------------------------
@dataclass
class SeamReport:
    """All seam metrics of one stitched image (batch-pooled: mean over seams × batch, worst = max)."""

    gradient_ratio_mean: float
    gradient_ratio_worst: float
    delta_e_mean: float
    delta_e_worst: float
    interior_gradient_ratio: float
    interior_delta_e: float
    edge_gradient_ratio_mean: float | None = None
    edge_gradient_ratio_worst: float | None = None
    edge_delta_e_mean: float | None = None
    edge_delta_e_worst: float | None = None
    overlap_psnr_mean: float | None = None
    overlap_psnr_worst: float | None = None
    seam_zone_psnr: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    seams: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def meets_targets(self) -> bool:
        """Seed 000 targets: ΔE < 2, gradient ratio < 1.2, seam PSNR > 40 dB (whichever were measured)."""
        ok = self.delta_e_mean < 2.0 and self.gradient_ratio_mean < 1.2
        for value in (self.overlap_psnr_mean, self.seam_zone_psnr):
            ok = ok and (value is None or value > 40.0)
        return ok

    def to_markdown(self) -> str:
        rows = [
            (
                "gradient ratio (mean / worst)",
                f"{self.gradient_ratio_mean:.3f} / {self.gradient_ratio_worst:.3f}",
                f"interior {self.interior_gradient_ratio:.3f}",
                "< 1.2",
            ),
            (
                "ΔE2000 (mean / worst)",
                f"{self.delta_e_mean:.2f} / {self.delta_e_worst:.2f}",
                f"interior {self.interior_delta_e:.2f}",
                "< 2.0",
            ),
        ]
        if self.edge_gradient_ratio_mean is not None:
            rows.append(
                (
                    "overlap-border lines: ratio (mean / worst)",
                    f"{self.edge_gradient_ratio_mean:.3f} / {self.edge_gradient_ratio_worst:.3f}",
                    "",
                    "",
                )
            )
            rows.append(
                (
                    "overlap-border lines: ΔE2000 (mean / worst)",
                    f"{self.edge_delta_e_mean:.2f} / {self.edge_delta_e_worst:.2f}",
                    "",
                    "",
                )
            )
        if self.overlap_psnr_mean is not None:
            rows.append(
                (
                    "overlap PSNR (mean / worst)",
                    f"{self.overlap_psnr_mean:.2f} / {self.overlap_psnr_worst:.2f} dB",
                    "",
                    "> 40 dB",
                )
            )
        if self.seam_zone_psnr is not None:
            rows.append(("seam-zone PSNR vs reference", f"{self.seam_zone_psnr:.2f} dB", "", "> 40 dB"))
            ssim = "not measured" if self.ssim is None else f"{self.ssim:.4f}"
            rows.append(("full-image PSNR / SSIM", f"{self.psnr:.2f} dB / {ssim}", "", ""))
        lines = ["| metric | value | reference | target |", "| --- | --- | --- | --- |"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
        return "\n".join(lines)


def _mean_max(values: Tensor) -> tuple[Tensor, Tensor]:
    return values.mean(), values.max()


def _finite_or_none(values: Tensor, reduce: str) -> float | None:
    values = values[torch.isfinite(values)]
    if values.numel() == 0:
        return None
    return float(values.mean() if reduce == "mean" else values.min() if reduce == "min" else values.max())


def seam_report(
    image: Tensor,
    plan: TilePlan,
    *,
    tiles: Tensor | None = None,
    reference: Tensor | None = None,
    ssim: bool = True,
) -> SeamReport:
    """Measure a stitched image against its plan; ``tiles`` (the unblended tile batch) adds overlap
    PSNR, ``reference`` (same size as the image) adds seam-zone and full-image PSNR and, unless
    ``ssim=False`` (it is the slowest part on large images), SSIM.

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
    lum = lab[:, :1]
    ratio, delta = _measure(lum, lab, seam_lines(plan))
    edge_ratio, edge_delta = _measure(lum, lab, edge_lines(plan))
    inner_ratio, inner_delta = _measure(lum, lab, interior_lines(plan))
    if ratio.numel() == 0:  # a single tile: nothing to measure, report the invisible-seam values
        ratio, delta = torch.ones(1, 1), torch.zeros(1, 1)
    seam_psnr = overlap_psnr(tiles, plan) if tiles is not None else None
    report = SeamReport(
        gradient_ratio_mean=float(ratio.mean()),
        gradient_ratio_worst=float(ratio.max()),
        delta_e_mean=float(delta.mean()),
        delta_e_worst=float(delta.max()),
        interior_gradient_ratio=float(inner_ratio.mean()),
        interior_delta_e=float(inner_delta.mean()),
    )
    if edge_ratio.numel():
        report.edge_gradient_ratio_mean, report.edge_gradient_ratio_worst = map(float, _mean_max(edge_ratio))
        report.edge_delta_e_mean, report.edge_delta_e_worst = map(float, _mean_max(edge_delta))
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
    for i, s in enumerate(plan.seams()):
        entry = {
            "first": s.first,
            "second": s.second,
            "axis": s.axis,
            "position": s.position,
            "gradient_ratio": float(ratio[i].mean()),
            "delta_e": float(delta[i].mean()),
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
