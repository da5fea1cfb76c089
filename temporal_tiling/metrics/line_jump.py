"""The plan-free line detector: a row or column boundary that stands out from its axis."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .bands import Axis
from .colour import to_lab
from .inputs import check_image
from .measure import noise_lstar
from .regions import Pixels

LINE_JUMP_BORDER_PX = 8
"""Row/column boundaries this close to the image border are left out of the line jump: an autoencoder
decodes its outermost latent cell (8 px at 8× compression) differently in every method, the untiled
render included (a darker, row-alternating strip along the edge, often the native render's own
strongest line)."""


@dataclass(frozen=True)
class LineJump:
    """The plan-free line detector's answer: the worst row/column boundary over its axis' median."""

    value: float
    axis: Axis
    position: int


def line_jump(image: Tensor) -> LineJump:
    """Median |ΔL*| along every row and column boundary; the worst of them over the median of its axis
    (both plus the noise level). ~1–3 on seamless images, a peak where a line crosses the canvas."""
    lab = to_lab(check_image(image))
    return jump_in_lab(lab, noise_lstar(lab[:, :1]))


def jump_in_lab(lab: Tensor, eps: Tensor) -> LineJump:
    """:func:`line_jump` of a Lab image [B, 3, H, W] with its noise level ``eps`` (:func:`noise_lstar`)."""
    lum = lab[:, :1].float()
    return _worst(
        {  # the batch's images share their tiling: one profile per axis, over every image
            "vertical": _profile(lum[..., 1:] - lum[..., :-1], -1),
            "horizontal": _profile(lum[..., 1:, :] - lum[..., :-1, :], -2),
        },
        eps,
    )


def image_line_jump(pixels: Pixels, eps: Tensor) -> LineJump:
    """:func:`jump_in_lab` of an image read in strips: row boundaries from strips of whole rows, column
    boundaries from strips of whole columns (each boundary's median needs its whole line)."""
    if pixels.whole:
        return jump_in_lab(pixels.lab(0, pixels.height, 0, pixels.width), eps)
    height, width = pixels.height, pixels.width
    rows = [
        _profile((lum := pixels.lab(top, bottom, 0, width)[:, :1])[..., 1:, :] - lum[..., :-1, :], -2)
        for top, _, bottom in pixels.row_strips(extra=1)
    ]
    columns = [
        _profile((lum := pixels.lab(0, height, left, right)[:, :1])[..., 1:] - lum[..., :-1], -1)
        for left, _, right in pixels.column_strips(extra=1)
    ]
    return _worst({"vertical": torch.cat(columns), "horizontal": torch.cat(rows)}, eps)


def _profile(steps: Tensor, dim: int) -> Tensor:
    """The median |ΔL*| along each boundary of ``steps`` [B, 1, H, W] across ``dim``, over every image.

    The median along each boundary, not the mean: a line crosses the canvas, so it is raised along most
    of its length, while an object's rim (a moon's edge, 50 rows of ΔL* 60 on a 512-row canvas) is raised
    along a tenth of it and would otherwise outscore a 2 L* step across the whole width."""
    return steps.abs().movedim(dim, 0).flatten(1).median(dim=1).values.double()


def _worst(profiles: dict[Axis, Tensor], eps: Tensor) -> LineJump:
    """The boundary that stands out most from its axis' median (both plus the noise level)."""
    eps_value = float(eps.mean())
    best = LineJump(1.0, "vertical", 0)
    for axis, profile in profiles.items():
        kept = profile[LINE_JUMP_BORDER_PX - 1 : profile.shape[0] - LINE_JUMP_BORDER_PX + 1]
        if kept.shape[0] < 3:
            continue
        ratio = (kept + eps_value) / (kept.median() + eps_value)
        if float(ratio.max()) > best.value:
            best = LineJump(float(ratio.max()), axis, int(ratio.argmax()) + LINE_JUMP_BORDER_PX)
    return best
