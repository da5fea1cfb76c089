"""The prompt × seed pairs every method is run on, and each pair's canvas noise."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from lab import seamlab

from .model import Model


@dataclass
class Pairs:
    """Prompt × seed pairs, encoded once; B = len(seeds)."""

    scenes: seamlab.Scenes
    prompts: list[str]
    seeds: list[int]
    embeds: Tensor
    mask: Tensor
    negative: Tensor
    negative_mask: Tensor

    def __len__(self) -> int:
        return len(self.seeds)

    def head(self, n: int) -> Pairs:
        """The first ``n`` pairs (same prompts, seeds and noise)."""
        return Pairs(
            self.scenes[slice(0, n)],
            self.prompts[:n],
            self.seeds[:n],
            *(t[:n] for t in (self.embeds, self.mask, self.negative, self.negative_mask)),
        )


def make_pairs(model: Model, count: int, scene_seed: int, noise_seed: int) -> Pairs:
    """Half skies (they carry the countable one-sun/one-moon/one-tree objects), half any scene kind."""
    skies = seamlab.sample_scenes(count - count // 2, seed=scene_seed, kinds=("sky",))
    parts = [skies]
    if count // 2:
        parts.append(seamlab.sample_scenes(count // 2, seed=scene_seed + 1))
    scenes = seamlab.Scenes(
        **{f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(seamlab.Scenes)}
    )
    prompts = scenes.prompts
    embeds, mask = model.encode(prompts)
    negative, negative_mask = model.encode([""] * count)
    seeds = [noise_seed + i for i in range(count)]
    return Pairs(scenes, prompts, seeds, embeds, mask, negative, negative_mask)


def pair_noise(seeds: list[int], shape: tuple[int, int, int]) -> Tensor:
    """[B, C, H, W] canvas noise, one seed per pair, so every method of a pair starts from the same."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
