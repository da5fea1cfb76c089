"""One spec for a batch of pairs on one canvas, through the pack's own run path (``pipeline.run``).

:class:`BenchHost` is the engine's :class:`~temporal_tiling.pipeline.FlowHost` plus what the
benchmark measures or varies and users never do: the last block's features at the final step, the
cache norm before every tile, a cache zeroed before every tile and an all-ones denoise mask (the
verification tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from temporal_tiling import pipeline
from temporal_tiling.bcla import BCLACache, BCLAConfig
from temporal_tiling.context import ContextSettings
from temporal_tiling.contracts import Denoiser, TileCache, TileJob
from temporal_tiling.flow import flow_sigmas
from temporal_tiling.pipeline import CAUSAL_METHODS, FlowHost, FlowSampling, GuideFirst, RunSettings
from temporal_tiling.plan import Tile, TilePlan
from temporal_tiling.sampling import CanvasResult, LockRelease

from .model import CFG, Model
from .pairs import Pairs, pair_noise
from .specs import Spec, plan_for

SEED_PASS_OFFSET = 7
"""The bcla_seed pass's noise seed is the first pair's seed plus this."""


class FeatureTap:
    """Captures the last transformer block's cond-branch output during the final sampling step."""

    def __init__(self, transformer: torch.nn.Module, last_sigma: float, batch: int) -> None:
        self.last_sigma, self.batch, self.active, self.enabled = last_sigma, batch, False, True
        self.calls: list[tuple[Tensor, tuple[int, int]]] = []
        self.shape: tuple[int, int] = (0, 0)
        self.handle = transformer.transformer_blocks[-1].register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        if self.active:
            self.calls.append((output[: self.batch].detach().float(), self.shape))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Model calls inside are not the run's tiles (guide and seed passes): never captured."""
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def wrap(self, denoiser: Denoiser) -> Denoiser:
        def model(x: Tensor, sigma: Tensor) -> Tensor:
            self.active = self.enabled and abs(float(sigma.reshape(-1)[0]) - self.last_sigma) < 1e-7
            self.shape = tuple(x.shape[-2:])
            try:
                return denoiser(x, sigma)
            finally:
                self.active = False

        return model

    def features(self, plan: TilePlan) -> Tensor | None:
        """[T, B, D] mean-pooled per tile (crops of the canvas for one canvas-wide call)."""
        self.handle.remove()
        calls = self.calls
        if len(calls) == len(plan):
            return torch.stack([h.mean(1) for h, _ in calls])
        if len(calls) == 1:
            h, (height, width) = calls[0]
            grid = h.unflatten(1, (height, width))
            return torch.stack([grid[:, t.slices[0], t.slices[1]].mean((1, 2)) for t in plan.tiles])
        return None


class BenchHost(FlowHost):
    """:class:`FlowHost` (CFG, Euler) on a batch of pairs, with the benchmark's taps and variations."""

    def __init__(
        self, transformer: torch.nn.Module, pairs: Pairs, spec: Spec, plan: TilePlan, steps: int, shift: float
    ):
        self.spec, self.plan = spec, plan
        self.windows: list[Tile] = []
        """The plan's tiles grown by the run's halo (``RunSettings.tile_halo``), once it is known."""
        self.norms: list[float] = []
        """Cache norm as each tile starts."""
        self.run_cache: BCLACache | None = None
        """The run's BCLA cache (``pipeline.run`` makes a BCLACache), kept after the run detaches it."""
        self.tap = FeatureTap(transformer, float(flow_sigmas(steps, shift)[-2]), len(pairs))
        super().__init__(
            transformer,
            pairs.embeds,
            pairs.negative,
            FlowSampling(steps, CFG, shift=shift),
            prompt_mask=pairs.mask,
            negative_mask=pairs.negative_mask,
        )

    def _denoiser(self) -> Denoiser:
        # FlowHost rebuilds its denoiser here whenever a cache is attached or detached: each is tapped.
        return self.tap.wrap(super()._denoiser())

    def denoise(self, job: TileJob) -> Tensor:
        if not self.spec.lock:
            job = replace(job, denoise_mask=torch.ones_like(job.denoise_mask))
        self.tap.last_sigma = float(self.schedule(job.denoise, job.steps)[-2])  # guided tiles: their own
        # a guided run's whole-scene pass is no tile of the plan (it may have a tile's size: identity); a
        # tile sampled on its halo window is (its features are the window's)
        tile = any(job.tile is tile for tile in self.plan.tiles) or job.tile in self.windows
        if job.tile != self.plan.whole_canvas and not tile:
            with self.tap.paused():
                return super().denoise(job)
        return super().denoise(job)

    def on_tile(self, index: int, count: int) -> None:
        super().on_tile(index, count)
        if self.run_cache is None:
            return
        self.norms.append(self.run_cache.norm())
        if self.spec.zero_cache:  # verification test 2: the processors add an all-zero cache
            self.run_cache.zero_()

    def seed_call(self, guide: Tensor, noise: Tensor, sigma: float) -> None:
        with self.tap.paused():
            super().seed_call(guide, noise, sigma)

    def attach_cache(self, cache: TileCache) -> None:
        self.run_cache = cache
        super().attach_cache(cache)

    def render_guide(self, noise: Tensor) -> Tensor:
        """The benchmark's guide: a native pass at half the canvas's latent size, its noise the canvas
        noise average-pooled 2×2 and rescaled to unit variance.

        The pack's guide pass (``pipeline.render_guide``) draws its noise from the run's seed at the
        model's tile size. This one is drawn from each pair's own canvas noise, so the guide shares
        that noise's coarse structure instead of being another picture of the prompt, and the global
        context's effect is measured against the native render of the same noise. The committed
        results (``bench/results/quality.*``) were measured with it.
        """
        height, width = (max(1, round(side / 2)) for side in noise.shape[-2:])
        pooled = F.adaptive_avg_pool2d(noise, (height, width))
        low_noise = pooled / pooled.std(dim=(1, 2, 3), keepdim=True)
        mask = low_noise.new_ones(1, 1, height, width)
        with self.tap.paused():
            return self.denoise(
                TileJob(Tile.whole(height, width), low_noise, torch.zeros_like(low_noise), mask)
            )


@dataclass
class Run:
    spec: Spec
    plan: TilePlan
    result: CanvasResult
    seconds: float
    """Sampling wall seconds per canvas (batch time / B), guide and seed passes included."""
    cpu_seconds: float
    """The same in process CPU seconds: the work, independent of what else the shared machine runs."""
    features: Tensor | None
    norms: list[float] = field(default_factory=list)


def settings_for(spec: Spec, guide: Tensor | None, seed_pass_seed: int) -> RunSettings:
    """The pipeline's settings for ``spec`` (``guide``: the global context's, when the spec has one;
    ``guided`` renders its own from ``seed_pass_seed``)."""
    causal = spec.kind in CAUSAL_METHODS
    cache_config = None
    if causal and spec.mode != "off":
        cache_config = BCLAConfig(
            mode=spec.mode,
            strength=spec.strength,
            strength_end=spec.strength_end,
            source=spec.source,
            decay=spec.decay,
            record_locked=spec.record_locked,
        )
    context = None
    if guide is not None:
        context = ContextSettings(  # DemoFusion's decaying pull (power 3), the one these specs measured
            guide, spec.skip, spec.stats, spec.seed, 3.0, seed_sigma=spec.seed_sigma, seed=seed_pass_seed
        )
    guide_first = None
    if spec.kind == "guided":
        guide_first = GuideFirst() if cache_config is not None else GuideFirst(bcla_seed=0.0)
    return RunSettings(
        method=spec.kind,
        seed=seed_pass_seed,
        lock_feather=spec.feather,
        lock_release=LockRelease(1.0 - spec.lock_end, spec.release_band) if causal else None,
        cache_config=cache_config,
        context=context,
        guide_first=guide_first,
    )


@torch.no_grad()
def run(model: Model, pairs: Pairs, canvas: str, spec: Spec, steps: int) -> Run:
    """Sample one method for all pairs of ``pairs`` on ``canvas``."""
    transformer = model.lora if spec.lora else model.transformer
    if transformer is None:
        raise ValueError("No temporal LoRA is loaded; drop the LoRA spec or pass --lora.")
    plan = plan_for(canvas, spec, model.compression)
    channels = transformer.config.in_channels
    noise = pair_noise(pairs.seeds, (channels, plan.canvas_height, plan.canvas_width))
    host = BenchHost(transformer, pairs, spec, plan, steps, model.shift)
    start, cpu_start = time.perf_counter(), time.process_time()
    try:
        guide = host.render_guide(noise) if spec.has_context else None
        settings = settings_for(spec, guide, pairs.seeds[0] + SEED_PASS_OFFSET)
        if settings.tile_halo > 0:
            host.windows = [plan.window(tile, settings.tile_halo) for tile in plan.tiles]
        result = pipeline.run(plan, host, settings, (len(pairs), channels), device=host.device, noise=noise)
    finally:
        features = host.tap.features(plan)
    if host.run_cache is not None:
        host.norms.append(host.run_cache.norm())
    seconds = (time.perf_counter() - start) / len(pairs)
    cpu_seconds = (time.process_time() - cpu_start) / len(pairs)
    return Run(spec, plan, result, seconds, cpu_seconds, features, host.norms)
