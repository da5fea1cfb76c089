"""Names, defaults and ceilings of the engine's settings, in a module that imports nothing heavy.

The CLI builds its parser from these, so ``--help`` and argument errors answer without loading torch or
diffusers; the engine modules take them from here too (``plan.ORDERS``, ``bcla.MODES`` ... still work).
"""

from __future__ import annotations

from pathlib import Path

EMBEDDED_MODEL = Path(__file__).resolve().parent / "embedded" / "seamlab-sana"
"""The pack's embedded seam-lab model (a diffusers SANA pipeline folder)."""

ORDERS: tuple[str, ...] = ("raster", "serpentine", "spiral", "center_out", "random")
FITS: tuple[str, ...] = ("shift", "grow")
"""How tiles fit the canvas: ``shift`` keeps the requested tile size (edge tiles shift inward, so an
overlap on a canvas that is a multiple of the tile adds a row and a column of tiles); ``grow`` keeps
the tile count of the overlap-free grid and enlarges every tile just enough for the overlap, which
keeps the cells denoised per canvas cell near ((tile + overlap) / tile)²."""
DEFAULT_FIT = "grow"
"""The Tile Planner's and the CLI's fit, and the engine's: for the same tile size ``grow`` denoises the
fewest cells (no extra row and column of tiles when the canvas is a multiple of the tile)."""
MAX_SIDE = 16384
"""Largest canvas side in pixels (the Tile Planner's widgets and the CLI)."""
MAX_TILES = 1024
"""Default ceiling on a plan's tile count (a 16384² px canvas in 512 px tiles); each tile is a whole
sampling run, so beyond it a run takes hours. Raise it with ``max_tiles`` (node) / ``--max-tiles`` (CLI)."""
WARN_TILES = 256
"""Above this many tiles the CLI warns and the Tile Planner's summary says the run will be long."""

BCLA_MODES: tuple[str, ...] = ("cumulative", "neighbors", "sparse", "decay", "distance", "off")
BCLA_SOURCES: tuple[str, ...] = ("synchronous", "clean")
SAMPLER_NAMES: tuple[str, ...] = ("euler", "dpmpp_2m")
"""The engine's own flow samplers (``flow.SAMPLERS``)."""
METHODS: tuple[str, ...] = ("causal", "guided", "independent", "multidiffusion", "full")
GUIDE_UPSCALES: tuple[str, ...] = ("latent", "pixel")
"""How ``guided`` enlarges its whole-scene pass: bilinear in latent space, or decode, bicubic, encode."""
DEFAULT_METHOD = "guided"
"""Text to image: the whole scene at the model's size first, then causal tiles refined from it. On the
embedded model (512×256 px, 4×2 tiles, 3 prompts) it is the only method whose canvas keeps one layout
(one sun, one gradient: 27.9 dB against the whole-scene pass, native and causal 16 dB) with a line
jump near the native render's (3.70 vs 3.44, causal 3.93), in 0.19× MultiDiffusion 50 %'s time."""
DEFAULT_GUIDE_DENOISE = 0.3
"""Share of the schedule ``guided`` tiles run from the upscaled whole-scene pass: 0.3 keeps its layout
(0.5 let each tile paint its window's own gradient again: a pink band at the first row's bottom)."""
DEFAULT_GUIDE_STATS = 0.5
"""``guided``: per-tile mean/std alignment to the whole-scene pass (GlobalContext.stats); it removes
the colour band a tile paints at its window's bottom edge (line jump 1.85 → 1.71 on the sky prompt).
Also the default of causal's global context (see ``DEFAULT_GUIDE_SKIP_POWER``)."""
DEFAULT_GUIDE_SKIP_RESIDUAL = 1.0
"""``guided``: pull of each tile's low band (what the upscaled guide carries) toward the guide's, held at
this strength to the last step (``DEFAULT_GUIDE_SKIP_POWER`` 0). Why: per row, a guided canvas's mean L*
less the upscaled guide's is a sawtooth with the tile-row period (each tile paints its window lighter at
the top and darker at the bottom, ≈2.5 L* on the night sky), a step at every row; the per-tile statistics
pull matches one mean and std per tile, not a slope inside it. Measured with ``DEFAULT_GUIDE_HALO`` in
bench/results/enlargement.md."""
DEFAULT_GUIDE_SKIP_POWER = 0.0
"""``guided``: decay of that pull with σ; 0 = none (DemoFusion's 3 lets go in the last steps, just when
a tile paints its window's own top-to-bottom gradient).

These three pull defaults are also causal's global context's (``ContextSettings``, the Global Context
Encoder's widgets, the CLI's ``--context-*`` flags): a causal tile starts from noise and, unless pulled
to the last step, paints its window's own gradient (bands at the tile rows) and, with tile prompts, its
object where its words say in its own window rather than where the guide has it. Measured with tile
prompts (bench/results/causal_prompts*.md, 512×256 px, 4×2 tiles, 4 bench + 4 held-out prompts, two
models): the former causal default (no pull, BCLA seed only) was seamless on 2 of 8 embedded-model
canvases and drew more objects than the guide or lost the told ones; the held pull was seamless on 16/16,
layout 28-37 dB, objects above the guide's on 1 of 16 (a guide whose moon is not in the told tile);
DemoFusion's decaying pull (power 3) let bands and copies back. Without tile prompts the held pull makes
causal seamless (embedded 3/8 → 8/8) at +4 % CPU, but its repeated objects become smaller, not fewer."""
DEFAULT_GUIDE_HALO = 4
"""``guided``: latent cells of neighbouring canvas every tile is sampled with and then discards, so a
tile's window border (painted as an image border, the last 2-3 cells, finer than the pull's band) falls
outside what is kept. Measured with the held pull on the embedded model at 1024×512 px (6.4× the
whole-scene pass, bench/results/enlargement.md, 3 sky prompts): the horizontal seams' ΔE over the
tiles' own floor goes from +0.74/+0.68/+1.40 (no halo, no pull: two canvases "seams visible", rows
stepping by eye) to -0.15/-0.47/-0.23 (halo 2: +0.08/-0.42/+0.10; halo 4 alone: +0.15/0.00/+0.44; the
pull alone: +0.38/+0.21/+1.17), layout 29.9 → 31.8 dB, model work 0.15 → 0.25× MultiDiffusion 50 %. On
held-out prompts at 2.5×, 4× and 8× and on the position-embedding model every canvas is seamless (the
old default: 1/2 at 4× and 8×), layout ≥ 31.7 dB (docs/results/enlargement.md)."""
HALO_AUTO = -1
"""The Causal SANA Sampler's halo widget value for "the mode's own default" (``DEFAULT_GUIDE_HALO`` for
guided, 0 for the others): the engine's ``RunSettings.halo = None``."""
DEFAULT_GUIDE_MAX_UPSCALE = 4.0
"""``guided``: the largest enlargement (long side) from one canvas of the progressive chain to the next;
canvases up to 4× the whole-scene pass are refined in one step. With the halo and the held pull, on the
embedded model (bench/results/enlargement.md): at 12.8× (2048×1024 px) one step leaves a soft darker
band in every tile row, the chain's one intermediate canvas does not (tests/unit/verdict_cases:
guided_2048_sky_soft_bands.png, guided_2048_sky_chain.png); at 6.4× and 8× it keeps every canvas
seamless, layout 32.4 and 32.5 dB, line jump 1.02× and 0.98× native (one step: 1.04×, 0.99×), for 0.30×
MultiDiffusion 50 %'s model work instead of 0.25×."""
DEFAULT_GUIDE_BCLA_SEED = 1.0
"""``guided``: strength of the whole-scene pass's attention statistics in every tile's BCLA cache."""
DEFAULT_REFINE_BAND_SIGMA = 1.0
"""``guided`` with a guide of the canvas's size (a refine: the photo encoded at the output size): the pull
(skip residual and statistics) reads that guide itself, and acts on its band above a Gaussian of this σ
in latent cells (the band a 2× smaller guide would carry); finer detail is the model's to repaint. Before,
the pull read the copy shrunk to one tile for the BCLA seed pass (a 4× smaller photo at 1× on a 512 px
photo in 128 px tiles, 8× at 2×): it pulled every tile toward a blurred photo, and the model painted
grain over the blur. On the tuning photo (astronaut, docs/refine.md) mean ΔE2000 to the input 5.86 →
5.39 at 1× and 4.06 → 3.67 at 2×, SSIM 0.617 → 0.648 and 0.745 → 0.780 (independent tiles + feather:
5.51 / 0.629 and 3.73 / 0.761); σ = 1.5 cells scored 5.67 / 0.630 at 1×, pulling the shrunk copy's band
from the whole-size guide 5.76 / 0.625, no pull at all 5.61 / 0.618."""

DEFAULT_STITCH = "feather"
"""Seam Blender method: on real photographs feather scores with Laplacian and Poisson within 0.1 dB and
is the fastest (bench/results/photos.md)."""
DEFAULT_RAMP = "cosine"
"""Shape of the feather weights across an overlap: cosine has no kink where the ramp meets the tile."""

DEFAULT_LOCK_FEATHER = 2
"""Cells of known content, next to the lock edge, that the new tile may still blend into."""
DEFAULT_LOCK_MARGIN = 1
"""Outermost cells of each earlier tile that a new tile regenerates instead of locking. Measured on
the embedded model (512×256 px, 4×2 tiles, 3 prompts): 1 removes the line at the earlier tile's
window edge (worst inner line over the median line 5.29 → 4.43 on average; native render 4.76); 2
scored 4.62."""
DEFAULT_LOCK_RELEASE = 0.0
"""Share of the lock released by σ = 0 (:class:`LockRelease`); set from bench/results/quality.md."""
DEFAULT_RELEASE_BAND = 0
"""Cells of the overlap next to the new area that the release applies to (0 = the whole overlap)."""
DEFAULT_RESAMPLE_SIGMA = 0.5
"""Border resampling acts at noise levels σ ≤ this: the late steps, once the layout is set."""
DEFAULT_RESAMPLE_BAND = 4
"""Cells on each side of the lock edge that border resampling repeats (one overlap of the quick start)."""

DEFAULT_WORD_THRESHOLD = 0.5
"""Automatic tile prompts: a word's region is where its whole-scene cross-attention rises this share of
the way from its lowest value to its peak (``word_maps.tile_words``). Of the measured 0.5 and 0.7
(bench/results/tile_prompts_automatic*.md, guided at guide denoise 0.7, 7 prompts, 3 held out) 0.7 left
fewer prompts with more objects than the guide on the embedded model (2/7 against 4/7; without tile
prompts 5/7), but the tiles it leaves a few words ("blue pink sky", "to") paint a blotchy sky; 0.5 keeps
the scene's words in every tile and the texture of the run without tile prompts (docs/tile_prompts.md)."""

DEFAULT_WORD_SIGMA = 0.9
"""Automatic tile prompts: the tile that paints an object hears the object's words at noise levels
σ ≥ this, and every tile the words all tiles keep below it (``word_maps``); 0 = at every step (the
rule before this gate). Chosen on the 4 tuning prompts of bench/results/tile_prompts_automatic_gate*.md
(guided 0.7 and causal, two models, gates 0, 0.3, 0.5, 0.7, 0.9, 1.0): objects over the guide, summed
over both modes and models, 21 at every step, 7 at 0.5, 6 at 0.7, 4 at 0.9; the layout PSNR rose with
the gate, seams stayed seamless. 1.0 (guided never reaches σ = 0.9 and hears as at 0.9; causal hears
the words at its first step only) drew 3, one speck fewer on the prompt whose guide has no object; 0.9
keeps causal's first steps, where a tile without a strong pull toward the guide places the object.
Held out (3 prompts, same modes and models): objects over the guide 25 at every step, 17 at 0.9; prompts
with more than the guide 8/12 both; layout PSNR +0.8 to +1.3 dB; seamless 7/7 (docs/tile_prompts.md)."""

DEFAULT_WORD_QUIET = 1.2
"""Automatic tile prompts: a word whose whole-scene cross-attention peaks under this multiple of the
average word's attention names nothing the scene shows, and no tile keeps it (``word_maps.quiet_words``);
0 = every word counts (the rule before). Chosen on the 4 tuning prompts of
bench/results/tile_prompts_automatic_quiet_tuning*.md (causal and guided 0.7, two models, 1.0, 1.2, 1.4):
objects over the guide, summed, 4 without the rule and 1 at each (the embedded tree prompt, whose guide
has no tree: a dozen specks without it, none with it); 1.2 is the largest that drops no word of the
scene ("sky" peaks at 1.29 on one of them, so 1.4 drops it). Held out (3 prompts, same modes and models,
bench/results/tile_prompts_automatic_quiet*.md): objects over the guide 17 → 7, runs with more than the
guide 8/12 → 5/12, layout PSNR +0.1 to +3.1 dB, seamless 7/7 (docs/tile_prompts.md)."""

DEFAULT_TILE_PROMPT_SIGMA = 0.5
"""Tile prompts: a tile hears its own words at noise levels σ ≥ this and the run's prompt below it;
0 = at every step. Of 0 (every step), 0.5 and 0.7 (bench/results/tile_prompts*.md, two models), 0.5 kept
or improved every seam verdict (the position-embedding model's one seam of a tile's words is gone),
drew no more objects than every-step tile prompts and raised the layout PSNR in every row (guided 0.7:
+1.0 and +2.1 dB); it lost one told object (embedded model, causal, 1 of 8 canvases; guided none), 0.7
lost two (docs/tile_prompts.md)."""
