"""Training data: seam-lab scenes rendered on the fly from a step's generator (no dataset on disk)."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import seamlab


def scene_batch(
    g: torch.Generator, batch: int, height: int, width: int, crop_prob: float = 0.0
) -> tuple[Tensor, list[str]]:
    """Render a batch of scenes; with probability crop_prob the batch is tile-like crops of 2x scenes."""
    seed = int(torch.randint(2**31 - 1, (1,), generator=g))
    scenes = seamlab.sample_scenes(batch, seed=seed)
    if float(torch.rand(1, generator=g)) < crop_prob and height == width:
        big = seamlab.render(scenes, 2 * height, 2 * width)
        return seamlab.random_crops(big, height, g), scenes.prompts
    return seamlab.render(scenes, height, width), scenes.prompts
