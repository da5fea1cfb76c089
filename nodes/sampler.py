"""Causal SANA Sampler node: tiles generated one after another through ComfyUI's own samplers.

The engine (``temporal_tiling.sampling``) decides what each tile sees; this node supplies the
``denoise_tile`` it calls: ``comfy.sample.sample`` on the tile with ``noise_mask`` = the tile's lock
mask, so ComfyUI's KSamplerX0Inpaint keeps the already generated overlap (re-noised each step) for
every sampler and scheduler. The BCLA cache is built here because it depends on the plan; its
attention processors go onto a clone of the MODEL as object patches, and a model_function_wrapper
tells the cache the noise level and CFG branches of every model call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview
import torch
from comfy_api.latest import io

from ..temporal_tiling.bcla import BCLACache, bcla_object_patches
from ..temporal_tiling.blend import split_tiles
from ..temporal_tiling.context import ContextError, GlobalContext
from ..temporal_tiling.plan import Tile, TilePlan
from ..temporal_tiling.sampling import (
    CLEAN_SIGMA,
    DEFAULT_LOCK_FEATHER,
    DEFAULT_LOCK_MARGIN,
    DEFAULT_LOCK_RELEASE,
    DEFAULT_RELEASE_BAND,
    CanvasResult,
    LockRelease,
    MaskSchedule,
    SamplingError,
    TileJob,
    X0Hook,
    multidiffusion_denoiser,
    sample_causal,
    sample_independent,
)
from .bcla_cache import bcla_config, bcla_transformer
from .common import CATEGORY, GlobalContextSocket, TilePlanSocket, check_inputs, compression_problem
from .context import ContextSpec

MODES = ("causal", "independent", "multidiffusion")


@dataclass
class _Run:
    """Mutable state shared by the model wrapper, the post-CFG hook and the progress callback."""

    hook: X0Hook | None = None
    mask_schedule: MaskSchedule | None = None
    tile: Tile | None = None
    done_steps: int = 0
    preview: torch.Tensor | None = None
    """Canvas in the model's internal latent space, for previews; finished tiles pasted in."""


def _interrupt_check(*_: object) -> None:
    comfy.model_management.throw_exception_if_processing_interrupted()


def _settings_problem(widgets: dict, linked: dict[str, str]) -> str | None:
    denoise, mode = widgets.get("denoise"), widgets.get("mode")
    if denoise is not None and denoise <= 0.0:
        return f"denoise must be above 0, got {denoise}; use 1.0 to generate from noise."
    if denoise is not None and denoise < 1.0 and "latent_image" not in linked:
        return f"denoise = {denoise} refines a canvas: connect latent_image or set denoise to 1."
    if "global_context" in linked and mode not in (None, "causal"):
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
                "linear-attention statistics. Every ComfyUI sampler and scheduler works. mode = independent "
                "or multidiffusion runs the baselines for comparison."
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
                    default="causal",
                    tooltip="causal: tiles in order, overlap locked, BCLA if the model has it. "
                    "independent: tiles alone, overlaps averaged (baseline). "
                    "multidiffusion: per-step average of overlapping tiles (baseline).",
                ),
                io.Int.Input(
                    "lock_feather",
                    default=DEFAULT_LOCK_FEATHER,
                    min=0,
                    max=64,
                    tooltip="Latent cells of already generated content, next to the lock edge, "
                    "that a new tile may still blend into (0 = hard lock). Causal only.",
                ),
                io.Int.Input(
                    "lock_margin",
                    default=DEFAULT_LOCK_MARGIN,
                    min=0,
                    max=16,
                    tooltip="Outermost latent cells of each earlier tile that a new tile regenerates "
                    "instead of keeping: a tile paints its window edge like an image edge, which shows "
                    "as a line where the lock keeps it (0 = keep every overlapping cell). Causal only.",
                ),
                io.Float.Input(
                    "lock_release",
                    default=DEFAULT_LOCK_RELEASE,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="Share of the lock released by the last step near the lock edge: the "
                    "new tile's prediction and the earlier content are averaged there in the late "
                    "steps (0 = constant lock). Causal only.",
                ),
                io.Int.Input(
                    "release_band",
                    default=DEFAULT_RELEASE_BAND,
                    min=0,
                    max=64,
                    tooltip="Latent cells of the overlap, next to the tile's new area, that "
                    "lock_release applies to (0 = the whole overlap). Causal only.",
                ),
                io.Int.Input(
                    "batch_size",
                    default=1,
                    min=1,
                    max=64,
                    tooltip="Canvases generated at once when no latent_image is connected.",
                ),
                io.Latent.Input(
                    "latent_image",
                    optional=True,
                    tooltip="Canvas latent to refine with denoise < 1 (e.g. VAE-encoded upscale); "
                    "its size must match the plan.",
                ),
                GlobalContextSocket.Input(
                    "global_context",
                    optional=True,
                    tooltip="Low-res view of the whole scene from the Global Context Encoder (causal mode).",
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
            ],
        )

    @classmethod
    def validate_inputs(cls, input_types: dict | None = None, **widgets) -> bool:
        """Refuse impossible settings before the run; values from links (None here) are checked at run."""
        return check_inputs(cls, widgets, input_types, _settings_problem)

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
        latent_image: dict | None = None,
        global_context: ContextSpec | None = None,
    ) -> io.NodeOutput:
        plan = tile_plan
        if (mismatch := compression_problem(model, plan.compression)) is not None:
            raise SamplingError(mismatch)
        start, given = _start_latent(model, plan, latent_image, batch_size, denoise)
        noise = comfy.sample.prepare_noise(start, seed)
        run = _Run()
        work, cache = _patched_model(model, plan, mode, run)
        run.preview = work.model.process_latent_in(start.clone())
        total = (1 if mode == "multidiffusion" else len(plan)) * steps
        callback = _progress(work, plan, run, total)

        def sample(noise_: torch.Tensor, latent: torch.Tensor, **kwargs) -> torch.Tensor:
            return comfy.sample.sample(
                work,
                noise_,
                steps,
                cfg,
                sampler_name,
                scheduler,
                positive,
                negative,
                latent,
                disable_pbar=True,
                seed=seed,
                **kwargs,
            )

        def denoise_tile(job: TileJob) -> torch.Tensor:
            run.hook, run.mask_schedule, run.tile = job.x0_hook, job.mask_schedule, job.tile
            mask = None if bool((job.denoise_mask == 1).all()) else job.denoise_mask
            out = sample(job.noise, job.latent, denoise=denoise, noise_mask=mask, callback=callback)
            run.hook, run.mask_schedule, run.tile = None, None, None
            run.done_steps += steps
            rows, cols = job.tile.slices
            run.preview[..., rows, cols] = work.model.process_latent_in(out.to(run.preview))
            return out.to(job.latent)

        def reencode(x0: torch.Tensor) -> None:
            """source = clean: one model call on the finished tile near σ = 0, recording only."""
            sample(torch.zeros_like(x0), x0, sigmas=torch.tensor([CLEAN_SIGMA, 0.0]))

        if mode == "multidiffusion":
            canvas = sample(noise, start, denoise=denoise, callback=callback)
            result = CanvasResult(canvas, split_tiles(canvas, plan, scale=1))
        elif mode == "independent":
            result = sample_independent(plan, noise, denoise_tile, latent=given, on_tile=_interrupt_check)
        else:

            def schedule() -> torch.Tensor:
                """This run's noise levels, as ComfyUI's KSampler computes them."""
                return comfy.samplers.KSampler(
                    work, steps, work.load_device, sampler_name, scheduler, denoise, work.model_options
                ).sigmas

            context = _global_context(global_context, work, plan, start, cache, sample, schedule)
            result = sample_causal(
                plan,
                noise,
                denoise_tile,
                latent=given,
                cache=cache,
                lock_feather=lock_feather,
                lock_margin=lock_margin,
                lock_release=LockRelease(lock_release, release_band),
                context=context,
                on_tile=_interrupt_check,
                reencode=reencode,
            )
        if not bool(torch.isfinite(result.canvas).all()):
            raise SamplingError(
                "The sampler produced NaN or infinite values (an unstable sampler/cfg/dtype combination); "
                "lower cfg, try another sampler, or load the model with weight_dtype fp32."
            )
        return io.NodeOutput({"samples": result.canvas}, {"samples": result.tiles})


def _start_latent(
    model, plan: TilePlan, latent_image: dict | None, batch_size: int, denoise: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(canvas to start from, the input latent or None); refuses a latent that does not fit the plan."""
    channels = model.get_model_object("latent_format").latent_channels
    expected = (plan.canvas_height, plan.canvas_width)
    if latent_image is None:
        if denoise < 1.0:
            raise SamplingError(f"denoise = {denoise} needs latent_image; connect one or set denoise to 1.0.")
        shape = (batch_size, channels, *expected)
        return torch.zeros(shape, device=comfy.model_management.intermediate_device()), None
    latent = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
    if latent.ndim != 4 or tuple(latent.shape[-2:]) != expected or latent.shape[1] != channels:
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
    return latent, latent


def _patched_model(model, plan: TilePlan, mode: str, run: _Run):
    """A clone with the BCLA processors (causal + BCLA Cache model), the call wrapper and the x0 hook."""
    work = model.clone()
    config = bcla_config(model) if mode == "causal" else None
    cache = None
    if config is not None:
        cache = BCLACache(config, plan)
        transformer = bcla_transformer(work)
        for path, patch in bcla_object_patches(transformer, cache).items():
            work.add_object_patch(f"diffusion_model.{path}", patch)
    previous = model.model_options.get("model_function_wrapper")

    def call(apply_model, args: dict) -> torch.Tensor:
        if previous is not None:
            return previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    def wrapper(apply_model, args: dict) -> torch.Tensor:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if cache is not None:
            cache.set_call(float(args["timestep"].flatten()[0]), args["cond_or_uncond"])
        if mode != "multidiffusion":
            return call(apply_model, args)

        def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return call(apply_model, {**args, "input": x, "timestep": sigma})

        return multidiffusion_denoiser(plan, denoiser, _interrupt_check)(args["input"], args["timestep"])

    def post_cfg(args: dict) -> torch.Tensor:
        hook = run.hook
        return args["denoised"] if hook is None else hook(args["denoised"], args["sigma"])

    previous_mask = model.model_options.get("denoise_mask_function")

    def mask_function(sigma: torch.Tensor, denoise_mask: torch.Tensor, extra_options: dict) -> torch.Tensor:
        """The lock release of the tile being sampled, after any earlier mask function (e.g.
        Differential Diffusion), through ComfyUI's own per-call mask hook."""
        if previous_mask is not None:
            denoise_mask = previous_mask(sigma, denoise_mask, extra_options=extra_options)
        schedule = run.mask_schedule
        return denoise_mask if schedule is None else schedule(sigma, denoise_mask)

    work.set_model_unet_function_wrapper(wrapper)
    work.set_model_sampler_post_cfg_function(post_cfg)
    work.set_model_denoise_mask_function(mask_function)
    return work, cache


def _progress(work, plan: TilePlan, run: _Run, total: int):
    """Sampler callback: progress over tiles × steps, interrupt check, preview of the whole canvas."""
    previewer = latent_preview.get_previewer(work.load_device, work.model.latent_format)
    bar = comfy.utils.ProgressBar(total)

    def callback(step: int, x0: torch.Tensor, x: torch.Tensor, total_steps: int) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        image = None
        if previewer is not None:
            canvas = run.preview.clone() if run.tile is not None else x0
            if run.tile is not None:
                rows, cols = run.tile.slices
                canvas[..., rows, cols] = x0.to(canvas)
            image = previewer.decode_latent_to_preview_image("JPEG", canvas)
        bar.update_absolute(run.done_steps + step + 1, total, image)

    return callback


def _global_context(
    spec: ContextSpec | None,
    work,
    plan: TilePlan,
    start: torch.Tensor,
    cache: BCLACache | None,
    sample,
    schedule: Callable[[], torch.Tensor],
) -> GlobalContext | None:
    """Turn the encoder node's spec into the engine's GlobalContext, in the model's internal latent space.

    ``bcla_seed`` > 0 runs the model on the guide noised to ``seed_sigma`` (0: to every level of the
    run's ``schedule()`` in turn, one call each) while the cache records.
    """
    if spec is None:
        return None
    guide = spec.guide.to(start)
    context = GlobalContext(
        guide=work.model.process_latent_in(guide),
        skip_residual=spec.skip_residual,
        stats=spec.stats,
        skip_power=spec.skip_power,
    )
    context.check(plan, tuple(start.shape))  # before the seed pass runs the model on the guide
    if spec.bcla_seed <= 0:
        return context
    if cache is None:
        raise ContextError(
            "bcla_seed > 0 seeds the BCLA cache: feed the sampler a model from the BCLA Cache node, "
            "or set bcla_seed to 0."
        )
    levels = [spec.seed_sigma] if spec.seed_sigma > 0 else [float(s) for s in schedule()[:-1] if s > 0]
    noise = comfy.sample.prepare_noise(guide, spec.seed)
    with cache.record_seed() as handle:
        for level in levels:
            sample(noise, guide, sigmas=torch.tensor([level, 0.0]))
    return replace(context, bcla_seed=spec.bcla_seed, seed_stats=handle.stats)


NODES = [SanaCausalSampler]
