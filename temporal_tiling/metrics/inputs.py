"""Input checks shared by every measure: a clear one-line error instead of a torch traceback."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import UserInputError
from ..plan import TilePlan


class MetricsError(UserInputError):
    """Inputs the metrics cannot measure; the message says what to change."""


def check_image(image: Tensor, plan: TilePlan | None = None, name: str = "image") -> Tensor:
    """``image`` if it is an RGB batch without NaN, cut to the plan's area when a plan is given."""
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
