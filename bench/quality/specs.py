"""What the quality benchmark runs: the canvases, the method specs, and the plan of each."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

from temporal_tiling.options import DEFAULT_LOCK_FEATHER
from temporal_tiling.plan import TilePlan, make_plan

TILE_CELLS = 8
"""Tile side in latent cells: the embedded model's training size (64 px at 8× compression)."""
OVERLAP_CELLS = 2
"""25 % overlap: the causal, independent and MultiDiffusion-25 % plans."""
MD50_CELLS = 4
CANVASES = {"grid 4×4": (4, 4), "panorama 8×1": (8, 1)}
"""name -> (cols, rows) of the 25 % plan; the canvas size in px follows from it."""
MODES = ("cumulative", "neighbors", "sparse", "decay", "distance")
SOURCES = ("synchronous", "clean")


@dataclass(frozen=True)
class Spec:
    """One method/configuration. Fields other than ``name`` define what runs (and dedupe runs)."""

    name: str
    kind: str
    """The pipeline's method: full | independent | multidiffusion | causal | guided."""
    overlap: int = OVERLAP_CELLS
    mode: str = "off"
    source: str = "synchronous"
    strength: float = 1.0
    strength_end: float | None = None
    """BCLAConfig.strength_end: α at σ = 0 (linear in σ from ``strength``); None = constant α."""
    feather: int = DEFAULT_LOCK_FEATHER
    order: str = "raster"
    lock_end: float = 1.0
    """Lock weight at σ = 0 (LockRelease.end; 1 = constant lock): < 1 averages old and new content late."""
    release_band: int = 0
    """LockRelease.band: release only known cells this close to the new cells (0 = all known cells)."""
    decay: float = 0.5
    """BCLAConfig.decay (modes decay and distance)."""
    record_locked: bool = True
    lock: bool = True
    """False: every tile denoises its whole window (all-ones denoise mask), nothing is kept."""
    zero_cache: bool = False
    """Zero the BCLA cache before every tile (the processors still add it: an all-zero cache)."""
    skip: float = 0.0
    stats: float = 0.0
    seed: float = 0.0
    """Global context's bcla_seed strength."""
    seed_sigma: float = 0.0
    """Noise level of the bcla_seed pass (0 = every level of the schedule, the pack's default)."""
    lora: bool = False

    @property
    def key(self) -> tuple:
        return dataclasses.astuple(replace(self, name=""))

    @property
    def has_context(self) -> bool:
        return self.skip > 0 or self.stats > 0 or self.seed > 0

    def describe(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}


def bcla_label(spec: Spec) -> str:
    parts = [f"BCLA {spec.mode}/{spec.source}"]
    if spec.strength_end is not None:
        parts.append(f"α {spec.strength:g}→{spec.strength_end:g}")
    elif spec.strength != 1:
        parts.append(f"α={spec.strength:g}")
    if spec.feather != DEFAULT_LOCK_FEATHER:
        parts.append(f"feather {spec.feather}")
    if spec.order != "raster":
        parts.append(spec.order)
    if spec.mode in ("decay", "distance") and spec.decay != 0.5:
        parts.append(f"decay {spec.decay:g}")
    if not spec.record_locked:
        parts.append("new tokens only")
    if spec.lock_end != 1:
        band = f" in {spec.release_band} cells" if spec.release_band else ""
        parts.append(f"lock→{spec.lock_end:g}{band}")
    ctx = [f"{n} {v:g}" for n, v in (("skip", spec.skip), ("stats", spec.stats), ("seed", spec.seed)) if v]
    if spec.seed and spec.seed_sigma:
        ctx[-1] += f" at σ {spec.seed_sigma:g}"
    if ctx:
        parts.append("ctx " + ", ".join(ctx))
    if spec.lora:
        parts.append("+ LoRA")
    return " · ".join(parts)


def named(spec: Spec, **changes) -> Spec:
    """``spec`` with ``changes``, named after its BCLA configuration."""
    s = replace(spec, **changes)
    return replace(s, name=bcla_label(s))


FULL = Spec("native full canvas (reference)", "full")
LORA_FULL = Spec("native full canvas, LoRA model", "full", lora=True)
BASELINES = (
    Spec("independent tiles", "independent"),
    Spec("MultiDiffusion 25 %", "multidiffusion"),
    Spec("MultiDiffusion 50 %", "multidiffusion", overlap=MD50_CELLS),
    Spec("causal lock, BCLA off", "causal"),
)
PACK_DEFAULT = named(Spec("", "causal"), mode="cumulative")
"""The Causal SANA Sampler + BCLA Cache defaults before issue 8: the levers start from here."""
NEW_DEFAULT = named(PACK_DEFAULT, seed=1.0)
"""What the pack gives now: the same sampler and cache, plus the Global Context Encoder's defaults."""
GUIDED = Spec("guided (pack default)", "guided", mode="cumulative")
"""The pack's text-to-image default: the whole scene in one tile-sized pass, then causal tiles with a
cumulative BCLA cache refined from it (GuideFirst's defaults: denoise 0.3, statistics 0.5, BCLA seed 1)."""
RELEASES = ({"lock_end": 0.5}, {"lock_end": 0.75}, {"lock_end": 0.5, "release_band": 1})
"""Lock releases tried: half or a quarter of the lock over the whole overlap, half next to the edge."""


def bcla_grid() -> list[Spec]:
    """Every BCLA mode × statistics source on the causal loop."""
    return [named(Spec("", "causal"), mode=mode, source=source) for mode in MODES for source in SOURCES]


def levers(best: Spec, lora: bool) -> list[tuple[str, Spec]]:
    """Issue 8's levers, each varied alone from the pack's former default, then combined."""
    base = PACK_DEFAULT
    out = [("lock feather (cells)", named(base, feather=f)) for f in (0, 1, 2, 3)]
    out += [("lock release", base)] + [("lock release", named(base, **r)) for r in RELEASES]
    out += [("cache content", named(base, mode=m)) for m in ("cumulative", "neighbors", "sparse", "decay")]
    out += [("cache content", named(base, mode="distance", decay=d)) for d in (0.5, 0.25)]
    out += [
        ("cache content", named(base, record_locked=False)),
        ("cache content", named(base, source="clean")),
        ("cache content", named(base, mode="off")),
    ]
    out += [("BCLA strength α", named(base, strength=a)) for a in (0.5, 1.0, 2.0)]
    out += [("BCLA strength α", named(base, strength=a, strength_end=b)) for a, b in ((2.0, 0.0), (0.0, 2.0))]
    out += [("global context", base)] + [
        ("global context", named(base, **ctx))
        for ctx in ({"skip": 0.5}, {"stats": 0.5}, {"seed": 1.0}, {"seed": 1.0, "seed_sigma": 0.5})
    ]
    out += [
        ("order", named(base, order=o)) for o in ("raster", "serpentine", "spiral", "center_out", "random")
    ]
    if lora:
        out += [
            ("temporal LoRA", named(base, lora=True)),
            ("temporal LoRA", named(base, order="serpentine", lora=True)),
        ]
    out += [("combination (tuned)", best)]
    if lora:
        out += [("combination (tuned)", named(best, lora=True))]
    return out


def canvas_px(name: str, compression: int) -> tuple[int, int]:
    """(width, height) in px of canvas ``name`` on the 25 % plan."""
    cols, rows = CANVASES[name]
    stride = TILE_CELLS - OVERLAP_CELLS
    return (TILE_CELLS + (cols - 1) * stride) * compression, (TILE_CELLS + (rows - 1) * stride) * compression


def plan_for(name: str, spec: Spec, compression: int) -> TilePlan:
    width, height = canvas_px(name, compression)
    tile = TILE_CELLS * compression
    return make_plan(
        width_px=width,
        height_px=height,
        tile_width_px=tile,
        tile_height_px=tile,
        overlap_px=spec.overlap * compression,
        compression=compression,
        order=spec.order,
        seed=0,
        fit="shift",
    )
