"""Causal SANA Sampler node: the engine's run path with ComfyUI's own samplers as its host.

The engine (``temporal_tiling.pipeline.run``) decides what each tile sees, in which order, and how
methods differ; this node supplies the host it calls: ``comfy.sample.sample`` on a tile with
``noise_mask`` = the tile's lock mask, so ComfyUI's KSamplerX0Inpaint keeps the already generated
overlap (re-noised each step) for every sampler and scheduler. The BCLA processors go onto a clone of
the MODEL as object patches; an apply-model wrapper tells the cache the noise level and CFG branches
of every model call (and averages tiles for MultiDiffusion); a post-CFG function applies the global
context, the denoise-mask function the lock release, and a predict-noise wrapper (the post-CFG model
call inside ComfyUI's inpainting rule) the border resampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import comfy.model_management
import comfy.patcher_extension
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import node_helpers
import torch
from comfy_api.latest import io
from comfy_execution.graph_utils import ExecutionBlocker

from ..temporal_tiling.bcla import bcla_object_patches
from ..temporal_tiling.context import ContextSettings
from ..temporal_tiling.contracts import DenoiserWrap, MaskSchedule, Resample, TileCache, TileJob, X0Hook
from ..temporal_tiling.options import (
    DEFAULT_GUIDE_BCLA_SEED,
    DEFAULT_GUIDE_DENOISE,
    DEFAULT_GUIDE_HALO,
    DEFAULT_LOCK_FEATHER,
    DEFAULT_LOCK_MARGIN,
    DEFAULT_LOCK_RELEASE,
    DEFAULT_METHOD,
    DEFAULT_RELEASE_BAND,
    HALO_AUTO,
)
from ..temporal_tiling.pipeline import (
    CAUSAL_METHODS,
    GuideFirst,
    RunSettings,
    pixel_upscale,
    run,
    tile_steps_total,
)
from ..temporal_tiling.plan import Tile, TilePlan
from ..temporal_tiling.position import has_canvas_positions, patch_size
from ..temporal_tiling.sampling import CLEAN_SIGMA, LockRelease, SamplingError
from ..temporal_tiling.seam_refine import SeamRefine, refine_steps_total
from ..temporal_tiling.word_maps import RecordedAttention, cross_attention_patches, needs_prompt_twice
from .bcla_cache import bcla_config, bcla_transformer
from .common import (
    CATEGORY,
    UNLINKED,
    GlobalContextSocket,
    TilePlanSocket,
    compression_problem,
    connected,
    cross_check,
)
from .tile_prompts import TileConditioning, TileConditioningSocket

MODES = ("causal", "guided", "independent", "multidiffusion")
WRAPPER_KEY = "sana_temporal_tiling"
"""Key of this pack's wrapper on the MODEL clone (ComfyUI chains wrappers of every key)."""


def _interrupt_check(*_: object) -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()


def _settings_problem(values: dict) -> str | None:
    denoise, mode = values["denoise"], values["mode"]
    latent_image, global_context = connected(values["latent_image"]), connected(values["global_context"])
    if denoise is not None and denoise <= 0.0:
        return f"denoise must be above 0, got {denoise}; use 1.0 to generate from noise."
    if denoise is not None and denoise < 1.0 and not latent_image:
        return f"denoise = {denoise} refines a canvas: connect latent_image or set denoise to 1."
    if global_context and mode not in (None, "causal"):
        return f"A global context is used by mode = causal only; disconnect it for mode = {mode}."
    return None


class SanaCausalSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTemporalCausalSampler",
            display_name="Causal SANA Sampler",
            category=CATEGORY,
            description=(
                "Generates the canvas tile by tile in the plan's order. Each tile keeps the overlap the "
                "earlier tiles produced (inpainting-style lock) and, with a BCLA Cache model, sees their "
                "linear-attention statistics. mode = guided first renders the whole scene in one tile and "
                "starts every tile from it (one layout for the canvas). Every ComfyUI sampler and scheduler "
                "works. mode = independent or multidiffusion runs the baselines for comparison."
            ),
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="SANA model; from a BCLA Cache node to share attention "
                    "statistics across tiles (causal mode).",
                ),
                io.Conditioning.Input("positive", tooltip="What every tile should show."),
                io.Conditioning.Input("negative", tooltip="What to steer away from (used when cfg > 1)."),
                TilePlanSocket.Input(
                    "tile_plan", tooltip="Canvas, tiles and generation order from the Tile Planner."
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of the one noise tensor drawn for the whole canvas.",
                ),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps per tile."),
                io.Float.Input(
                    "cfg",
                    default=4.5,
                    min=0.0,
                    max=100.0,
                    step=0.1,
                    round=0.01,
                    tooltip="Classifier-free guidance scale.",
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=comfy.samplers.KSampler.SAMPLERS,
                    default="euler",
                    tooltip="ComfyUI sampler used for every tile.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=comfy.samplers.KSampler.SCHEDULERS,
                    default="simple",
                    tooltip="ComfyUI noise schedule used for every tile.",
                ),
                io.Float.Input(
                    "denoise",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="1 generates from noise; below 1 refines latent_image (hi-res fix, "
                    "upscale of an existing picture).",
                ),
                io.Combo.Input(
                    "mode",
                    options=list(MODES),
                    default=DEFAULT_METHOD,
                    tooltip="causal: tiles in order, overlap locked, BCLA if the model has it. "
                    "guided: the whole scene at the tile's size first, upscaled, then causal tiles "
                    "refined from it at guide_denoise (one layout; the guide seeds BCLA). "
                    "independent: tiles alone, overlaps averaged (baseline). "
                    "multidiffusion: per-step average of overlapping tiles (baseline).",
                ),
                io.Int.Input(
                    "lock_feather",
                    default=DEFAULT_LOCK_FEATHER,
                    min=0,
                    max=64,
                    tooltip="Latent cells of already generated content, next to the lock edge, "
                    "that a new tile may still blend into (0 = hard lock). Causal and guided modes.",
                ),
                io.Int.Input(
                    "lock_margin",
                    default=DEFAULT_LOCK_MARGIN,
                    min=0,
                    max=16,
                    tooltip="Outermost latent cells of each earlier tile that a new tile regenerates "
                    "instead of keeping: a tile paints its window edge like an image edge, which shows "
                    "as a line where the lock keeps it (0 = keep every overlapping cell). "
                    "Causal and guided modes.",
                ),
                io.Float.Input(
                    "lock_release",
                    default=DEFAULT_LOCK_RELEASE,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Share of the lock released by the last step near the lock edge: the "
                    "new tile's prediction and the earlier content are averaged there in the late "
                    "steps (0 = constant lock). Causal and guided modes.",
                ),
                io.Int.Input(
                    "release_band",
                    default=DEFAULT_RELEASE_BAND,
                    min=0,
                    max=64,
                    tooltip="Latent cells of the overlap, next to the tile's new area, that "
                    "lock_release applies to (0 = the whole overlap). Causal and guided modes.",
                ),
                io.Int.Input(
                    "batch_size",
                    default=1,
                    min=1,
                    max=64,
                    tooltip="Canvases generated at once when no latent_image is connected.",
                ),
                io.Float.Input(
                    "guide_denoise",
                    default=DEFAULT_GUIDE_DENOISE,
                    min=0.05,
                    max=1.0,
                    step=0.05,
                    tooltip="mode = guided: share of the schedule the tiles run from the upscaled "
                    "whole-scene pass (each tile's colour statistics are also pulled halfway to it). "
                    "Lower keeps its layout and colours; higher lets tiles add more of their own "
                    "detail and their window's own gradient (1 = from noise).",
                ),
                io.Int.Input(
                    "tile_steps",
                    default=0,
                    min=0,
                    max=10000,
                    tooltip="mode = guided: sampler steps of each tile from the guide. 0 = steps × "
                    "guide_denoise: the last part of the schedule at the guide's own step size "
                    "(ComfyUI's denoise would cut that part into all `steps`: ~3× slower at 0.3).",
                ),
                io.Float.Input(
                    "seam_refine",
                    default=0.0,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Once the canvas is done, re-denoise a band across every tile border at this "
                    "denoise (any mode), so the two sides are painted as one image. 0 = off; 0.25 removes "
                    "the lines independent tiles and MultiDiffusion leave; costs about steps × denoise "
                    "steps per border.",
                ),
                io.Int.Input(
                    "halo",
                    default=HALO_AUTO,
                    min=HALO_AUTO,
                    max=64,
                    tooltip="Latent cells of neighbouring canvas each tile is sampled with and then "
                    "discards, so a tile's border is not the model's image border (tiled modes). "
                    f"{HALO_AUTO} = the mode's default: {DEFAULT_GUIDE_HALO} for guided (it removes the "
                    "soft brightness step at every tile row on canvases many times the whole-scene pass; 0 "
                    "when latent_image already has the canvas's size, a refine), 0 for the others; 0 = off.",
                ),
                io.Latent.Input(
                    "latent_image",
                    optional=True,
                    tooltip="mode = guided: the image to refine, as its guide (img2img is a refine): the "
                    "canvas's size, or smaller with its aspect (enlarged first). Other modes: the canvas "
                    "latent to refine with denoise < 1 (e.g. a VAE-encoded upscale), the plan's size.",
                ),
                GlobalContextSocket.Input(
                    "global_context",
                    optional=True,
                    tooltip="Low-res view of the whole scene from the Global Context Encoder (causal mode).",
                ),
                io.Vae.Input(
                    "vae",
                    optional=True,
                    tooltip="mode = guided: enlarge a guide smaller than the canvas in pixels (decode, "
                    "bicubic, encode) instead of in latent space; keeps shapes at SANA's 32× compression.",
                ),
                TileConditioningSocket.Input(
                    "tile_conditioning",
                    optional=True,
                    tooltip="Tile prompts from the Tile Prompts node (made for this tile plan): those "
                    "tiles hear their own prompt instead of positive. Modes causal, guided, independent.",
                ),
            ],
            outputs=[
                io.Latent.Output(
                    display_name="canvas",
                    tooltip="The stitched latent canvas; decode with VAE Decode (Tiled).",
                ),
                io.Latent.Output(
                    display_name="tiles",
                    tooltip="Every tile's own latent as a batch (tile-major, plan order, all "
                    "the same size): decode and feed to Seam Blender / Quality Metrics.",
                ),
                io.Latent.Output(
                    display_name="guide",
                    tooltip="mode = guided: the whole-scene pass the tiles started from; decode it "
                    "and give it to Quality Metrics' guide. Other modes have none.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        cfg: float | None = None,
        sampler_name: str | None = None,
        scheduler: str | None = None,
        denoise: float | None = None,
        mode: str | None = None,
        lock_release: float | None = None,
        guide_denoise: float | None = None,
        seam_refine: float | None = None,
        latent_image=UNLINKED,
        global_context=UNLINKED,
    ) -> bool:
        """Refuse impossible settings before the run; values from links (None here) are checked at run.
        The integer widgets are left to ComfyUI's own checks."""
        return cross_check(cls, locals(), _settings_problem)

    @classmethod
    def execute(
        cls,
        model,
        positive,
        negative,
        tile_plan: TilePlan,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        denoise: float,
        mode: str,
        lock_feather: int,
        lock_margin: int,
        lock_release: float,
        release_band: int,
        batch_size: int,
        guide_denoise: float = DEFAULT_GUIDE_DENOISE,
        tile_steps: int = 0,
        seam_refine: float = 0.0,
        halo: int = HALO_AUTO,
        latent_image: dict | None = None,
        global_context: ContextSettings | None = None,
        vae=None,
        tile_conditioning: TileConditioning | None = None,
    ) -> io.NodeOutput:
        plan = tile_plan
        if (mismatch := compression_problem(model, plan.compression)) is not None:
            raise SamplingError(mismatch)
        if tile_conditioning is not None and tile_conditioning.plan != plan:
            raise SamplingError(
                "tile_conditioning was made for another tile plan; connect the sampler's tile_plan to the "
                "Tile Prompts node too."
            )
        guided = mode == "guided"
        start, given = _start_latent(model, plan, latent_image, batch_size, denoise, guided)
        settings = RunSettings(
            method=mode,
            seed=seed,
            denoise=denoise,
            lock_feather=lock_feather,
            lock_margin=lock_margin,
            lock_release=LockRelease(lock_release, release_band),
            cache_config=bcla_config(model) if mode in CAUSAL_METHODS else None,
            context=global_context,
            guide_first=_guide_first(model, guide_denoise, tile_steps, vae, plan) if guided else None,
            seam_refine=SeamRefine(seam_refine) if seam_refine > 0 else None,
            halo=None if halo == HALO_AUTO else halo,
            tile_prompts=tile_conditioning.by_tile or None if tile_conditioning is not None else None,
            auto_tile_prompts=tile_conditioning.automatic if tile_conditioning is not None else None,
            guide_prompt=tile_conditioning.scene if tile_conditioning is not None and guided else None,
            tile_prompt_sigma=tile_conditioning.prompt_sigma if tile_conditioning is not None else 0.0,
        )
        host = ComfyHost(
            model,
            plan,
            positive=positive,
            negative=negative,
            steps=steps,
            cfg=cfg,
            sampler_name=sampler_name,
            scheduler=scheduler,
            seed=seed,
        )
        guide = tuple(given.shape[-2:]) if guided and given is not None else None
        # ComfyUI's progress counts MultiDiffusion's steps over the canvas, not its tile calls
        total = (
            steps + refine_steps_total(plan, settings.seam_refine, steps)
            if mode == "multidiffusion"
            else tile_steps_total(plan, settings, steps, guide, host.patch_size)
        )
        host.start_preview(start, total)
        result = run(plan, host, settings, tuple(start.shape[:2]), device=start.device, latent=given)
        if not bool(torch.isfinite(result.canvas).all()):
            raise SamplingError(
                "The sampler produced NaN or infinite values (an unstable sampler/cfg/dtype combination); "
                "lower cfg, try another sampler, or load the model with weight_dtype fp32."
            )
        guide = (
            {"samples": result.guide}
            if result.guide is not None
            else ExecutionBlocker(
                f"mode = {mode} renders no guide; disconnect the guide output or use guided."
            )
        )
        return io.NodeOutput({"samples": result.canvas}, {"samples": result.tiles}, guide)


def _guide_first(model, denoise: float, tile_steps: int, vae, plan: TilePlan) -> GuideFirst:
    """mode = guided with the engine's defaults; the guide seeds BCLA when the model has a BCLA cache,
    and is enlarged in pixels through ``vae`` when one is connected."""
    upscale = None
    if vae is not None:
        upscale = pixel_upscale(
            lambda latent: vae.decode(latent).movedim(-1, 1),
            lambda image: vae.encode(image.movedim(1, -1)),
            plan.compression,
        )
    return GuideFirst(
        denoise=denoise,
        bcla_seed=DEFAULT_GUIDE_BCLA_SEED if bcla_config(model) else 0.0,
        tile_steps=tile_steps or None,
        upscale=upscale,
    )


def _start_latent(
    model, plan: TilePlan, latent_image: dict | None, batch_size: int, denoise: float, guided: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(canvas to start from, the input latent or None); refuses a latent that does not fit the plan.
    For mode = guided the input latent is the guide: the canvas's size or smaller (enlarged by the run)."""
    channels = model.get_model_object("latent_format").latent_channels
    expected = (plan.canvas_height, plan.canvas_width)
    if latent_image is None:
        if denoise < 1.0 and not guided:
            raise SamplingError(f"denoise = {denoise} needs latent_image; connect one or set denoise to 1.0.")
        shape = (batch_size, channels, *expected)
        return torch.zeros(shape, device=comfy.model_management.intermediate_device()), None
    latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
    fits = tuple(latent.shape[-2:]) == expected or (
        guided and latent.shape[-2] <= expected[0] and latent.shape[-1] <= expected[1]
    )
    if latent.ndim != 4 or not fits or latent.shape[1] != channels:
        raise SamplingError(
            f"latent_image is {tuple(latent.shape)} but this model and plan need [B, {channels}, "
            f"{expected[0]}, {expected[1]}] ({plan.width_px}×{plan.height_px} px); plan from the latent "
            "(connect it to the Tile Planner) or resize the image before encoding."
        )
    if not bool(torch.isfinite(latent).all()):
        raise SamplingError(
            "latent_image holds NaN or infinite values; fix the node that made it (e.g. a VAE Encode in "
            "fp16) before sampling."
        )
    if guided:
        return torch.zeros((latent.shape[0], channels, *expected), device=latent.device), latent
    return latent, latent


@dataclass
class JobState:
    """What the MODEL clone's hooks read while one tile job samples. ``ComfyHost.denoise`` sets a new one
    for each job and an empty one after it, so a call outside a job (re-encode, BCLA seed) runs unhooked."""

    tile: Tile | None = None
    x0_hook: X0Hook | None = None
    mask_schedule: MaskSchedule | None = None
    model_wrap: DenoiserWrap | None = None
    resample: Resample | None = None
    known: torch.Tensor | None = None
    """The job's known latent in the model's space (KSamplerX0Inpaint's ``latent_image``)."""
    call_mask: torch.Tensor | None = None
    """The denoise mask of the model call in progress, as ComfyUI's inpainting rule applies it."""


def percent_of_sigma(model_sampling, sigma: float) -> float:
    """The share of the schedule (ComfyUI's timestep-range percent) whose noise level is ``sigma``:
    ComfyUI maps percent to σ only (``percent_to_sigma``, falling from the top σ at 0 to 0 at 1), so the
    percent is found by bisection, to 1e-12."""
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if model_sampling.percent_to_sigma(middle) >= sigma else (low, middle)
    return low


class ComfyHost:
    """The run path's host inside ComfyUI (``contracts.Host``): every sampler run is
    ``comfy.sample.sample`` on a clone of the MODEL that carries this run's patches.

    The clone's hooks read the job being sampled (``JobState``) and the BCLA cache from this object, so
    one patched clone serves every tile.
    """

    def __init__(
        self,
        model,
        plan: TilePlan,
        *,
        positive: list,
        negative: list,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        seed: int,
    ) -> None:
        self.plan = plan
        self.positive, self.negative = positive, negative
        self.steps, self.cfg, self.sampler_name, self.scheduler, self.seed = (
            steps,
            cfg,
            sampler_name,
            scheduler,
            seed,
        )
        self.job = JobState()
        self.cache: TileCache | None = None
        self.done_steps = 0
        self.preview: torch.Tensor | None = None
        """Canvas in the model's internal latent space, for previews; finished tiles pasted in."""
        self.work = self._patched(model)
        self.callback = None

    # --- the MODEL clone ---------------------------------------------------------------------------
    def _patched(self, model):
        """A clone with this run's apply-model and predict-noise wrappers, post-CFG function and
        denoise-mask function."""
        work = model.clone()

        def apply_model(executor, x, t, c_concat, c_crossattn, control, transformer_options, **kwargs):
            _interrupt_check()
            if self.cache is not None:
                self.cache.set_call(float(t.flatten()[0]), transformer_options["cond_or_uncond"])
            model_wrap = self.job.model_wrap
            if model_wrap is None:
                return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)

            def denoiser(x_: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                return executor(x_, sigma, c_concat, c_crossattn, control, transformer_options, **kwargs)

            return model_wrap(denoiser)(x, t)

        def post_cfg(args: dict) -> torch.Tensor:
            hook = self.job.x0_hook
            return args["denoised"] if hook is None else hook(args["denoised"], args["sigma"])

        # ComfyUI has one denoise-mask function per model, not a chain: call any earlier one (e.g.
        # Differential Diffusion) first, then the lock release of the tile being sampled.
        previous_mask = model.model_options.get("denoise_mask_function")

        def mask_function(
            sigma: torch.Tensor, denoise_mask: torch.Tensor, extra_options: dict
        ) -> torch.Tensor:
            if previous_mask is not None:
                denoise_mask = previous_mask(sigma, denoise_mask, extra_options=extra_options)
            job = self.job
            job.call_mask = (
                denoise_mask if job.mask_schedule is None else job.mask_schedule(sigma, denoise_mask)
            )
            return job.call_mask

        def predict_noise(executor, x, timestep, model_options, seed):
            job = self.job
            resample, mask = job.resample, job.call_mask
            if resample is None or mask is None:  # no mask: nothing known, nothing to resample
                return executor(x, timestep, model_options, seed)

            def denoiser(x_: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                return executor(x_, sigma, model_options, seed)

            return resample(denoiser, x, timestep, mask, job.known.to(x))

        wrappers = comfy.patcher_extension.WrappersMP
        work.add_wrapper_with_key(wrappers.APPLY_MODEL, WRAPPER_KEY, apply_model)
        work.add_wrapper_with_key(wrappers.PREDICT_NOISE, WRAPPER_KEY, predict_noise)
        work.set_model_sampler_post_cfg_function(post_cfg)
        work.set_model_denoise_mask_function(mask_function)
        return work

    def _sample(
        self,
        noise: torch.Tensor,
        latent: torch.Tensor,
        steps: int | None = None,
        positive=None,
        model=None,
        cfg: float | None = None,
        negative=None,
        **kwargs,
    ) -> torch.Tensor:
        return comfy.sample.sample(
            model or self.work,
            noise,
            steps or self.steps,
            self.cfg if cfg is None else cfg,
            self.sampler_name,
            self.scheduler,
            self.positive if positive is None else positive,
            self.negative if negative is None else negative,
            latent,
            disable_pbar=True,
            seed=self.seed,
            **kwargs,
        )

    # --- progress and previews ---------------------------------------------------------------------
    def start_preview(self, start: torch.Tensor, total: int) -> None:
        """Progress over ``total`` tile-steps, with previews of the whole canvas as tiles finish."""
        self.preview = self.work.model.process_latent_in(start.clone())
        previewer = latent_preview.get_previewer(self.work.load_device, self.work.model.latent_format)
        bar = comfy.utils.ProgressBar(total)

        def callback(step: int, x0: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
            _interrupt_check()
            image = None
            if previewer is not None:
                canvas = self.preview.clone()
                rows, cols = self.job.tile.slices
                if canvas[..., rows, cols].shape == x0.shape:
                    canvas[..., rows, cols] = x0.to(canvas)
                else:  # the whole-scene pass of mode = guided: smaller than the canvas
                    canvas = x0
                image = previewer.decode_latent_to_preview_image("JPEG", canvas)
            bar.update_absolute(self.done_steps + step + 1, total, image)

        self.callback = callback

    # --- contracts.Host ----------------------------------------------------------------------------
    def denoise(self, job: TileJob) -> torch.Tensor:
        known = None
        if job.resample is not None:  # ComfyUI shifts the known latent only when it is not all zeros
            nonzero = bool(torch.count_nonzero(job.latent))
            known = self.work.model.process_latent_in(job.latent) if nonzero else job.latent
        self.job = JobState(job.tile, job.x0_hook, job.mask_schedule, job.model_wrap, job.resample, known)
        mask = None if bool((job.denoise_mask == 1).all()) else job.denoise_mask
        try:
            out = self._sample(
                job.noise,
                job.latent,
                job.steps,
                self._positive(job),
                denoise=job.denoise,
                noise_mask=mask,
                callback=self.callback,
            )
        finally:
            self.job = JobState()
        self.done_steps += job.steps or self.steps
        rows, cols = job.tile.slices
        if self.preview[..., rows, cols].shape == out.shape:
            self.preview[..., rows, cols] = self.work.model.process_latent_in(out.to(self.preview))
        return out.to(job.latent)

    def _positive(self, job: TileJob) -> list | None:
        """The job's positive CONDITIONING: None (the run's), the tile's own, or with ``prompt_sigma`` s > 0
        the tile's own (or the run's) ending and the scene prompt (or the run's) starting at s, as
        ComfyUI's timestep ranges (ConditioningSetTimestepRange) express it. ComfyUI's ranges include both
        ends: a step exactly at σ = s hears both, averaged."""
        if job.prompt_sigma <= 0 or (job.prompt is None and job.scene_prompt is None):
            return job.prompt
        above = self.positive if job.prompt is None else job.prompt
        below = self.positive if job.scene_prompt is None else job.scene_prompt
        percent = percent_of_sigma(self.work.get_model_object("model_sampling"), job.prompt_sigma)
        tile = node_helpers.conditioning_set_values(above, {"end_percent": percent})
        return tile + node_helpers.conditioning_set_values(below, {"start_percent": percent})

    def schedule(self, denoise: float, steps: int | None = None) -> torch.Tensor:
        """This run's noise levels, as ComfyUI's KSampler computes them."""
        work, steps = self.work, steps or self.steps
        return comfy.samplers.KSampler(
            work, steps, work.load_device, self.sampler_name, self.scheduler, denoise, work.model_options
        ).sigmas

    def reencode(self, x0: torch.Tensor) -> None:
        self._sample(torch.zeros_like(x0), x0, sigmas=torch.tensor([CLEAN_SIGMA, 0.0]))

    def seed_call(self, guide: torch.Tensor, noise: torch.Tensor, sigma: float) -> None:
        self._sample(noise, guide, sigmas=torch.tensor([sigma, 0.0]))

    def cross_attention(
        self, latent: torch.Tensor, noise: torch.Tensor, sigma: float, prompt=None
    ) -> torch.Tensor:
        """One call (cfg 1) of the prompt on a clone whose cross-attention modules record their weights: the
        pack's SANA (diffusers' processors) or ExtraModels' (their forwards), as object patches.

        Where ExtraModels' SANA needs the prompt twice (``needs_prompt_twice``) it is both halves of a cfg
        batch (cfg 1 without ComfyUI's skipping of the uncond half): batch item 0 is the prompt either way."""
        inner = self.work.model.diffusion_model
        record, work = RecordedAttention(), self.work.clone()

        def current(path: str):
            return work.get_model_object(f"diffusion_model.{path}")

        for path, recorder in cross_attention_patches(inner, record, current).items():
            work.add_object_patch(f"diffusion_model.{path}", recorder)
        positive = self.positive if prompt is None else prompt
        negative = None
        if needs_prompt_twice(inner):
            work.model_options["disable_cfg1_optimization"] = True
            negative = positive
        self._sample(
            noise,
            latent,
            positive=positive,
            negative=negative,
            model=work,
            cfg=1.0,
            sigmas=torch.tensor([sigma, 0.0]),
        )
        return record.mean()

    def model_space(self, latent: torch.Tensor) -> torch.Tensor:
        return self.work.model.process_latent_in(latent)

    @property
    def patch_size(self) -> int:
        try:
            return patch_size(bcla_transformer(self.work))
        except ValueError:  # not a SANA this pack patches: ComfyUI pads to its patch size itself
            return 1

    @property
    def canvas_positions(self) -> bool:
        try:
            return has_canvas_positions(bcla_transformer(self.work))
        except ValueError:  # not a SANA whose attention this pack patches: no positions to follow either
            return False

    def attach_cache(self, cache: TileCache) -> None:
        """The BCLA processors as object patches on this run's clone (before its first sampling)."""
        self.cache = cache
        for path, patch in bcla_object_patches(bcla_transformer(self.work), cache).items():
            self.work.add_object_patch(f"diffusion_model.{path}", patch)

    def detach_cache(self) -> None:
        """Nothing to undo: the patches live on this run's clone only."""
        self.cache = None

    def on_tile(self, index: int, count: int) -> None:
        _interrupt_check()


NODES = [SanaCausalSampler]
