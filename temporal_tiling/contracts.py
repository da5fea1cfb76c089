"""What the engine's parts expect of each other, in one place.

The run path (:mod:`temporal_tiling.pipeline`) only talks to these shapes: a denoiser, a tile cache
(BCLA's statistics carried from tile to tile), a global context (what a whole-scene pass tells each
tile) and a position source (which tile's canvas positions the model should use). Each has one
implementation in the engine and may have others in a host (ComfyUI) or a test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from torch import Tensor

if TYPE_CHECKING:
    from .plan import Tile, TilePlan

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""``(x [N,C,h,w], sigma [N]) -> x0 [N,C,h,w]``: predicted clean latent, CFG applied."""

DenoiserWrap = Callable[[Denoiser], Denoiser]
"""Turns the model call of a job into another (MultiDiffusion: every tile's x0 averaged per cell)."""

X0Hook = Callable[[Tensor, Tensor], Tensor]
"""``(x0, sigma) -> x0``: a correction of the post-CFG clean prediction after every model call."""

MaskSchedule = Callable[[Tensor, Tensor], Tensor]
"""``(sigma, denoise_mask) -> denoise_mask`` for one model call: ComfyUI's ``denoise_mask_function``."""

TileCallback = Callable[[int, int], None]
"""``(tile index, tile count)``, called as each tile starts; it may raise to cancel."""


class CallCache(Protocol):
    """What a denoiser tells a tile cache before each model call."""

    def set_call(self, sigma: float, branches: Sequence[int]) -> None:
        """The noise level and the CFG branches (0 = cond, 1 = uncond) of the batch about to run."""


class SeedHandle(Protocol):
    """What ``record_seed()`` yields: ``stats`` is filled when the block exits."""

    stats: object


class TileCache(CallCache, Protocol):
    """Attention statistics carried from tile to tile (BCLA), driven by the causal tile loop."""

    @property
    def needs_clean_pass(self) -> bool:
        """Whether each finished tile must be re-run once, near σ = 0, inside :meth:`clean_pass`."""

    def reset(self) -> None:
        """Forget everything: a new generation."""

    def seed(self, stats: object, strength: float) -> None:
        """Add a whole-scene pass's statistics (from :meth:`record_seed`) to what every tile reads."""

    def begin_tile(self, tile: Tile, token_mask: Tensor | None = None) -> None:
        """Start ``tile``; ``token_mask`` [h, w] marks the cells it generates (True)."""

    def end_tile(self) -> None:
        """Fold the finished tile's statistics into what later tiles read."""

    def clean_pass(self) -> AbstractContextManager[None]:
        """Model calls inside only record the finished tile's statistics."""

    def record_seed(self) -> AbstractContextManager[SeedHandle]:
        """Model calls inside record a whole-scene pass instead of a tile."""


class PositionSource(Protocol):
    """Where the model's position encodings read the active tile's canvas position from."""

    plan: TilePlan

    @property
    def position_tile(self) -> Tile | None:
        """The tile being sampled, or None for the model's own positions."""


class TileContext(Protocol):
    """A global context as the causal tile loop uses it (:class:`context.GlobalContext`)."""

    seed_stats: object
    bcla_seed: float

    @property
    def seeds_cache(self) -> bool:
        """Whether ``cache.seed(seed_stats, bcla_seed)`` must run before the first tile."""

    def x0_hook(self, tile: Tile, plan: TilePlan) -> X0Hook | None:
        """The x0 correction for ``tile``; None when there is none."""
