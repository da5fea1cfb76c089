"""The verdict: each axis' seams against floor windows shaped like them, beyond sampling noise."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..plan import TilePlan
from .bands import Band, floor_bands
from .measure import AxisView, BandScores, measure_bands

TARGET_RATIO = 1.2
TARGET_DELTA_E = 2.0
QUIET_DELTA_E = 0.5
"""Least ΔE excess judged visible: on a smooth sky a whole-width step this large above the floor shows."""
SAMPLING_Z = 2.0
"""ΔE excesses are counted beyond two standard errors of the difference of the seams' and the floor's
medians: on busy photos bands of content differ by several ΔE, and a handful of seams can land on busier
content than the tiles' middles by chance; on flat content that allowance is near zero."""


def delta_e_target(floor: float | None) -> float:
    """Largest ΔE excess over the floor a seam may have: ``TARGET_DELTA_E`` where the image's own bands
    differ by that much (content masks a step), the floor's own level where it is quieter (at least
    ``QUIET_DELTA_E``). A night sky whose rows step by 1.3 ΔE on a 0.4 floor shows a staircase a person
    sees at once; big suns that lift the seams to 2.9 on a 1.4 floor do not read as a line."""
    return min(TARGET_DELTA_E, max(QUIET_DELTA_E, floor or 0.0))


@dataclass(frozen=True)
class AxisJudgement:
    """One measure on the seams of one axis, as the verdict sees it.

    ``seams`` is the median over those seams (× batch), ``floor`` the median over the floor windows
    shaped like them. A tiling artefact is systematic: the lock border, a gradient that starts over, a
    cast feathered over each overlap sit at every seam of their axis, while content (a sun straddling a
    band) sits at a few; the median counts the first and not the second. ``allowance`` (ΔE measures) is
    what chance gives: ``SAMPLING_Z`` standard errors of the difference of the two medians, from the
    robust spreads of the seams and of the floor (each tile's windows counted as one). ``excess``:
    ``seams / floor`` for the gradient ratio, ``seams - floor - allowance`` for ΔE. ``judged`` is False
    where the plan leaves no floor to compare with. ``content`` is the content's own level that sets a ΔE
    target where that is not the floor (the soft band: its floor is a median over tiles, which cancels
    content; how busy the content is at that scale is its unsigned value in the tiles); None: the floor.
    """

    seams: float | None
    floor: float | None
    allowance: float
    excess: float
    judged: bool
    content: float | None = None
    reference_excess: float | None = None
    """The same measure's excess on the reference at the same seams (:func:`beyond_reference`), already
    taken out of ``excess``; None: judged without a reference."""

    @property
    def target(self) -> float:
        """The excess this measure must stay under: ``TARGET_RATIO`` for the gradient ratio (set by the
        caller's name), else :func:`delta_e_target` of the content's level."""
        return delta_e_target(self.floor if self.content is None else self.content)


def beyond_reference(judgement: AxisJudgement, reference: AxisJudgement | None, name: str) -> AxisJudgement:
    """``judgement`` counted only beyond what the reference (the seamless image this one should look like:
    the photo a refine starts from, a whole-canvas pass) shows on the same lines of the same plan. A cat's
    whisker or a horizon that lies on a seam line is content in the input too, and a person comparing the
    two sees no seam there; a step the input does not have keeps its whole excess. The ratio is divided by
    the reference's excess factor, ΔE measures lose the reference's positive excess."""
    if reference is None or not (judgement.judged and reference.judged):
        return judgement
    if name == "gradient_ratio":
        excess = judgement.excess / max(1.0, reference.excess)
    else:
        excess = judgement.excess - max(0.0, reference.excess)
    return replace(judgement, excess=excess, reference_excess=reference.excess)


WINDOW_MEASURES = ("worst_ratio", "worst_delta_e", "drift")


@dataclass(frozen=True)
class _Floor:
    mean: float
    worst: float


def pooled_floor(scores: list[BandScores], name: str) -> Tensor:
    """The finite values of one measure over floor windows, for :func:`floor_of`."""
    return _tile_weighted(scores, name)[0]


def floor_of(pooled: Tensor, seams: Tensor, seamless: float | None) -> _Floor:
    """Mean and worst of one measure over floor windows (``pooled``: :func:`pooled_floor`). A plan whose
    tiles neighbours cover whole leaves no seam-free line: then the floor is what a flat image scores
    (``seamless``: the ratio's 1), or, for the colour measures whose no-seam level depends on the
    content, the seams' own (not judged)."""
    if pooled.numel():
        return _Floor(float(pooled.mean()), float(pooled.max()))
    if seamless is None:
        return _Floor(float(seams.mean()), float(seams.max()))
    return _Floor(seamless, seamless)


class FloorSampler:
    """Floor windows shaped like one seam: on its own axis (content is seldom alike across the two: a sky
    changes colour top to bottom) and as wide as its band (a colour change across a band grows with its
    width: fit="shift" gives the last tiles wider overlaps). Measured once per (axis, width). ``exact`` is
    False where the plan has no seam-free part that shape fits (then both axes' regions, windows cut to
    fit): good enough for the line measures, not for drift, which is then not judged for that seam."""

    def __init__(self, views: dict[str, AxisView], plan: TilePlan):
        self.views, self.regions, self.measured = views, floor_bands(plan), {}

    def __call__(self, band: Band) -> tuple[list[BandScores], bool]:
        width = band.last - band.first + 1
        key = (band.axis, width)
        if key not in self.measured:
            own = [b for b in self.regions if b.axis == band.axis]
            exact = any(b.last - b.first + 1 >= width for b in own)
            windows = [replace(b, window=width) for b in (own or self.regions)]
            self.measured[key] = (measure_bands(self.views, windows), exact)
        return self.measured[key]


def seam_floor(seams: Tensor, floors: list[_Floor]) -> tuple[float, float]:
    """The floor the seams [S, B] are reported against, each seam by its axis' floor: mean over seams and
    the floor's worst on the worst seam's axis."""
    worst_seam = int(seams.amax(-1).argmax())
    return sum(f.mean for f in floors) / len(floors), floors[worst_seam].worst


JUDGED = {"gradient_ratio": "worst_ratio", "delta_e": "worst_delta_e", "drift_delta_e": "drift"}
"""Verdict measure -> the :class:`BandScores` window measure behind it."""


def judge(
    seam_scores: list[BandScores], samples: list[tuple[list[BandScores], bool]]
) -> dict[str, dict[str, AxisJudgement]]:
    """:class:`AxisJudgement` of every judged measure on each axis that has seams."""
    axes = {}
    for axis in ("vertical", "horizontal"):
        mine = [(s, sample) for s, sample in zip(seam_scores, samples, strict=True) if s.band.axis == axis]
        if mine:
            axes[axis] = {name: _judge_measure(mine, name) for name in JUDGED}
    return axes


def _judge_measure(mine: list[tuple[BandScores, tuple[list[BandScores], bool]]], name: str) -> AxisJudgement:
    key = JUDGED[name]
    # drift needs floor windows as wide as the seam's band (``FloorSampler``); other seams sit it out
    kept = [(s, floor) for s, (floor, exact) in mine if exact or key != "drift"]
    seams = torch.cat([getattr(s, key)[:, 0] for s, _ in kept]) if kept else torch.zeros(0)
    seams = seams[torch.isfinite(seams)].double()
    shared = {id(floor): floor for _, floor in kept}  # seams of one width share their floor windows
    floor, weights = _tile_weighted([band for f in shared.values() for band in f], key)
    floor = floor.double()
    if seams.numel() == 0 or (floor.numel() == 0 and name != "gradient_ratio"):
        return AxisJudgement(None, None, 0.0, 0.0, judged=False)
    seam_median = float(seams.quantile(0.5))
    if name == "gradient_ratio":  # no floor: a flat image's ratio, 1
        floor_median = weighted_median(floor, weights) if floor.numel() else 1.0
        return AxisJudgement(seam_median, floor_median, 0.0, seam_median / floor_median, judged=True)
    floor_median = weighted_median(floor, weights)
    # the difference of two medians: each one's standard error from its robust spread (1.4826 MAD) and
    # its count (seams; floor bands, one per tile), √(π/2) σ / √n for a median
    seam_spread = 1.4826 * float((seams - seam_median).abs().quantile(0.5))
    floor_spread = 1.4826 * weighted_median((floor - floor_median).abs(), weights)
    bands = float(weights.sum())
    error = math.sqrt(math.pi / 2 * (seam_spread**2 / seams.numel() + floor_spread**2 / bands))
    allowance = SAMPLING_Z * error
    return AxisJudgement(seam_median, floor_median, allowance, seam_median - floor_median - allowance, True)


def _tile_weighted(bands: list[BandScores], key: str) -> tuple[Tensor, Tensor]:
    """Finite values of one measure over every floor window, and weights that give each floor band (a
    tile's seam-free part) and image the same say: a tile at the canvas edge has a wider seam-free part
    and so more windows, and its content (often background) would otherwise set the floor."""
    values, weights = [], []
    for band in bands:
        v = getattr(band, key)  # [B, windows]
        finite = torch.isfinite(v)
        counts = finite.sum(-1, keepdim=True).clamp_min(1)
        values.append(v[finite])
        weights.append((1.0 / counts).expand_as(v)[finite])
    if not values:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(values), torch.cat(weights)


def weighted_median(values: Tensor, weights: Tensor) -> float:
    """The value where the sorted weights reach half their total."""
    order = values.argsort()
    cumulative = weights[order].cumsum(0)
    return float(values[order][torch.searchsorted(cumulative, cumulative[-1] / 2).clamp_max(len(values) - 1)])
