"""The plan-free line detector: a row or column boundary that stands out from its axis."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .bands import Axis
from .colour import to_lab
from .inputs import check_image
from .measure import noise_lstar

LINE_JUMP_BORDER_PX = 4
"""Row/column boundaries this close to the image border are left out of the line jump: decoders and
padding treat the outermost pixels differently in every method, the untiled render included."""


@dataclass(frozen=True)
class LineJump:
    """The plan-free line detector's answer: the worst row/column boundary over its axis' median."""

    value: float
    axis: Axis
    position: int


def line_jump(image: Tensor) -> LineJump:
    """Mean |ΔL*| of every row and column boundary; the worst of them over the median of its axis (both
    plus the noise level). ~1–3 on seamless images, a peak where a line crosses the canvas."""
    lab = to_lab(check_image(image))
    return jump_in_lab(lab, noise_lstar(lab[:, :1]))


def jump_in_lab(lab: Tensor, eps: Tensor) -> LineJump:
    lum, eps = lab[:, :1].double(), float(eps.mean())
    profiles = {  # the batch's images share their tiling: one profile per axis
        "vertical": (lum[..., 1:] - lum[..., :-1]).abs().mean((0, 1, 2)),
        "horizontal": (lum[..., 1:, :] - lum[..., :-1, :]).abs().mean((0, 1, 3)),
    }
    best = LineJump(1.0, "vertical", 0)
    for axis, profile in profiles.items():
        kept = profile[LINE_JUMP_BORDER_PX - 1 : profile.shape[0] - LINE_JUMP_BORDER_PX + 1]
        if kept.shape[0] < 3:
            continue
        ratio = (kept + eps) / (kept.median() + eps)
        if float(ratio.max()) > best.value:
            best = LineJump(float(ratio.max()), axis, int(ratio.argmax()) + LINE_JUMP_BORDER_PX)
    return best
