"""One run: a plan, a method and its options, through a host that owns the model.

:func:`run` is the only place that turns a method name into tile loops: the Causal SANA Sampler node
(ComfyUI's samplers as the host), the CLI and the benchmarks (:class:`FlowHost`, the engine's flow
sampler, through :func:`generate`) all call it. Methods:

* ``causal``: tiles one after another, earlier content locked, a BCLA cache if configured, an
  optional global context (a whole-scene guide and how strongly the tiles follow it);
* ``guided``: causal tiles refined from a guide, the whole scene at any size with the canvas's aspect:
  the run's own whole-scene pass at the model's size (text to image), or the input latent (a photo,
  an img2img canvas: refine). The guide is enlarged to the canvas as the tiles' start, seeds every
  tile's BCLA cache and pulls each tile's statistics toward it;
* ``independent``: every tile on its own, overlaps averaged (baseline);
* ``multidiffusion``: one sampler over the canvas, every model call averaged over the tiles;
* ``full``: one pass over the whole canvas (the no-tiling reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from .bcla import BCLACache, BCLAConfig, install_bcla
from .border_resample import BorderResample
from .context import ContextError, ContextSettings, GlobalContext, guide_size, resize_latent
from .contracts import Host, TileCache, TileJob
from .flow import CFGDenoiser, flow_sigmas, sample_tile, sigma_switch
from .options import (
    DEFAULT_GUIDE_BCLA_SEED,
    DEFAULT_GUIDE_DENOISE,
    DEFAULT_GUIDE_HALO,
    DEFAULT_GUIDE_MAX_UPSCALE,
    DEFAULT_GUIDE_SKIP_POWER,
    DEFAULT_GUIDE_SKIP_RESIDUAL,
    DEFAULT_GUIDE_STATS,
    DEFAULT_LOCK_FEATHER,
    DEFAULT_LOCK_MARGIN,
    DEFAULT_METHOD,
    DEFAULT_REFINE_BAND_SIGMA,
    DEFAULT_TILE_PROMPT_SIGMA,
    METHODS,
)
from .plan import Tile, TilePlan, make_plan
from .position import has_canvas_positions, patch_size
from .sampling import (
    CLEAN_SIGMA,
    CanvasResult,
    LockRelease,
    SamplingError,
    canvas_noise,
    multidiffusion_denoiser,
    sample_causal,
    sample_independent,
    start_canvas,
)
from .seam_refine import SeamRefine, refine_seams, refine_steps_total
from .tile_prompts import TILE_PROMPT_METHODS
from .word_maps import WORD_MAP_SIGMA, AutoTilePrompts, automatic_tile_prompts, cross_attention

CAUSAL_METHODS = ("causal", "guided")
"""Methods that run the causal tile loop (and so can use a BCLA cache)."""

Upscale = Callable[[Tensor, int, int], Tensor]
"""``(guide latent [B,C,h,w], canvas height, canvas width in cells) -> canvas latent [B,C,H,W]``, a new
tensor (the tiles are painted over it)."""


def latent_upscale(guide: Tensor, height: int, width: int) -> Tensor:
    """Bilinear enlargement in latent space: no VAE round trip."""
    return F.interpolate(guide, size=(height, width), mode="bilinear", align_corners=False)


def pixel_upscale(
    decode: Callable[[Tensor], Tensor], encode: Callable[[Tensor], Tensor], compression: int
) -> Upscale:
    """Enlargement in pixel space: decode, bicubic resize, re-encode (``decode``/``encode`` map
    latents to [B,3,H,W] images in [0, 1] and back), so the autoencoder makes the new detail."""

    def upscale(guide: Tensor, height: int, width: int) -> Tensor:
        size = (height * compression, width * compression)
        image = F.interpolate(decode(guide).float(), size=size, mode="bicubic", align_corners=False)
        return encode(image.clamp(0, 1)).to(guide)

    return upscale


@dataclass(frozen=True)
class GuideFirst:
    """Settings of ``method="guided"``: the whole scene in one pass first, then causal tiles from it.

    A tile without position embedding paints its window as a whole picture (the second tile row
    repaints the sky's top); starting every tile from the upscaled whole-scene pass at partial
    denoise gives the canvas one layout, and the guide's attention statistics seed the BCLA cache.
    """

    long_side: int | None = None
    """Long side of the whole-scene pass in px; None = the plan's tile long side (the model's size)."""
    denoise: float = DEFAULT_GUIDE_DENOISE
    """Share of the schedule the tiles run from the upscaled guide (1 = from noise, guide unused)."""
    skip_residual: float = DEFAULT_GUIDE_SKIP_RESIDUAL
    """Pull of each tile's low band toward the guide's (GlobalContext.skip_residual)."""
    skip_power: float = DEFAULT_GUIDE_SKIP_POWER
    """Decay of that pull with σ (GlobalContext.skip_power): 3 = DemoFusion's, early steps only; 0 = held
    to the last step."""
    stats: float = DEFAULT_GUIDE_STATS
    """Per-tile mean/std alignment to the guide (GlobalContext.stats)."""
    bcla_seed: float = DEFAULT_GUIDE_BCLA_SEED
    """Strength of the guide's attention statistics in every tile's BCLA cache (needs a cache)."""
    refine_band_sigma: float = DEFAULT_REFINE_BAND_SIGMA
    """A guide of the canvas's size (a refine): the pull reads it whole and acts on its band above a
    Gaussian of this σ in cells (:attr:`GlobalContext.band_sigma`); smaller guides: their own band."""
    upscale: Upscale | None = None
    """How the guide is enlarged to the canvas; None = :func:`latent_upscale`."""
    tile_steps: int | None = None
    """Sampler steps of each tile; None = :meth:`steps_per_tile` of the run's steps."""
    max_upscale: float | None = DEFAULT_GUIDE_MAX_UPSCALE
    """DemoFusion's progressive chain: the largest enlargement (long side) from one level to the next;
    intermediate canvases, each refined from the one before like the final canvas, are inserted until
    every step is at most this (2 gives 1× → 2× → 4× ...). None = one step from the guide to the canvas."""
    margin: int = 0
    """Latent cells the whole-scene pass renders beyond each side and crops off (:func:`render_guide`), so
    the guide's edge is interior content, not the model's border treatment enlarged over ``factor``
    canvas cells. Off by default: with ``edge_release`` it removes the edge hatch on the position-embedding
    model but raises the embedded model's line jump in the outermost two cells
    (docs/enlargement_lines.md, "Margin on the whole-scene pass")."""
    edge_release: float = 0.0
    """Guide cells at the canvas edge over which the pull is released (GlobalContext.edge_release)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.denoise <= 1.0:
            raise SamplingError(
                f"guide denoise must be in (0, 1] (the default {DEFAULT_GUIDE_DENOISE} keeps the layout), "
                f"got {self.denoise}."
            )
        if self.max_upscale is not None and not self.max_upscale > 1.0:
            raise SamplingError(f"max_upscale must be above 1 (None: one step), got {self.max_upscale}.")
        if self.margin < 0:
            raise SamplingError(f"guide margin must be ≥ 0 latent cells (0: none), got {self.margin}.")
        if self.tile_steps is not None and self.tile_steps < 1:
            raise SamplingError(f"guided tile steps must be ≥ 1 (None: the default), got {self.tile_steps}.")

    def steps_per_tile(self, steps: int) -> int:
        """Steps each tile runs when the whole-scene pass ran ``steps``: by default ``steps × denoise``
        (rounded), the guide's own step size over the last ``denoise`` share of the schedule (its very
        levels when ``steps × denoise`` is whole), instead of cutting that share into ``steps`` finer
        steps as ComfyUI's denoise does (3.3× the model calls at denoise 0.3)."""
        return self.tile_steps or max(1, round(steps * self.denoise))


def guide_plan(plan: TilePlan, long_side: int | None = None, patch: int = 1) -> TilePlan:
    """One tile of the whole scene with the canvas's aspect, ``long_side`` px (default: the tile's),
    in whole ``patch``-cell tokens."""
    long_side = long_side or max(plan.tile_width_px, plan.tile_height_px)
    height, width = guide_size(plan, long_side, patch)
    return make_plan(
        width_px=width,
        height_px=height,
        tile_width_px=width,
        tile_height_px=height,
        overlap_px=0,
        compression=plan.compression,
    )


def guide_levels(
    plan: TilePlan, options: GuideFirst, patch: int = 1, start: tuple[int, int] | None = None
) -> list[TilePlan]:
    """The intermediate canvases of the progressive chain from the guide (``start`` = its (height, width)
    in cells; None = :func:`guide_plan`'s) to ``plan``, smallest first, their long sides spaced evenly in
    log scale (empty: the guide is enlarged in one step). They keep the plan's tile size (smaller where
    a level is), overlap and order, in whole ``patch``-cell tokens."""
    if start is None:
        small = guide_plan(plan, options.long_side, patch)
        start = (small.canvas_height, small.canvas_width)
    c = plan.compression
    start_side = max(start) * c
    ratio = max(plan.width_px, plan.height_px) / start_side
    if options.max_upscale is None or ratio <= options.max_upscale:
        return []
    count = math.ceil(math.log(ratio) / math.log(options.max_upscale)) - 1
    levels = []
    for level in range(1, count + 1):
        long_side = round(start_side * ratio ** (level / (count + 1)))
        height, width = guide_size(plan, long_side, patch)
        tile_height, tile_width = min(plan.tile_height_px, height), min(plan.tile_width_px, width)
        overlap = min(plan.overlap, tile_height // c - 1, tile_width // c - 1) * c
        levels.append(
            make_plan(
                width_px=width,
                height_px=height,
                tile_width_px=tile_width,
                tile_height_px=tile_height,
                overlap_px=overlap,
                compression=c,
                order=plan.order,
                seed=plan.seed,
                fit="shift",
            )
        )
    return levels


@dataclass(frozen=True)
class RunSettings:
    """What to run on a plan; every method's options, checked together before the model runs."""

    method: str = DEFAULT_METHOD
    seed: int = 0
    """Seed of the one canvas noise (and of the guide pass's noise for ``guided``)."""
    denoise: float = 1.0
    """Share of the schedule to run from ``latent`` (below 1 needs an input latent); ``guided`` runs
    :attr:`GuideFirst.denoise` from its guide instead."""
    lock_feather: int = DEFAULT_LOCK_FEATHER
    lock_margin: int = DEFAULT_LOCK_MARGIN
    lock_release: LockRelease | None = None
    cache_config: BCLAConfig | None = None
    """A BCLA cache for the causal methods; None = tiles see each other through the lock only."""
    context: ContextSettings | None = None
    """A global context for ``causal``."""
    guide_first: GuideFirst | None = None
    """Options of ``guided``; None = the defaults."""
    halo: int | None = None
    """Cells of neighbouring canvas each tile is sampled with and then discards (not ``full``); None = the
    method's default, :attr:`tile_halo`."""
    seam_refine: SeamRefine | None = None
    """A low-denoise pass over bands across every tile border once the canvas is done; None = off."""
    border_resample: BorderResample | None = None
    """RePaint-style resampling near the lock edge in the late steps (causal methods); None = off."""
    tile_prompts: Mapping[int, object] | None = None
    """Tile prompts: the positive conditioning of tiles by plan index, in the host's form
    (:attr:`TileJob.prompt`); other tiles, the whole-scene pass, the progressive chain's levels and the
    seam refine use the run's prompt. Tiled methods that sample tile by tile only."""
    tile_prompt_sigma: float = DEFAULT_TILE_PROMPT_SIGMA
    """Tile prompts are heard at noise levels σ ≥ this, :attr:`tile_scene_prompt` below it (0: at every
    step); in [0, 1]. See :attr:`TileJob.prompt_sigma`. Automatic tile prompts have their own gate,
    :attr:`AutoTilePrompts.sigma`, which replaces this one."""
    tile_scene_prompt: object | None = None
    """What every tile hears below :attr:`tile_prompt_sigma` (:attr:`TileJob.scene_prompt`), in the host's
    form; None = the run's prompt. Set by the run path from :attr:`auto_tile_prompts`."""
    guide_prompt: object | None = None
    """The positive conditioning of ``guided``'s whole-scene pass, in the host's form; None = the run's
    prompt. With tile prompts the whole scene should hear every tile's words
    (:func:`tile_prompts.whole_scene_text`), so its layout holds the objects the tiles then refine."""
    auto_tile_prompts: AutoTilePrompts | None = None
    """Automatic tile prompts (:mod:`word_maps`): each tile drops the words of the run's prompt whose
    cross-attention on the whole scene lies outside it. The whole scene is ``guided``'s guide (its
    whole-scene pass or the given latent), else the global context's guide, else the input latent that
    ``denoise`` < 1 refines, else a whole-scene pass of its own; one model call on it, at the whole-scene
    pass's size. Instead of ``tile_prompts``."""

    def __post_init__(self) -> None:
        method = self.method
        if method not in METHODS:
            raise SamplingError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
        if self.context is not None and method != "causal":
            hint = " (it renders its own guide)" if method == "guided" else ""
            raise SamplingError(f"A global context is only used by method='causal', not {method!r}{hint}.")
        if self.guide_first is not None and method != "guided":
            raise SamplingError(f"guide_first is only used by method='guided', not {method!r}.")
        if self.tile_halo < 0 or (self.tile_halo > 0 and method == "full"):
            raise SamplingError(
                f"halo must be ≥ 0 cells, and 0 for method='full' (no tiles); got {self.halo}."
            )
        if self.border_resample is not None and method not in CAUSAL_METHODS:
            raise SamplingError(
                f"border_resample acts on the lock edge of the causal methods ({', '.join(CAUSAL_METHODS)}); "
                f"method={method!r} has none: leave it off (None)."
            )
        if (self.tile_prompts or self.auto_tile_prompts) and method not in TILE_PROMPT_METHODS:
            raise SamplingError(
                f"Tile prompts need a method that samples tile by tile ({', '.join(TILE_PROMPT_METHODS)}), "
                f"not {method!r}: pick one of those or leave the tile prompts out."
            )
        if not 0.0 <= self.tile_prompt_sigma <= 1.0:
            raise SamplingError(
                f"tile_prompt_sigma is a noise level in [0, 1] (0: tile prompts at every step); got "
                f"{self.tile_prompt_sigma}."
            )
        if self.tile_prompts and self.auto_tile_prompts:
            raise SamplingError(
                "Give tile prompts or automatic tile prompts, not both: automatic ones replace the others."
            )
        if method == "guided" and self.guide.bcla_seed > 0 and self.cache_config is None:
            raise SamplingError(
                "A guide's bcla_seed > 0 seeds the BCLA cache; give a BCLA cache or set it to 0."
            )

    @property
    def guide(self) -> GuideFirst:
        """The ``guided`` options; by default the guide seeds the BCLA cache when the run has one."""
        return self.guide_first or GuideFirst(bcla_seed=DEFAULT_GUIDE_BCLA_SEED if self.cache_config else 0.0)

    @property
    def tile_halo(self) -> int:
        """The halo the tiles run with: ``halo``, or by default ``DEFAULT_GUIDE_HALO`` for ``guided`` (its
        tiles' window borders would otherwise step at every tile row of an enlarged guide) and 0 for the
        other methods. A guided run whose guide already has the canvas's size (a refine: the picture
        encoded at the output size) runs its tiles with no default halo: nothing was enlarged, and on
        real photos (bench/results/refine_photos.md, held-out photos at 1× and 2×) halo 0 kept every
        verdict and the line jump, lowered ΔE to the input on every run and cost 1.0× independent tiles'
        CPU time instead of 1.7–2.1×."""
        if self.halo is not None:
            return self.halo
        return DEFAULT_GUIDE_HALO if self.method == "guided" else 0


def run(
    plan: TilePlan,
    host: Host,
    settings: RunSettings,
    shape: tuple[int, int],
    *,
    device: torch.device | str = "cpu",
    latent: Tensor | None = None,
    noise: Tensor | None = None,
    canvas_only: bool = False,
) -> CanvasResult:
    """Generate a latent canvas: ``shape`` = (batch, latent channels); ``latent`` for img2img.

    For ``guided``, ``latent`` is the guide to refine (any size with the canvas's aspect: a photo or
    an earlier canvas, enlarged to the canvas if smaller); without one the run renders the whole scene
    at the model's size first. The canvas noise is drawn on CPU from ``settings.seed`` (as ComfyUI's
    ``prepare_noise`` does) and moved to ``device``, unless ``noise`` [B,C,H,W] is given (e.g. one seed
    per batch item). A BCLA cache is attached to the host for the whole run and detached after.

    ``canvas_only``: for a caller that needs the canvas alone (the refine): the result's ``tiles`` and
    ``guide`` are None, and the run may paint the canvas over ``latent`` in place, so the caller must
    not read ``latent`` afterwards. That saves the per-tile latents (1.4× the canvas at 512/64 px
    tiles) and, except for ``guided`` with a guide of the canvas's size (its tiles are pulled toward
    that latent, which must stay as given), a canvas-sized copy of the latent; the canvas is the same.
    """
    if settings.denoise < 1 and latent is None and settings.method != "guided":
        raise SamplingError(
            f"denoise = {settings.denoise} needs an input latent; give one or use denoise = 1."
        )
    if settings.tile_prompts and not all(0 <= i < len(plan) for i in settings.tile_prompts):
        raise SamplingError(
            f"Tile prompts name tiles {sorted(settings.tile_prompts)}; the plan has tiles 0 to "
            f"{len(plan) - 1}."
        )
    batch, channels = shape
    if noise is None:
        noise = canvas_noise(settings.seed, (batch, channels, plan.canvas_height, plan.canvas_width))
    noise = noise.to(device)
    latent = None if latent is None else latent.to(device, noise.dtype)
    with torch.no_grad():
        guide = None
        if settings.method == "guided":
            guide = latent
            if guide is None:
                options = settings.guide
                guide = render_guide(
                    plan, host, options.long_side, settings.seed, noise, settings.guide_prompt, options.margin
                )
            else:
                _check_guide_shape(plan, guide, tuple(noise.shape[:2]))
            latent = None
        if settings.auto_tile_prompts is not None:
            scene = guide if guide is not None else _scene(plan, host, settings, noise, latent)
            tile_prompts, scene_prompt = _automatic(plan, host, settings, scene)
            # below the σ gate every tile hears the words all tiles keep, not the run's (whole) prompt
            gate = settings.auto_tile_prompts.sigma
            settings = replace(
                settings,
                tile_prompts=tile_prompts,
                auto_tile_prompts=None,
                tile_scene_prompt=scene_prompt,
                tile_prompt_sigma=gate,
            )
        if guide is not None:
            guide = _progressive_chain(plan, host, settings, noise, guide)
        result = _with_cache(plan, host, settings, noise, latent, guide, canvas_only)
        if settings.seam_refine is not None:
            result.canvas = refine_seams(plan, host, result.canvas, noise, settings.seam_refine)
        return result


def _scene(plan: TilePlan, host: Host, settings: RunSettings, noise: Tensor, latent: Tensor | None) -> Tensor:
    """The whole scene automatic tile prompts read outside ``guided``: the global context's guide, else
    the input latent that denoise < 1 refines, else a whole-scene pass of the run's prompt."""
    if _renders_scene(settings):
        return render_guide(plan, host, settings.guide.long_side, settings.seed, noise)
    return latent if settings.context is None else settings.context.guide.to(noise)


def _renders_scene(settings: RunSettings) -> bool:
    """Whether a method other than ``guided`` renders a whole-scene pass for automatic tile prompts."""
    return (
        settings.auto_tile_prompts is not None
        and settings.method != "guided"
        and settings.context is None
        and settings.denoise >= 1
    )


def _automatic(
    plan: TilePlan, host: Host, settings: RunSettings, scene: Tensor
) -> tuple[Mapping[int, object], object | None]:
    """Automatic tile prompts and their scene prompt (:func:`automatic_tile_prompts`) from one model call
    on ``scene`` at the whole-scene pass's size."""
    small = guide_plan(plan, settings.guide.long_side, host.patch_size)
    scene = resize_latent(scene[:1], small.canvas_height, small.canvas_width)  # batch item 0's
    noise = canvas_noise(settings.seed, tuple(scene.shape)).to(scene)
    attention = host.cross_attention(scene, noise, WORD_MAP_SIGMA, settings.auto_tile_prompts.prompt)
    grid = (small.canvas_height // host.patch_size, small.canvas_width // host.patch_size)
    return automatic_tile_prompts(plan, attention, grid, settings.auto_tile_prompts)


def _progressive_chain(
    plan: TilePlan, host: Host, settings: RunSettings, noise: Tensor, guide: Tensor
) -> Tensor:
    """Each level of the progressive chain refined from the one before, from ``guide``."""
    start = (guide.shape[-2], guide.shape[-1])
    # tile indices name the final plan's tiles; the levels hear the run's prompt
    settings = replace(settings, tile_prompts=None, tile_scene_prompt=None)
    for level in guide_levels(plan, settings.guide, host.patch_size, start):
        shape = (*noise.shape[:2], level.canvas_height, level.canvas_width)
        level_noise = canvas_noise(settings.seed, shape).to(noise)
        guide = _with_cache(level, host, settings, level_noise, None, guide, canvas_only=True).canvas
    return guide


def _with_cache(
    plan: TilePlan,
    host: Host,
    settings: RunSettings,
    noise: Tensor,
    latent: Tensor | None,
    guide: Tensor | None,
    canvas_only: bool = False,
) -> CanvasResult:
    """:func:`_run` with a BCLA cache of ``plan`` attached to the host for its duration (a positions-only
    one on models whose position encoding follows the canvas when no BCLA is asked for)."""
    cache = None
    if settings.method in CAUSAL_METHODS:
        config = settings.cache_config or (POSITIONS_ONLY if host.canvas_positions else None)
        if config is not None:
            cache = BCLACache(config, plan)
            host.attach_cache(cache)
    try:
        return _run(plan, host, settings, noise, latent, cache, guide, canvas_only)
    finally:
        if cache is not None:
            host.detach_cache()


POSITIONS_ONLY = BCLAConfig(strength=0.0)
"""A BCLA cache that shares nothing between tiles (α = 0) but still tells the position patches where
the active tile sits on the canvas: without it a PE model paints every tile as an image at (0, 0)."""


def _run(
    plan: TilePlan,
    host: Host,
    settings: RunSettings,
    noise: Tensor,
    latent: Tensor | None,
    cache: TileCache | None,
    guide: Tensor | None,
    canvas_only: bool = False,
) -> CanvasResult:
    """The method dispatch: which tile loop runs, with which start, context and cache (``guide``: the
    whole-scene pass ``guided`` refines, or the chain's previous level; ``canvas_only``: see :func:`run`)."""
    method, denoise, context = settings.method, settings.denoise, settings.context
    steps, halo = None, settings.tile_halo  # the host's steps
    overwrite = canvas_only  # the causal loop may paint over ``latent``
    if method == "guided":
        options = settings.guide
        size = (plan.canvas_height, plan.canvas_width)
        scene = _whole_scene(plan, guide, options.long_side, host.patch_size)
        pulled, band = scene, 0.0
        if guide.shape[-2:] == size:
            # a refine: the tiles are pulled toward the guide itself, which must then stay as given (the
            # canvas is a copy); the seed pass reads the shrunk scene (DEFAULT_REFINE_BAND_SIGMA says why)
            latent, overwrite = guide, False
            pulled, band = guide, options.refine_band_sigma
            if settings.halo is None:
                halo = 0  # nothing enlarged: see RunSettings.tile_halo
        else:
            latent = (options.upscale or latent_upscale)(guide, *size)
            overwrite = True  # the run's own enlargement: nobody else reads it
        denoise, steps = options.denoise, options.steps_per_tile(host.steps)
        context = ContextSettings(
            pulled,
            options.skip_residual,
            options.stats,
            options.bcla_seed,
            skip_power=options.skip_power,
            seed=settings.seed,
            edge_release=options.edge_release,
            seed_guide=scene,
            band_sigma=band,
        )

    prompts, prompt_sigma = settings.tile_prompts or {}, settings.tile_prompt_sigma

    def denoise_tile(job: TileJob) -> Tensor:
        job = replace(job, denoise=denoise, steps=steps, prompt=prompts.get(job.tile.index))
        return host.denoise(replace(job, prompt_sigma=prompt_sigma, scene_prompt=settings.tile_scene_prompt))

    if method in CAUSAL_METHODS:
        border = settings.border_resample
        result = sample_causal(
            plan,
            noise,
            denoise_tile,
            latent=latent,
            cache=cache,
            lock_feather=settings.lock_feather,
            lock_margin=settings.lock_margin,
            lock_release=settings.lock_release,
            context=global_context(context, plan, host, cache, noise, denoise, steps),
            on_tile=host.on_tile,
            reencode=host.reencode,
            halo=halo,
            resample=None if border is None else border.bind(settings.seed),
            overwrite_latent=overwrite,
            keep_tiles=not canvas_only,
        )
        return CanvasResult(result.canvas, result.tiles, None if canvas_only else guide)
    if method == "independent":
        on_tile, keep = host.on_tile, not canvas_only
        return sample_independent(
            plan, noise, denoise_tile, latent=latent, on_tile=on_tile, halo=halo, keep_tiles=keep
        )
    job = TileJob(
        plan.whole_canvas,
        noise,
        start_canvas(plan, noise, latent),
        noise.new_ones(1, 1, plan.canvas_height, plan.canvas_width),
        denoise=denoise,
    )
    if method == "multidiffusion":
        job.model_wrap = lambda denoiser: multidiffusion_denoiser(plan, denoiser, host.on_tile, halo)
    canvas = host.denoise(job)
    return CanvasResult(canvas, None if canvas_only else plan.crops(canvas))


def _whole_scene(plan: TilePlan, guide: Tensor, long_side: int | None, patch: int) -> Tensor:
    """The guide as the tiles' global context sees it: at most :func:`guide_plan`'s size, so the BCLA
    seed pass (the model on the whole guide) costs one tile whatever the canvas (a photo's guide is the
    canvas itself)."""
    small = guide_plan(plan, long_side, patch)
    if guide.shape[-2] * guide.shape[-1] <= small.canvas_height * small.canvas_width:
        return guide
    return resize_latent(guide, small.canvas_height, small.canvas_width)


def _check_guide_shape(plan: TilePlan, guide: Tensor, shape: tuple[int, int]) -> None:
    """A SamplingError unless ``guide`` is a latent of the canvas's batch and channels, no larger."""
    batch, channels = shape
    if (
        guide.ndim != 4
        or guide.shape[1] != channels
        or guide.shape[0] not in (1, batch)
        or guide.shape[-2] > plan.canvas_height
        or guide.shape[-1] > plan.canvas_width
    ):
        raise SamplingError(
            f"The guide latent is {tuple(guide.shape)}; method='guided' needs [B, {channels}, h, w] with "
            f"h ≤ {plan.canvas_height}, w ≤ {plan.canvas_width} cells (the canvas's aspect): encode the "
            "image at the canvas size or smaller."
        )


def render_guide(
    plan: TilePlan,
    host: Host,
    long_side: int | None,
    seed: int,
    like: Tensor,
    prompt: object | None = None,
    margin: int = 0,
) -> Tensor:
    """The whole scene in one pass at :func:`guide_plan`'s size (whole tokens of ``host``'s patch size),
    from ``seed``'s noise (batch, channels, device and dtype of ``like``); ``prompt``: its conditioning
    in the host's form (None: the run's).

    ``margin`` > 0: the pass runs on a latent ``margin`` cells (rounded up to whole tokens) larger on
    every side and the margin is cropped off, so the guide's outermost cells are interior content, not
    the model's border treatment. The noise without margin sits in the middle (the margin's own is
    the seed's at the larger size); the composition may still change, as the model sees a larger
    picture (on the position-embedding model at 4× a second sun, half cut off by the crop)."""
    small = guide_plan(plan, long_side, host.patch_size)
    size = (small.canvas_height, small.canvas_width)
    pad = -(-margin // host.patch_size) * host.patch_size
    noise = canvas_noise(seed, (*like.shape[:2], *size))
    if pad:
        larger = canvas_noise(seed, (*like.shape[:2], size[0] + 2 * pad, size[1] + 2 * pad))
        larger[..., pad : pad + size[0], pad : pad + size[1]] = noise
        noise = larger
    noise = noise.to(like)
    mask = noise.new_ones(1, 1, *noise.shape[-2:])
    whole = Tile.whole(*noise.shape[-2:])
    scene = host.denoise(TileJob(whole, noise, torch.zeros_like(noise), mask, prompt=prompt))
    return scene[..., pad : pad + size[0], pad : pad + size[1]]


def global_context(
    settings: ContextSettings | None,
    plan: TilePlan,
    host: Host,
    cache: TileCache | None,
    noise: Tensor,
    denoise: float,
    steps: int | None = None,
) -> GlobalContext | None:
    """The engine's GlobalContext for ``settings``, after the BCLA seed pass when ``bcla_seed`` > 0.

    The seed pass runs the model on the guide noised to ``seed_sigma`` (0: to every level of the tiles'
    schedule, ``steps`` at ``denoise``, in turn, one call each) while the cache records: the guide's
    tokens' S, Z statistics, O(D²) whatever the guide's size, then join every tile's context.
    """
    if settings is None:
        return None
    guide = settings.guide.to(noise)
    context = GlobalContext(
        guide=host.model_space(guide),
        skip_residual=settings.skip_residual,
        stats=settings.stats,
        skip_power=settings.skip_power,
        edge_release=settings.edge_release,
        band_sigma=settings.band_sigma,
    )
    context.check(plan, tuple(noise.shape))  # before the seed pass runs the model on the guide
    if settings.bcla_seed <= 0:
        return context
    if cache is None:
        raise ContextError(
            "bcla_seed > 0 seeds the BCLA cache: run with a BCLA cache (in ComfyUI, a model from the "
            "BCLA Cache node) or set bcla_seed to 0."
        )
    if settings.seed_sigma > 0:
        levels = [settings.seed_sigma]
    else:
        levels = [float(level) for level in host.schedule(denoise, steps)[:-1] if level > 0]
    if settings.seed_guide is not None:
        guide = settings.seed_guide.to(noise)
    seed_noise = canvas_noise(settings.seed, tuple(guide.shape)).to(guide)
    with cache.record_seed() as handle:
        for level in levels:
            host.seed_call(guide, seed_noise, level)
    if not handle.stats:
        raise ContextError(
            "The seed pass recorded no attention statistics: the model's attention does not use the "
            "BCLA cache (a model without SANA linear attention?)."
        )
    return replace(context, bcla_seed=settings.bcla_seed, seed_stats=handle.stats)


def tile_steps_total(
    plan: TilePlan, settings: RunSettings, steps: int, guide: tuple[int, int] | None = None, patch: int = 1
) -> int:
    """A run's progress total in tile-steps (one tile, or the whole canvas, through one step; the seed
    pass is not counted): what a progress bar over the run counts to. ``guide``: (height, width) cells of
    a given guide (``guided`` then renders no whole-scene pass)."""
    refine = refine_steps_total(plan, settings.seam_refine, steps)
    if settings.method == "guided":
        options = settings.guide
        tiles = len(plan) + sum(len(level) for level in guide_levels(plan, options, patch, guide))
        return (steps if guide is None else 0) + tiles * options.steps_per_tile(steps) + refine
    scene = steps if _renders_scene(settings) else 0
    return scene + steps * (1 if settings.method == "full" else len(plan)) + refine


@dataclass(frozen=True)
class FlowSampling:
    """How the engine's own host samples: ComfyUI's KSampler settings for a flow model."""

    steps: int = 20
    cfg: float = 4.5
    sampler: str = "euler"
    """A :data:`flow.SAMPLERS` name."""
    shift: float = 3.0
    """SANA's resolution shift of the flow time."""


class FlowHost:
    """The engine's own host: a diffusers SanaTransformer2DModel, CFG, and the flow samplers of
    :mod:`temporal_tiling.flow` (the same rules as ComfyUI's; used by the CLI, benchmarks and tests).

    ``progress(done, total)`` counts tile-steps (one tile through one model step; a whole-canvas pass
    counts its steps, MultiDiffusion its tile calls) and may raise to cancel.
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        prompt_embeds: Tensor,
        negative_embeds: Tensor | None,
        sampling: FlowSampling = FlowSampling(),
        *,
        prompt_mask: Tensor | None = None,
        negative_mask: Tensor | None = None,
        progress: Callable[[int, int], None] | None = None,
        total: int = 0,
    ) -> None:
        self.transformer = transformer
        self.device = next(transformer.parameters()).device
        self.sampling = sampling
        self.steps = sampling.steps
        self.canvas_positions = has_canvas_positions(transformer)
        self.patch_size = patch_size(transformer)
        negative = None if negative_embeds is None else negative_embeds.to(self.device)
        self.conditioning = (prompt_embeds.to(self.device), negative)
        self.masks = (prompt_mask, negative_mask)
        self.progress, self.total, self.done = progress, total, 0
        self.cache: TileCache | None = None
        self._undo: Callable[[], None] | None = None
        self._counting_tile_calls = False
        self.denoiser = self._denoiser()

    def _denoiser(self) -> CFGDenoiser:
        positive, negative = self.conditioning
        prompt_mask, negative_mask = self.masks
        return CFGDenoiser(
            self.transformer, positive, negative, self.sampling.cfg, self.cache, prompt_mask, negative_mask
        )

    def _tile_denoiser(self, prompt_embeds: Tensor) -> CFGDenoiser:
        """The denoiser of a tile with its own prompt (tile prompts: embeddings of its valid tokens);
        the negative prompt, CFG and cache stay the run's."""
        negative, negative_mask = self.conditioning[1], self.masks[1]
        cfg = self.sampling.cfg
        embeds = prompt_embeds.to(self.device)
        return CFGDenoiser(self.transformer, embeds, negative, cfg, self.cache, None, negative_mask)

    def tick(self, *_: object) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def schedule(self, denoise: float, steps: int | None = None) -> Tensor:
        return flow_sigmas(steps or self.steps, self.sampling.shift, denoise)

    def denoise(self, job: TileJob) -> Tensor:
        sigmas = self.schedule(job.denoise, job.steps)
        if job.model_wrap is None:
            denoiser = self.denoiser
            if job.prompt is not None:
                denoiser = self._tile_denoiser(job.prompt)
            if job.prompt_sigma and (job.prompt is not None or job.scene_prompt is not None):
                below = self.denoiser if job.scene_prompt is None else self._tile_denoiser(job.scene_prompt)
                denoiser = sigma_switch(denoiser, below, job.prompt_sigma)
            return sample_tile(denoiser, job, sigmas, self.sampling.sampler, self.tick)
        self._counting_tile_calls = True
        try:
            return sample_tile(job.model_wrap(self.denoiser), job, sigmas, self.sampling.sampler)
        finally:
            self._counting_tile_calls = False

    def on_tile(self, index: int, count: int) -> None:
        if self._counting_tile_calls:
            self.tick()

    def reencode(self, x0: Tensor) -> None:
        self.denoiser(x0, x0.new_full((x0.shape[0],), CLEAN_SIGMA))

    def seed_call(self, guide: Tensor, noise: Tensor, sigma: float) -> None:
        sigmas = torch.full((guide.shape[0],), sigma, dtype=torch.float32, device=guide.device)
        self.denoiser((1.0 - sigma) * guide + sigma * noise, sigmas)

    def cross_attention(self, latent: Tensor, noise: Tensor, sigma: float, prompt: object = None) -> Tensor:
        if prompt is not None:
            return cross_attention(self.transformer, latent, noise, sigma, prompt.to(self.device))
        return cross_attention(self.transformer, latent, noise, sigma, self.conditioning[0], self.masks[0])

    def model_space(self, latent: Tensor) -> Tensor:
        return latent

    def attach_cache(self, cache: TileCache) -> None:
        self.cache = cache
        self._undo = install_bcla(self.transformer, cache)
        self.denoiser = self._denoiser()

    def detach_cache(self) -> None:
        if self._undo is not None:
            self._undo()
        self.cache, self._undo = None, None
        self.denoiser = self._denoiser()


def generate(
    plan: TilePlan,
    transformer: torch.nn.Module,
    prompt_embeds: Tensor,
    negative_embeds: Tensor | None,
    *,
    steps: int = 20,
    cfg: float = 4.5,
    sampler: str = "euler",
    shift: float = 3.0,
    latent: Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
    canvas_only: bool = False,
    **settings,
) -> CanvasResult:
    """:func:`run` with a :class:`FlowHost` on a diffusers SanaTransformer2DModel.

    ``settings`` are :class:`RunSettings` fields (``method``, ``seed``, ``denoise``, lock, cache,
    context and guide options). The batch is the prompt batch (or the latent's, for img2img).
    ``progress(done, total)`` counts tile-steps (see :class:`FlowHost`); ``canvas_only``: see
    :func:`run`.
    """
    options = RunSettings(**settings)
    guide = tuple(latent.shape[-2:]) if latent is not None and options.method == "guided" else None
    total = tile_steps_total(plan, options, steps, guide, patch_size(transformer))
    sampling = FlowSampling(steps, cfg, sampler, shift)
    host = FlowHost(transformer, prompt_embeds, negative_embeds, sampling, progress=progress, total=total)
    batch = prompt_embeds.shape[0] if latent is None else latent.shape[0]
    shape = (batch, transformer.config.in_channels)
    return run(plan, host, options, shape, device=host.device, latent=latent, canvas_only=canvas_only)
