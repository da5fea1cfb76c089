"""Per-pair metrics of a run and their summaries: what the quality tables report and the tuning ranks.

Seam metrics come from :func:`temporal_tiling.metrics.seam_report`; the benchmark adds speckle
(high-frequency L* energy against the native render), adjacent-tile feature cosines (hidden states
and colour histograms) and duplicated-object counts (:mod:`lab.seamlab`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from lab import seamlab
from temporal_tiling.metrics import seam_report, to_lab
from temporal_tiling.plan import TilePlan

from .model import Model
from .pairs import Pairs
from .runner import Run

LAYOUT_DOWNSCALE = 4
"""Layout fidelity: output and native render compared at 1/4 size, where only the scene's layout and
colours remain (what a low-res guide fixes)."""
HF_SIGMA = 1.5
"""Gaussian blur σ (px) of the speckle measure's high-pass."""
COS_THRESHOLD = 0.85
"""Adjacent-tile hidden-state cosine that counts as "the tiles agree"."""


def hf_energy(image: Tensor, mask: Tensor) -> Tensor:
    """Mean squared high-pass L* per image inside ``mask`` [H, W]."""
    lum = to_lab(image)[:, :1]
    size = 2 * math.ceil(3 * HF_SIGMA) + 1
    high = lum - kornia.filters.gaussian_blur2d(
        lum, (size, size), (HF_SIGMA, HF_SIGMA), border_type="reflect"
    )
    m = mask.to(high)
    return (high.square() * m).flatten(1).sum(1) / m.sum().clamp_min(1)


def histograms(tiles: Tensor, bins: int = 8) -> Tensor:
    """Joint RGB histograms [N, bins³] of decoded tiles [N, 3, h, w] (normalised)."""
    q = (tiles.clamp(0, 1) * bins).long().clamp_max(bins - 1)
    index = (q[:, 0] * bins + q[:, 1]) * bins + q[:, 2]
    hist = torch.zeros(tiles.shape[0], bins**3).scatter_add_(
        1, index.flatten(1), torch.ones(index.flatten(1).shape)
    )
    return hist / hist.sum(1, keepdim=True)


def seam_cosines(features: Tensor, plan: TilePlan) -> Tensor:
    """Cosine of adjacent tiles' features [seams, B] (features [T, B, D])."""
    pairs = [(s.first, s.second) for s in plan.seams()]
    a = torch.stack([features[i] for i, _ in pairs])
    b = torch.stack([features[j] for _, j in pairs])
    return F.cosine_similarity(a, b, dim=-1)


@dataclass
class Decoded:
    image: Tensor
    tiles: Tensor


def decode_run(model: Model, r: Run) -> Decoded:
    return Decoded(model.decode(r.result.canvas), model.decode(r.result.tiles))


def measure(r: Run, dec: Decoded, pairs: Pairs, full: Decoded | None, interior: Tensor) -> dict:
    """Per-pair metrics of one run: lists of length B."""
    batch, plan = len(pairs), r.plan
    tiles = dec.tiles.reshape(len(plan), batch, *dec.tiles.shape[1:])
    out: dict[str, list] = {k: [] for k in METRIC_KEYS}
    ref_energy = hf_energy(full.image, interior) if full is not None else None
    energy = hf_energy(dec.image, interior)
    counts = seamlab.count_objects(dec.image)
    expected = pairs.scenes.expected_counts()
    hist = histograms(dec.tiles).reshape(len(plan), batch, -1)
    cos_hist = seam_cosines(hist, plan) if len(plan) > 1 else None
    cos_hidden = seam_cosines(r.features, plan) if r.features is not None and len(plan) > 1 else None
    for b in range(batch):
        ref = full.image[b : b + 1] if full is not None else None
        layout = None if ref is None else F.interpolate(ref, scale_factor=1 / LAYOUT_DOWNSCALE, mode="area")
        rep = seam_report(dec.image[b : b + 1], plan, tiles=tiles[:, b], reference=ref, guide=layout)
        excess = rep.excess()
        out["gradient_ratio"].append(rep.gradient_ratio_mean)
        out["gradient_ratio_worst"].append(rep.gradient_ratio_worst)
        out["floor_gradient_ratio"].append(rep.floor_gradient_ratio_mean)
        out["excess_ratio"].append(excess["gradient_ratio"])
        out["delta_e"].append(rep.delta_e_mean)
        out["delta_e_worst"].append(rep.delta_e_worst)
        out["excess_delta_e"].append(excess["delta_e"])
        out["drift_delta_e"].append(rep.drift_delta_e_mean)
        out["excess_drift"].append(excess["drift_delta_e"])
        out["line_jump"].append(rep.line_jump)
        out["passes"].append(float(rep.meets_targets()))
        out["centre_gradient_ratio"].append(rep.centre_gradient_ratio_mean)
        out["border_gradient_ratio_worst"].append(rep.border_gradient_ratio_worst)
        out["layout_psnr"].append(rep.guide_psnr)
        out["overlap_psnr"].append(rep.overlap_psnr_mean)
        out["overlap_psnr_worst"].append(rep.overlap_psnr_worst)
        out["psnr"].append(rep.psnr)
        out["ssim"].append(rep.ssim)
        out["seam_zone_psnr"].append(rep.seam_zone_psnr)
        out["speckle"].append(
            float(energy[b] / ref_energy[b].clamp_min(1e-8)) if ref_energy is not None else 1.0
        )
        wanted = [k for k in seamlab.OBJECTS if int(expected[k][b]) == 1]
        out["objects"].append(len(wanted))
        out["duplicated"].append(sum(int(counts[k][b]) > 1 for k in wanted))
        out["missed"].append(sum(int(counts[k][b]) == 0 for k in wanted))
        out["cos_hidden"].append(float(cos_hidden[:, b].mean()) if cos_hidden is not None else None)
        out["cos_hist"].append(float(cos_hist[:, b].mean()) if cos_hist is not None else None)
        out["cos_hidden_above"].append(
            float((cos_hidden[:, b] > COS_THRESHOLD).float().mean()) if cos_hidden is not None else None
        )
    return out


METRIC_KEYS = (
    "gradient_ratio",
    "gradient_ratio_worst",
    "floor_gradient_ratio",
    "excess_ratio",
    "delta_e",
    "delta_e_worst",
    "excess_delta_e",
    "drift_delta_e",
    "excess_drift",
    "line_jump",
    "passes",
    "centre_gradient_ratio",
    "border_gradient_ratio_worst",
    "layout_psnr",
    "overlap_psnr",
    "overlap_psnr_worst",
    "psnr",
    "ssim",
    "seam_zone_psnr",
    "speckle",
    "objects",
    "duplicated",
    "missed",
    "cos_hidden",
    "cos_hist",
    "cos_hidden_above",
)
HIGHER_BETTER = {
    "overlap_psnr",
    "overlap_psnr_worst",
    "psnr",
    "ssim",
    "seam_zone_psnr",
    "layout_psnr",
    "passes",
}


def _vals(values: list) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def summarize(per_pair: dict, seconds: float, cpu_seconds: float) -> dict:
    """Mean over pairs and the worst pair (worst seam for the *_worst keys)."""
    s: dict = {"seconds_per_canvas": seconds, "cpu_seconds_per_canvas": cpu_seconds}
    for key in METRIC_KEYS:
        v = _vals(per_pair[key])
        if key in ("objects", "duplicated", "missed"):
            continue
        if not v:
            s[key] = None
            continue
        mean = sum(v) / len(v)
        worst = min(v) if key in HIGHER_BETTER else max(v)
        if key == "speckle":
            worst = max(v, key=lambda x: abs(math.log(max(x, 1e-8))))
        if key.endswith("_worst"):  # already the worst seam of each pair: keep the worst pair's
            s[key], s[key + "_pair_mean"] = worst, mean
        else:
            s[key], s[key + "_worst_pair"] = mean, worst
    objects = sum(per_pair["objects"])
    s["objects"] = objects
    s["duplicated_rate"] = sum(per_pair["duplicated"]) / objects if objects else None
    s["missed_rate"] = sum(per_pair["missed"]) / objects if objects else None
    return s


RANK_KEYS = (
    "gradient_ratio",
    "gradient_ratio_worst",
    "excess_drift",
    "delta_e",
    "line_jump",
    "psnr",
    "ssim",
    "speckle",
)
"""What the tuning ranks on: the seam metrics measure every line of each overlap band, so no configuration
wins by moving its step off a particular line; overlap PSNR is left out (100 dB by construction for hard
locks and MultiDiffusion)."""


def rank_value(summary: dict, key: str) -> float:
    """Lower is better; speckle by |log ratio| (1.0 = like the native render)."""
    v = summary.get(key)
    if v is None:
        return math.inf
    if key == "speckle":
        return abs(math.log(max(v, 1e-8)))
    return -v if key in HIGHER_BETTER else v


def rank_score(summaries: list[dict]) -> list[float]:
    """Sum over RANK_KEYS of each candidate's rank (0 = best)."""
    score = [0.0] * len(summaries)
    for key in RANK_KEYS:
        order = sorted(range(len(summaries)), key=lambda i: rank_value(summaries[i], key))
        for rank, i in enumerate(order):
            score[i] += rank
    return score
