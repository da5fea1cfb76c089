"""What the engine's parts expect of each other, in one place.

The run path (:mod:`temporal_tiling.pipeline`) only talks to these shapes: a denoiser, a tile cache
(BCLA's statistics carried from tile to tile), a global context (what a whole-scene pass tells each
tile) and a position source (which tile's canvas positions the model should use). Each has one
implementation in the engine and may have others in a host (ComfyUI) or a test.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
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

Resample = Callable[[Denoiser, Tensor, Tensor, Tensor, Tensor], Tensor]
"""``(denoiser, x, sigma, denoise_mask, known) -> x0``: one model call of an inpainted job, given the
post-CFG denoiser (x0 hook included), its input with the known cells re-noised, this call's denoise
mask and the known latent (both in the model's space); it may call the denoiser more than once
(border resampling)."""

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

    def begin_tile(self, tile: Tile, token_mask: Tensor | None = None, window: Tile | None = None) -> None:
        """Start ``tile``, sampled on ``window`` (the tile with a halo; None = the tile itself);
        ``token_mask`` [h, w] of the window marks the cells it generates (True)."""

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


@dataclass
class TileJob:
    """Everything one sampler run needs: a tile, or the whole canvas; crops are views of canvas tensors."""

    tile: Tile
    noise: Tensor
    """[B,C,h,w] this tile's crop of the one seeded canvas noise."""
    latent: Tensor
    """[B,C,h,w] known content: the canvas so far in locked cells, the input latent elsewhere."""
    denoise_mask: Tensor
    """[1,1,h,w] in [0, 1], ComfyUI's convention: 1 = generate, 0 = keep ``latent``."""
    x0_hook: X0Hook | None = None
    """Applied to the post-CFG clean prediction after every model call (global context)."""
    mask_schedule: MaskSchedule | None = None
    """Changes ``denoise_mask`` per model call (lock release); None keeps it fixed."""
    denoise: float = 1.0
    """Share of the noise schedule to run (ComfyUI's ``denoise``): below 1 refines ``latent``."""
    model_wrap: DenoiserWrap | None = None
    """Replaces each model call of this job (MultiDiffusion over the canvas); None = the model itself."""
    steps: int | None = None
    """Sampler steps of this job; None = the host's steps (guided tiles run fewer from the guide)."""
    resample: Resample | None = None
    """Replaces each post-CFG model call inside the inpainting rule (border resampling); None = one call."""
    prompt: object | None = None
    """This tile's own positive conditioning, in the host's form (tile prompts: FlowHost's prompt
    embeddings [1, L, D], ComfyHost's CONDITIONING); None = the run's prompt."""
    prompt_sigma: float = 0.0
    """With ``prompt``: the tile hears it at noise levels σ ≥ this and the run's prompt below (0: at
    every step). The high-σ steps place objects, the low ones paint detail, so a tile above σ = s takes
    its words' layout and below it paints its shared background with the same words as its neighbours."""
    scene_prompt: object | None = None
    """What the tile hears below ``prompt_sigma`` (host form); None = the run's prompt. Automatic tile
    prompts set it to the words every tile keeps, so below the gate no tile hears a word placed in one
    tile (the run's prompt, the whole prompt, would give them back); above it a tile hears ``prompt``,
    or the run's prompt when ``prompt`` is None."""


class Host(Protocol):
    """How a run reaches the model: the engine's own flow sampler (CLI, benchmarks) or ComfyUI's (nodes).

    All latents a run hands over are in the host's latent space; only the global context's x0 hook
    works in the model's own space (:meth:`model_space`).
    """

    steps: int
    """The sampler steps the user asked for (one tile, or the whole canvas, from noise)."""
    canvas_positions: bool
    """Whether the model's position encoding must follow each tile's place on the canvas (sin-cos PE,
    RoPE): then causal tiles get a cache even when no BCLA is asked for, as their position source."""
    patch_size: int
    """Latent cells per token side: the sizes a run picks itself (the whole-scene pass, the progressive
    chain's levels) are rounded to whole tokens."""

    def denoise(self, job: TileJob) -> Tensor:
        """Run the sampler over ``job`` and return its clean latent [B,C,h,w]."""

    def schedule(self, denoise: float, steps: int | None = None) -> Tensor:
        """The noise levels of ``steps`` (None = :attr:`steps`) at ``denoise``, from the first to the
        final 0, as ComfyUI's KSampler makes them (``int(steps / denoise)`` steps, the last ``steps``)."""

    def reencode(self, x0: Tensor) -> None:
        """One model call on a finished tile near σ = 0, output unused (the cache records it)."""

    def seed_call(self, guide: Tensor, noise: Tensor, sigma: float) -> None:
        """One model call on ``guide`` noised to ``sigma`` with ``noise``, output unused."""

    def cross_attention(self, latent: Tensor, noise: Tensor, sigma: float, prompt: object = None) -> Tensor:
        """The cross-attention weights [image tokens, text tokens] of ``prompt`` (host form; None: the
        run's prompt), softmax over the text tokens averaged over heads and blocks, in one model call on
        ``latent`` [1,C,h,w] (whole tokens) noised to ``sigma`` with ``noise``: automatic tile prompts
        (:mod:`word_maps`)."""

    def model_space(self, latent: Tensor) -> Tensor:
        """``latent`` as the model predicts it (ComfyUI's ``process_latent_in``; identity elsewhere)."""

    def attach_cache(self, cache: TileCache) -> None:
        """Let the model's attention read and write ``cache`` from now until :meth:`detach_cache`."""

    def detach_cache(self) -> None:
        """Give the model its own attention back."""

    def on_tile(self, index: int, count: int) -> None:
        """A tile starts (every model call of a tile, inside MultiDiffusion); may raise to cancel."""
