"""The plan-free line detector: a row or column boundary that stands out from its axis."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .bands import Axis
from .colour import to_lab
from .inputs import check_image
from .measure import noise_lstar

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
    """The median along each boundary, not the mean: a line crosses the canvas, so it is raised along
    most of its length, while an object's rim (a moon's edge, 50 rows of ΔL* 60 on a 512-row canvas) is
    raised along a tenth of it and would otherwise outscore a 2 L* step across the whole width."""
    lum, eps = lab[:, :1].float(), float(eps.mean())
    steps = {  # the batch's images share their tiling: one profile per axis, over every image
        "vertical": (lum[..., 1:] - lum[..., :-1]).abs().movedim(-1, 0).flatten(1),
        "horizontal": (lum[..., 1:, :] - lum[..., :-1, :]).abs().movedim(-2, 0).flatten(1),
    }
    best = LineJump(1.0, "vertical", 0)
    for axis, step in steps.items():
        profile = step.median(dim=1).values.double()
        kept = profile[LINE_JUMP_BORDER_PX - 1 : profile.shape[0] - LINE_JUMP_BORDER_PX + 1]
        if kept.shape[0] < 3:
            continue
        ratio = (kept + eps) / (kept.median() + eps)
        if float(ratio.max()) > best.value:
            best = LineJump(float(ratio.max()), axis, int(ratio.argmax()) + LINE_JUMP_BORDER_PX)
    return best
