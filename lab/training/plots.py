"""Pictures of a training run, drawn with PIL: loss curves and image grids for the model card."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import Tensor


def plot_loss_curves(curves: dict[str, tuple[list[int], list[float]]], path: Path, size=(480, 260)) -> None:
    """Loss-vs-step PNG (log-y, one coloured line per curve, min/max labelled)."""
    w, h = size
    pad_l, pad_r, pad_t, pad_b = 46, 10, 10, 24
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    vals = [v for _, ys in curves.values() for v in ys if v > 0]
    xs_all = [x for xs, _ in curves.values() for x in xs]
    if not vals:
        img.save(path)
        return
    lo, hi = math.log10(min(vals)), math.log10(max(vals))
    hi = hi if hi > lo else lo + 1
    x_max = max(xs_all) or 1
    d.rectangle([pad_l, pad_t, w - pad_r, h - pad_b], outline="black")
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for i, (name, (xs, ys)) in enumerate(curves.items()):
        pts = [
            (
                pad_l + (w - pad_l - pad_r) * x / x_max,
                pad_t + (h - pad_t - pad_b) * (hi - math.log10(y)) / (hi - lo),
            )
            for x, y in zip(xs, ys, strict=True)
            if y > 0
        ]
        if len(pts) > 1:
            d.line(pts, fill=colors[i % 4], width=2)
        d.text((pad_l + 6, pad_t + 4 + 12 * i), name, fill=colors[i % 4])
    d.text((2, pad_t), f"{10**hi:.3g}", fill="black")
    d.text((2, h - pad_b - 10), f"{10**lo:.3g}", fill="black")
    d.text((pad_l, h - pad_b + 6), "0", fill="black")
    d.text((w - pad_r - 40, h - pad_b + 6), f"{x_max} steps", fill="black")
    img.save(path)


def to_grid(images: Tensor, cols: int) -> Image.Image:
    """[N,3,H,W] in [0,1] -> PIL grid image."""
    n, _, h, w = images.shape
    rows = math.ceil(n / cols)
    canvas = torch.ones(rows * cols, 3, h, w)
    canvas[:n] = images.clamp(0, 1)
    grid = canvas.view(rows, cols, 3, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, 3)
    return Image.fromarray((grid * 255).round().byte().numpy())
