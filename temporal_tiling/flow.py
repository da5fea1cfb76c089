"""Standalone rectified-flow sampling for SANA: schedule, samplers, CFG and ComfyUI's inpainting rule.

ComfyUI is not needed here. Inside ComfyUI the nodes use ComfyUI's own samplers; this module applies
exactly the same rules (KSamplerX0Inpaint masking, CONST noise scaling, ``denoise`` truncation) so the
CLI, the benchmarks and the tests give what the nodes give.

Flow matching: ``x_σ = (1 - σ)·x0 + σ·noise``; SANA predicts the velocity ``v = noise - x0`` at
``timestep = σ·1000``, so ``x0 = x_σ - σ·v``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .contracts import CallCache, Denoiser, TileJob
from .errors import UserInputError

StepCallback = Callable[[int, Tensor, Tensor, int], None]
"""``(step, x0, x, total_steps)``, ComfyUI's sampler callback order; it may raise to cancel."""


class FlowError(UserInputError):
    """Impossible sampling settings; the message says what to change."""


# --- schedule -------------------------------------------------------------------------------------


def shift_sigma(t: Tensor, shift: float) -> Tensor:
    """SANA's resolution shift of the flow time: more steps at high noise for ``shift > 1``."""
    return shift * t / (1 + (shift - 1) * t)


def flow_sigmas(steps: int, shift: float = 3.0, denoise: float = 1.0) -> Tensor:
    """Noise levels from 1 (or lower for ``denoise < 1``) to exactly 0, ``steps + 1`` values, float32.

    ``t`` runs linearly 1 → 0 over the steps and is shifted (what ComfyUI's ``simple`` scheduler gives
    with ModelSamplingDiscreteFlow). ``denoise < 1`` follows ComfyUI's KSampler: the schedule of
    ``int(steps / denoise)`` steps, of which the last ``steps`` are run.
    """
    if not isinstance(steps, int) or steps < 1:
        raise FlowError(f"steps must be a whole number ≥ 1, got {steps!r}.")
    if shift <= 0:
        raise FlowError(f"shift must be positive (SANA uses 3.0), got {shift!r}.")
    if not 0 < denoise <= 1:
        raise FlowError(f"denoise must be in (0, 1] (1 = generate from noise), got {denoise!r}.")
    total = steps if denoise > 0.9999 else int(steps / denoise)
    t = torch.linspace(1.0, 0.0, total + 1, dtype=torch.float64)
    return shift_sigma(t, shift)[-(steps + 1) :].float()


def noise_scaling(sigma: Tensor, noise: Tensor, latent: Tensor) -> Tensor:
    """``latent`` noised to ``sigma`` (ComfyUI's CONST.noise_scaling); sigma scalar or per sample."""
    sigma = _per_sample(sigma, noise)
    return sigma * noise + (1.0 - sigma) * latent


def _per_sample(sigma: Tensor, like: Tensor) -> Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return sigma.reshape(-1, *([1] * (like.ndim - 1))) if sigma.ndim else sigma


# --- samplers -------------------------------------------------------------------------------------


def _lambda(sigma: float) -> float:
    """Half log-SNR of rectified flow, ``log(α/σ)`` with ``α = 1 - σ``; ±inf at the ends."""
    if sigma <= 0:
        return math.inf
    if sigma >= 1:
        return -math.inf
    return math.log((1 - sigma) / sigma)


def _first_order(x: Tensor, x0: Tensor, sigma: float, sigma_next: float) -> Tensor:
    """Exact step when x0 stays constant: ``x_next = (σ'/σ)·x + (1 - σ'/σ)·x0``.

    This is both Euler for the velocity ``(x - x0)/σ`` and DPM-Solver++(1) (its x0 coefficient
    ``α' - α·σ'/σ`` is the same number); written with the ratio so the last step (σ' = 0) returns
    ``x0`` bit for bit and σ = 1 needs no log of zero.
    """
    ratio = sigma_next / sigma
    return ratio * x + (1 - ratio) * x0


def euler(model: Denoiser, x: Tensor, sigmas: Tensor, callback: StepCallback | None = None) -> Tensor:
    """Euler on the flow ODE ``dx/dσ = (x - x0)/σ``."""
    ones = x.new_ones(x.shape[0])
    steps = len(sigmas) - 1
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = model(x, sigmas[i] * ones)
        if callback is not None:
            callback(i, x0, x, steps)
        x = _first_order(x, x0, sigma, sigma_next)
    return x


def dpmpp_2m(model: Denoiser, x: Tensor, sigmas: Tensor, callback: StepCallback | None = None) -> Tensor:
    """DPM-Solver++(2M), data prediction, multistep, with the flow log-SNR ``λ = log((1-σ)/σ)``.

    First-order on the first step (no history; λ(1) = -inf) and on the last (σ' = 0, λ' = inf).
    """
    ones = x.new_ones(x.shape[0])
    steps = len(sigmas) - 1
    previous: tuple[Tensor, float] | None = None  # (x0, h) of the last step
    for i in range(steps):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        x0 = model(x, sigmas[i] * ones)
        if callback is not None:
            callback(i, x0, x, steps)
        h = _lambda(sigma_next) - _lambda(sigma)
        target = x0
        if previous is not None and sigma_next > 0 and math.isfinite(previous[1]):
            r = previous[1] / h
            target = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous[0]
        x = _first_order(x, target, sigma, sigma_next)
        previous = (x0, h)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {"euler": euler, "dpmpp_2m": dpmpp_2m}


def get_sampler(name: str) -> Callable[..., Tensor]:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise FlowError(f"Unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}.") from None


# --- model wrapper --------------------------------------------------------------------------------


class CFGDenoiser:
    """A diffusers SanaTransformer2DModel as a :data:`Denoiser` with classifier-free guidance.

    cond and uncond run in one batch, cond chunk first (ComfyUI's ``cond_or_uncond = [0, 1]``), so a
    BCLA cache told the branch of each chunk keeps their statistics apart. ``cfg == 1`` skips the
    uncond branch, as ComfyUI does. Embeddings with batch 1 are shared by the whole batch; batch B is
    repeated for tile batches ``[T*B, ...]`` (tile-major).
    """

    def __init__(
        self,
        transformer: torch.nn.Module,
        prompt_embeds: Tensor,
        negative_embeds: Tensor | None,
        cfg: float,
        cache: CallCache | None = None,
        prompt_mask: Tensor | None = None,
        negative_mask: Tensor | None = None,
    ) -> None:
        if cfg != 1.0 and negative_embeds is None:
            raise FlowError(f"cfg = {cfg} needs negative_embeds; pass them or set cfg = 1.")
        if negative_embeds is not None and negative_embeds.shape[0] != prompt_embeds.shape[0]:
            raise FlowError(
                f"prompt_embeds and negative_embeds have batch {prompt_embeds.shape[0]} and "
                f"{negative_embeds.shape[0]}; encode the same number of prompts for both."
            )
        self.transformer = transformer
        self.cfg = float(cfg)
        self.cache = cache
        self.embeds, self.masks = [prompt_embeds], [prompt_mask]
        if cfg != 1.0:
            self.embeds.append(negative_embeds)
            self.masks.append(negative_mask)
        length = max(e.shape[1] for e in self.embeds)
        if len({e.shape[1] for e in self.embeds}) > 1 or any(m is not None for m in self.masks):
            self.masks = [_pad_mask(e, m, length) for e, m in zip(self.embeds, self.masks, strict=True)]
            self.embeds = [torch.nn.functional.pad(e, (0, 0, 0, length - e.shape[1])) for e in self.embeds]
        else:
            self.masks = []

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        n, branches = x.shape[0], list(range(len(self.embeds)))
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(n)
        dtype = next(self.transformer.parameters()).dtype
        context = torch.cat([_repeat_to(e, n) for e in self.embeds]).to(x.device, dtype)
        mask = torch.cat([_repeat_to(m, n) for m in self.masks]).to(x.device) if self.masks else None
        if self.cache is not None:
            self.cache.set_call(float(sigma[0]), branches)
        velocity = self.transformer(
            x.repeat(len(branches), 1, 1, 1).to(dtype),
            encoder_hidden_states=context,
            timestep=(sigma * 1000).repeat(len(branches)),
            encoder_attention_mask=mask,
            return_dict=False,
        )[0].to(x.dtype)
        x0 = x.repeat(len(branches), 1, 1, 1) - _per_sample(sigma.repeat(len(branches)), x) * velocity
        if len(branches) == 1:
            return x0
        cond, uncond = x0.chunk(2)
        return uncond + self.cfg * (cond - uncond)


def _pad_mask(embeds: Tensor, mask: Tensor | None, length: int) -> Tensor:
    if mask is None:
        mask = torch.ones(embeds.shape[:2], device=embeds.device)
    return torch.nn.functional.pad(mask.float(), (0, length - mask.shape[1]))


def _repeat_to(t: Tensor, n: int) -> Tensor:
    """Embeddings of batch 1 or B for an input batch of n = T*B (tile-major: index t*B + b)."""
    if n % t.shape[0]:
        raise FlowError(
            f"The latent batch {n} is not a multiple of the prompt batch {t.shape[0]}; "
            "encode one prompt or one per image."
        )
    return t.repeat(n // t.shape[0], *([1] * (t.ndim - 1)))


# --- one tile -------------------------------------------------------------------------------------


def sigma_switch(above: Denoiser, below: Denoiser, sigma: float) -> Denoiser:
    """``above`` at model calls whose noise level is ≥ ``sigma``, ``below`` under it (every row of a
    call shares one σ)."""

    def denoiser(x: Tensor, sigmas: Tensor) -> Tensor:
        return (above if float(sigmas.flatten()[0]) >= sigma else below)(x, sigmas)

    return denoiser


def masked_denoiser(denoiser: Denoiser, job: TileJob) -> Denoiser:
    """``denoiser`` with the job's x0 hook and ComfyUI's KSamplerX0Inpaint rule at every call.

    Known cells (mask 0) are replaced by ``job.latent`` noised to the current σ with ``job.noise``
    before the model sees them, and by ``job.latent`` itself in the prediction after it; the job's
    ``mask_schedule`` (ComfyUI's ``denoise_mask_function``) may change the mask per call first, and its
    ``resample`` may replace the hooked model call in between.
    """

    def hooked(x: Tensor, sigma: Tensor) -> Tensor:
        x0 = denoiser(x, sigma)
        return x0 if job.x0_hook is None else job.x0_hook(x0, sigma)

    def model(x: Tensor, sigma: Tensor) -> Tensor:
        mask = job.denoise_mask if job.mask_schedule is None else job.mask_schedule(sigma, job.denoise_mask)
        keep = 1.0 - mask
        x = x * mask + noise_scaling(sigma, job.noise, job.latent) * keep
        x0 = hooked(x, sigma) if job.resample is None else job.resample(hooked, x, sigma, mask, job.latent)
        return x0 * mask + job.latent * keep

    return model


def sample_tile(
    denoiser: Denoiser,
    job: TileJob,
    sigmas: Tensor,
    sampler: str | Callable[..., Tensor] = "euler",
    callback: StepCallback | None = None,
) -> Tensor:
    """Run one tile from ``job.latent`` noised to ``sigmas[0]`` down to ``sigmas[-1]`` (0).

    ``sigmas[0] == 1`` starts from pure noise; a truncated schedule (``flow_sigmas(denoise=...)``)
    is img2img from ``job.latent``. Returns the clean tile latent.
    """
    if job.noise.shape != job.latent.shape:
        raise FlowError(
            f"Tile noise {tuple(job.noise.shape)} and latent {tuple(job.latent.shape)} differ; "
            "crop both from canvases of the same size."
        )
    run = get_sampler(sampler) if isinstance(sampler, str) else sampler
    x = noise_scaling(sigmas[0], job.noise, job.latent)
    return run(masked_denoiser(denoiser, job), x, sigmas, callback)
