"""Choosing the best BCLA configuration on the tuning pairs (never on the held-out pairs)."""

from __future__ import annotations

import time

from .measure import rank_score
from .session import Bench
from .specs import RELEASES, Spec, bcla_grid, named


def tune(bench: Bench, canvases: list[str], deadline: float) -> tuple[Spec, list[dict]]:
    """Pick the best BCLA configuration on the tuning pairs (rank sum over both canvases)."""
    trail: list[dict] = []

    def best_of(candidates: list[Spec], stage: str) -> Spec:
        rows = {s.key: s for s in candidates}
        candidates = list(rows.values())
        summaries = {cv: [bench.get(cv, s)["summary"] for s in candidates] for cv in canvases}
        score = [0.0] * len(candidates)
        for cv in canvases:
            for i, v in enumerate(rank_score(summaries[cv])):
                score[i] += v
        for i, s in enumerate(candidates):
            trail.append({"stage": stage, "name": s.name, "rank_score": score[i]})
        return candidates[min(range(len(candidates)), key=lambda i: score[i])]

    best = best_of(bcla_grid(), "mode × source")
    if time.perf_counter() < deadline:
        best = best_of(
            [best]
            + [named(best, strength=a) for a in (0.5, 2.0)]
            + [named(best, feather=f) for f in (0, 1, 3)]
            + [named(best, **release) for release in RELEASES]
            + [named(best, record_locked=False)],
            "strength / feather / lock release / recorded tokens",
        )
    if time.perf_counter() < deadline:
        best = best_of(
            [
                best,
                named(best, skip=0.5),
                named(best, stats=0.5),
                named(best, seed=1.0),
                named(best, skip=0.5, seed=1.0),
            ],
            "global context",
        )
    return best, trail
