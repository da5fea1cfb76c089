"""The statistics BCLA carries from tile to tile, and the arithmetic on them.

SANA's self-attention is ReLU linear attention: ``O_i = φ(q_i)ᵀ S / (φ(q_i)ᵀ Z)`` with
``S = Σ φ(k) vᵀ`` and ``Z = Σ φ(k)``. Both are plain sums over tokens, so adding another set of tokens'
S and Z to a call's own is attention over both sets of tokens.

Statistics are stored in the layout of diffusers' ``SanaLinearAttnProcessor2_0``: it pads v with a row
of ones, ``scores = [v;1] @ φ(K)`` has shape [B, heads, Dv+1, Dk] and its last row is Z. They are kept
per noise level, per layer, per CFG branch, per batch element and per head, in float32 whatever the
model dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from .config import BCLAError

Key = float | str
"""A noise level (:func:`sigma_key`) or the name of a recording such as the clean pass's."""
Slot = tuple[str, int]
"""(layer, CFG branch)."""
BranchContext = dict[int, list[tuple[Tensor, float]]]
"""CFG branch -> the statistics added to that branch's own, each with its scale."""


def sigma_key(sigma: float | Tensor) -> float:
    """Round a noise level so the same schedule step from float32 or float64 gives one key."""
    return round(float(sigma), 6)


class BCLAStats:
    """Statistics [B, heads, Dv+1, Dk] (float32) per noise key, layer and CFG branch."""

    def __init__(self) -> None:
        self.data: dict[Key, dict[Slot, Tensor]] = {}

    def __bool__(self) -> bool:
        return bool(self.data)

    def put(self, key: Key, layer: str, branch: int, stats: Tensor) -> None:
        """Set (not add): repeated calls at one noise level, e.g. Heun, keep the latest."""
        self.data.setdefault(key, {})[(layer, branch)] = stats

    def resolve(self, key: Key) -> Key | None:
        """``key`` itself if recorded, else the nearest recorded noise level (multi-evaluation samplers)."""
        if key in self.data:
            return key
        numeric = [k for k in self.data if isinstance(k, float)]
        if isinstance(key, str) or not numeric:
            return None
        return min(numeric, key=lambda k: abs(k - key))

    def get(self, key: Key | None, layer: str, branch: int) -> Tensor | None:
        return None if key is None else self.data.get(key, {}).get((layer, branch))

    def tensors(self) -> Iterator[Tensor]:
        for slots in self.data.values():
            yield from slots.values()

    def add_(self, other: BCLAStats, scale: float = 1.0) -> BCLAStats:
        """self += scale · other over the union of keys (in place where both hold a tensor)."""
        for key, slots in other.data.items():
            mine = self.data.setdefault(key, {})
            for slot, stats in slots.items():
                if slot in mine:
                    mine[slot].add_(stats, alpha=scale)
                else:
                    mine[slot] = stats * scale if scale != 1.0 else stats.clone()
        return self

    def mul_(self, factor: float) -> BCLAStats:
        for stats in self.tensors():
            stats.mul_(factor)
        return self

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def norm(self) -> float:
        """Frobenius norm over every stored tensor."""
        return math.sqrt(sum(float(t.double().square().sum()) for t in self.tensors()))


def sum_stats(parts: Iterable[BCLAStats | None]) -> BCLAStats:
    """A new set holding the sum of ``parts`` (None parts are skipped)."""
    total = BCLAStats()
    for part in parts:
        if part is not None:
            total.add_(part)
    return total


def split_branches(stats: Tensor, branches: tuple[int, ...]) -> dict[int, Tensor]:
    """Split a call's statistics into its CFG chunks (detached copies); chunks sharing a branch id are
    averaged."""
    if stats.shape[0] % len(branches):
        raise BCLAError(
            f"The model batch ({stats.shape[0]}) does not split into {len(branches)} equal CFG chunks; "
            "pass set_call the branch id of every chunk."
        )
    chunks = stats.chunk(len(branches))
    out: dict[int, Tensor] = {}
    for branch in dict.fromkeys(branches):
        own = [chunk for chunk, b in zip(chunks, branches, strict=True) if b == branch]
        out[branch] = (own[0] if len(own) == 1 else torch.stack(own).mean(0)).detach().clone()
    return out


def add_context_(stats: Tensor, branches: tuple[int, ...], context: BranchContext) -> None:
    """stats += Σ scale·context for every CFG chunk of a call's statistics, in place.

    Chunks are ``narrow`` views (single-view ops), so autograd accepts the in-place add and the
    temporal LoRA trains through the processors that call this.
    """
    size = stats.shape[0] // len(branches)
    for i, branch in enumerate(branches):
        chunk = stats.narrow(0, i * size, size)
        for extra, scale in context.get(branch, ()):
            if extra.shape[0] not in (1, chunk.shape[0]) or extra.shape[1:] != chunk.shape[1:]:
                raise BCLAError(
                    f"Cached BCLA statistics {tuple(extra.shape)} do not fit this call "
                    f"{tuple(chunk.shape)}; reset the cache when batch size or model changes."
                )
            chunk.add_(extra.to(chunk.device), alpha=scale)
