"""The settings of Block Causal Linear Attention (BCLA) and the error raised for impossible ones."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import UserInputError
from ..options import BCLA_MODES as MODES
from ..options import BCLA_SOURCES as SOURCES


class BCLAError(UserInputError):
    """Impossible BCLA settings or call order; the message says what to change."""


@dataclass(frozen=True)
class BCLAConfig:
    """How tiles share attention statistics."""

    mode: str = "cumulative"
    """cumulative (all earlier tiles) | neighbors (earlier 8-neighbours) | sparse (first + previous tile)
    | decay (S ← decay·S + S_tile) | distance (every earlier tile weighted by its distance on the
    canvas: ``decay ** (d - 1)``, d in tile steps, so adjacent tiles count fully) | off."""
    strength: float = 1.0
    """α in S_own + α·S_cache (at σ = 1 when ``strength_end`` is set)."""
    strength_end: float | None = None
    """α at σ = 0, linear in σ from ``strength`` at σ = 1 (a schedule over the steps); None = constant."""
    source: str = "synchronous"
    """synchronous: earlier tiles' statistics at the same noise level (keyed by sigma); clean: recorded
    from each finished tile in a ``clean_pass`` near t=0."""
    decay: float = 0.5
    """Geometric factor per tile of order (mode="decay": 0 = previous tile only, 1 = cumulative) or per
    tile step of canvas distance (mode="distance": 0 = edge neighbours only, 1 = cumulative)."""
    record_locked: bool = True
    """Also record the tokens of locked (already generated) cells; False records only the tokens of
    the ``token_mask`` given to ``begin_tile``."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise BCLAError(f"Unknown BCLA mode {self.mode!r}; choose one of {', '.join(MODES)}.")
        if self.source not in SOURCES:
            raise BCLAError(f"Unknown BCLA source {self.source!r}; choose one of {', '.join(SOURCES)}.")
        for name, value in (("strength", self.strength), ("strength_end", self.strength_end)):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise BCLAError(f"BCLA {name} must be a finite number >= 0, got {value!r}.")
        if not 0.0 <= self.decay <= 1.0:
            raise BCLAError(f"BCLA decay must lie in [0, 1] (0 = previous tile only), got {self.decay!r}.")

    @property
    def active(self) -> bool:
        """Whether tiles share statistics at all (a mode other than off and some α > 0)."""
        return self.mode != "off" and (self.strength != 0 or bool(self.strength_end))

    def alpha(self, sigma: float) -> float:
        """α at noise level ``sigma``."""
        if self.strength_end is None:
            return self.strength
        level = min(max(sigma, 0.0), 1.0)
        return self.strength_end + (self.strength - self.strength_end) * level
