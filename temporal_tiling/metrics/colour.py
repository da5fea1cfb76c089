"""Colour science of the measures: sRGB to CIE Lab, CIEDE2000 and PSNR."""

from __future__ import annotations

import math

import kornia
import torch
from torch import Tensor

PSNR_CAP_DB = 100.0
"""PSNR of identical inputs, so the report stays a finite JSON number (MSE ≤ 1e-10)."""


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
    return psnr_of_mse(mse)


def psnr_of_mse(mse: Tensor) -> Tensor:
    """PSNR (range 1.0) of mean squared errors, capped at ``PSNR_CAP_DB``."""
    floor = 10 ** (-PSNR_CAP_DB / 10)
    return (10 * torch.log10(1 / mse.clamp_min(floor))).clamp_max(PSNR_CAP_DB)
