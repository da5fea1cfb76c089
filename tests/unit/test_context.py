"""Global context: zero strength is a no-op, each method pulls tiles to the guide, bad input is refused."""

from __future__ import annotations

import itertools
import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from diffusers import SanaTransformer2DModel

from lab.fixtures import tiny_transformer
from temporal_tiling.bcla import BCLACache, BCLAConfig, install_bcla
from temporal_tiling.context import (
    ContextError,
    ContextSettings,
    GlobalContext,
    guide_from_image,
    guide_size,
    lowpass,
    resize_latent,
    skip_weight,
)
from temporal_tiling.flow import CFGDenoiser, flow_sigmas, sample_tile
from temporal_tiling.pipeline import FlowHost, FlowSampling, global_context
from temporal_tiling.plan import make_plan
from temporal_tiling.sampling import canvas_noise, sample_causal

# 20×12 cells in 8×8 tiles, overlap 2: 3 columns × 2 rows.
PLAN = make_plan(
    width_px=20, height_px=12, tile_width_px=8, tile_height_px=8, overlap_px=2, compression=1, fit="shift"
)


def smooth_guide(seed: int, channels: int = 4, height: int = 3, width: int = 5) -> torch.Tensor:
    """A low-res guide (3×5 cells for the 12×20 canvas: 4× smaller) with distinct channel statistics."""
    g = torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(seed))
    return g * torch.linspace(0.5, 2.0, channels).view(1, -1, 1, 1) + torch.arange(channels).view(1, -1, 1, 1)


@pytest.fixture(scope="module")
def model() -> tuple[SanaTransformer2DModel, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return (
        tiny_transformer(),
        torch.randn(1, 5, 16, generator=generator),
        torch.randn(1, 5, 16, generator=generator),
    )


def run_causal(
    model, context: GlobalContext | None, cache=None, steps: int = 3, on_tile=None
) -> torch.Tensor:
    transformer, cond, uncond = model
    denoiser = CFGDenoiser(transformer, cond, uncond, 3.0, cache)
    sigmas = flow_sigmas(steps)
    noise = canvas_noise(7, (1, 4, PLAN.canvas_height, PLAN.canvas_width))
    with torch.no_grad():
        return sample_causal(
            PLAN,
            noise,
            lambda job: sample_tile(denoiser, job, sigmas),
            cache=cache,
            context=context,
            on_tile=on_tile,
        ).canvas


# --- zero strength --------------------------------------------------------------------------------


def test_zero_strength_gives_no_hook_and_no_seed() -> None:
    context = GlobalContext(smooth_guide(0))
    assert all(context.x0_hook(tile, PLAN) is None for tile in PLAN.tiles)
    assert not context.seeds_cache


def test_zero_strength_is_bit_identical_to_no_context(model) -> None:
    reference = run_causal(model, None)
    assert torch.equal(run_causal(model, GlobalContext(smooth_guide(0))), reference)
    # The hook really is wired in: a non-zero strength changes the canvas.
    changed = run_causal(model, GlobalContext(smooth_guide(0), skip_residual=0.5, stats=0.5))
    assert (changed - reference).abs().mean() > 1e-2


# --- skip residual --------------------------------------------------------------------------------


def test_skip_weight_decays_with_sigma() -> None:
    sigmas = torch.linspace(1.0, 0.0, 11)
    weights = skip_weight(sigmas, 0.8, 3.0)
    assert weights[0] == pytest.approx(0.8) and weights[-1] == 0
    assert torch.all(weights[1:] < weights[:-1])
    assert skip_weight(torch.tensor(0.5), 1.0, 3.0) == pytest.approx(0.125)  # ((1 - cos π/2)/2)^3


def test_skip_residual_pulls_toward_guide_low_frequencies() -> None:
    guide = smooth_guide(1)
    context = GlobalContext(guide, skip_residual=1.0)
    tile = PLAN.tiles[4]
    crop = context.guide_crop(tile, PLAN)
    scale = context.upsampling(PLAN)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    hook = context.x0_hook(tile, PLAN)

    def low_distance(x: torch.Tensor) -> float:
        return float((lowpass(x, scale) - lowpass(crop, scale)).pow(2).mean().sqrt())

    distances = [low_distance(hook(x0, torch.tensor(s))) for s in (0.0, 0.3, 0.6, 0.8, 1.0)]
    assert all(b < a for a, b in itertools.pairwise(distances)), distances
    assert distances[-1] < 0.35 * distances[0], distances
    assert torch.equal(hook(x0, torch.tensor(0.0)), x0)  # σ = 0: the tile owns its detail
    # The fine texture (what the guide cannot know) changes much less than the low band.
    out = hook(x0, torch.tensor(1.0))
    high_change = (out - lowpass(out, scale)) - (x0 - lowpass(x0, scale))
    low_change = lowpass(out, scale) - lowpass(x0, scale)
    assert high_change.pow(2).mean() < 0.2 * low_change.pow(2).mean()
    # Per-sample σ (ComfyUI's post-CFG sigma is [B]) weights each sample on its own.
    mixed = hook(x0, torch.tensor([1.0, 0.0]))
    assert torch.equal(mixed[1], x0[1]) and torch.allclose(mixed[0], out[0])


def test_skip_power_zero_holds_the_low_band_pull_to_the_last_call() -> None:
    """skip_power 0: the guide's band is pulled at full strength at every σ > 0 (a tile's low band then
    cannot drift into its own top-to-bottom gradient late in the schedule, the tile-row staircase)."""
    assert torch.equal(skip_weight(torch.tensor([0.9, 0.1, 0.01]), 1.0, 0.0), torch.ones(3))
    guide = smooth_guide(1)
    tile = PLAN.tiles[4]
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    held = GlobalContext(guide, skip_residual=1.0, skip_power=0.0).x0_hook(tile, PLAN)
    decayed = GlobalContext(guide, skip_residual=1.0).x0_hook(tile, PLAN)
    crop, scale = GlobalContext(guide).guide_crop(tile, PLAN), GlobalContext(guide).upsampling(PLAN)

    def low_distance(x: torch.Tensor) -> float:
        return float((lowpass(x, scale) - lowpass(crop, scale)).pow(2).mean().sqrt())

    late = torch.tensor(0.05)
    assert low_distance(held(x0, late)) < 0.35 * low_distance(decayed(x0, late))


def test_edge_release_leaves_the_canvas_border_to_the_tile_and_holds_the_interior() -> None:
    """Released over one guide cell (4 canvas cells here): the outermost canvas row and column of a corner
    tile are not pulled at all, cells a guide cell in are pulled as without the release, and a tile's
    edge inside the canvas is pulled as before."""
    guide, corner, middle = smooth_guide(1), PLAN.tiles[0], PLAN.tiles[1]
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor(0.5)

    def pulled(tile, release: float) -> torch.Tensor:
        context = GlobalContext(guide, skip_residual=1.0, skip_power=0.0, edge_release=release)
        return context.x0_hook(tile, PLAN)(x0, sigma)

    released, held = pulled(corner, 1.0), pulled(corner, 0.0)
    assert (corner.y, corner.x) == (0, 0) and GlobalContext(guide).upsampling(PLAN) == 4.0
    assert torch.equal(released[..., 0, :], x0[..., 0, :]) and torch.equal(released[..., :, 0], x0[..., :, 0])
    assert (held[..., 0, :] - x0[..., 0, :]).abs().mean() > 0.1
    assert torch.allclose(released[..., 4:, 4:], held[..., 4:, 4:])
    inner_gap = (released[..., 2, 2:] - held[..., 2, 2:]).abs().mean()
    assert 0 < inner_gap < (released[..., 0, 2:] - held[..., 0, 2:]).abs().mean()  # a ramp, not a step
    assert middle.y == 0 and middle.x > 0
    assert torch.allclose(pulled(middle, 1.0)[..., 4:, :], pulled(middle, 0.0)[..., 4:, :])
    with pytest.raises(ContextError, match="edge_release must be ≥ 0"):
        GlobalContext(guide, skip_residual=1.0, edge_release=-1.0)


def test_a_default_context_holds_guideds_pull_to_the_last_step(model) -> None:
    """Causal's global context pulls as guided does unless told otherwise: a causal tile that lets go of
    the guide late paints its window's own gradient and, with tile prompts, its own copy of an object."""
    transformer, cond, uncond = model
    host = FlowHost(transformer, cond, uncond, FlowSampling(steps=3, cfg=3.0))
    guide, tile = smooth_guide(1), PLAN.tiles[4]
    canvas = torch.zeros(1, 4, PLAN.canvas_height, PLAN.canvas_width)
    context = global_context(ContextSettings(guide, bcla_seed=0.0), PLAN, host, None, canvas, denoise=1.0)
    hook = context.x0_hook(tile, PLAN)
    assert hook is not None
    guided = GlobalContext(guide, skip_residual=1.0, stats=0.5, skip_power=0.0).x0_hook(tile, PLAN)
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for sigma in (0.9, 0.05):
        assert torch.allclose(hook(x0, torch.tensor(sigma)), guided(x0, torch.tensor(sigma)))


def test_skip_residual_pulls_the_sampled_canvas_toward_the_guide(model) -> None:
    guide = smooth_guide(6) * 0.5
    target = GlobalContext(guide).guide_crop(PLAN.whole_canvas, PLAN)  # the guide at canvas size
    scale = GlobalContext(guide).upsampling(PLAN)

    def distance(canvas: torch.Tensor) -> float:
        return float((lowpass(canvas, scale) - lowpass(target, scale)).pow(2).mean().sqrt())

    distances = [
        distance(run_causal(model, GlobalContext(guide, skip_residual=s), steps=4)) for s in (0.0, 0.5, 1.0)
    ]
    assert distances[0] > distances[1] > distances[2], distances


# --- stats (CMod / AdaIN) -------------------------------------------------------------------------


@pytest.mark.parametrize("guide_cells", [(12, 20), (3, 5)], ids=["full-res guide", "4x smaller guide"])
def test_stats_moves_tile_statistics_toward_guide(guide_cells: tuple[int, int]) -> None:
    guide = smooth_guide(3, height=guide_cells[0], width=guide_cells[1])
    tile = PLAN.tiles[2]
    coarse = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(4)) * 0.6 - 1.0
    x0 = F.interpolate(coarse, size=(8, 8), mode="bicubic") + 0.05 * torch.randn(2, 4, 8, 8)
    reference = GlobalContext(guide, stats=1.0)
    scale = reference.upsampling(PLAN)
    crop = lowpass(reference.guide_crop(tile, PLAN), scale)

    def distance(x: torch.Tensor) -> float:
        low = lowpass(x, scale)
        mean_gap = low.mean(dim=(2, 3)) - crop.mean(dim=(2, 3))
        std_gap = low.std(dim=(2, 3), unbiased=False) - crop.std(dim=(2, 3), unbiased=False)
        return float(mean_gap.abs().mean() + std_gap.abs().mean())

    strengths = (0.0, 0.25, 0.5, 0.75, 1.0)
    distances = [distance(x0)] + [
        distance(GlobalContext(guide, stats=s).x0_hook(tile, PLAN)(x0, torch.tensor(0.0)))
        for s in strengths[1:]
    ]
    assert all(b < a for a, b in itertools.pairwise(distances)), distances
    assert distances[0] > 1.0, distances
    if scale <= 1:  # plain AdaIN: exact match at strength 1, halfway at 0.5
        assert distances[-1] < 1e-4 and distances[2] == pytest.approx(distances[0] / 2, rel=1e-3), distances
    else:  # the Gaussian low-pass is not a projection: matched up to the band edge
        assert distances[-1] < 0.1 * distances[0], distances


# --- bcla seed (bottleneck attention) -------------------------------------------------------------


@contextmanager
def installed_cache(model):
    cache = BCLACache(BCLAConfig(), PLAN)
    undo = install_bcla(model[0], cache)
    try:
        yield cache
    finally:
        undo()


def seed_context(
    model, cache, guide: torch.Tensor, strength: float = 1.0, seed_sigma: float = 0.5
) -> GlobalContext:
    """The run path's seed pass on the tiny model (3 steps; ``seed_sigma`` 0 = every level)."""
    transformer, cond, uncond = model
    host = FlowHost(transformer, cond, uncond, FlowSampling(steps=3, cfg=3.0))
    host.attach_cache(cache)
    try:
        settings = ContextSettings(guide, bcla_seed=strength, seed_sigma=seed_sigma)
        canvas = torch.zeros(1, guide.shape[1], PLAN.canvas_height, PLAN.canvas_width)
        return global_context(settings, PLAN, host, cache, canvas, denoise=1.0)
    finally:
        host.detach_cache()


def test_bcla_seed_stats_have_a_tiles_shape_and_the_cache_norm_grows(model) -> None:
    with installed_cache(model) as cache:
        context = seed_context(model, cache, smooth_guide(5))
        bigger = seed_context(model, cache, smooth_guide(5, height=6, width=10)).seed_stats
        norms: list[float] = []
        seeded = run_causal(model, context, cache, on_tile=lambda index, count: norms.append(cache.norm()))
        norms.append(cache.norm())
        tile_store = cache.earlier_stats  # cumulative: the running sum of the tiles' own statistics
    seed = context.seed_stats
    assert list(seed.data) == [0.5]  # one model call at σ = 0.5, both CFG branches
    tile_slots = next(iter(tile_store.data.values()))
    assert set(seed.data[0.5]) == set(tile_slots) and len(tile_slots) == 2 * 2  # 2 layers × 2 branches
    for slot, stats in seed.data[0.5].items():
        assert stats.shape == tile_slots[slot].shape == (1, 2, 9, 8)  # [B, heads, Dv+1, Dk]
        assert stats.dtype == torch.float32
    # Bottleneck at O(D²): four times the guide tokens, same bytes.
    assert bigger.nbytes() == seed.nbytes() > 0
    assert seed.norm() > 0
    assert norms[0] == 0 and all(b > a for a, b in itertools.pairwise(norms)), norms
    with installed_cache(model) as cache:
        unseeded = run_causal(model, None, cache)
    with installed_cache(model) as cache:
        zero = run_causal(model, GlobalContext(smooth_guide(5), seed_stats=seed), cache)
    assert torch.equal(zero, unseeded)  # bcla_seed = 0 keeps the cache unseeded
    assert (seeded - unseeded).abs().mean() > 1e-3


def test_bcla_seed_at_every_noise_level(model) -> None:
    levels = flow_sigmas(3)[:-1]
    with installed_cache(model) as cache:
        seed = seed_context(model, cache, smooth_guide(5), seed_sigma=0.0).seed_stats
    assert sorted(seed.data) == sorted(round(float(s), 6) for s in levels)


def test_bcla_seed_needs_a_cache_the_model_writes(model) -> None:
    transformer, cond, uncond = model
    settings = ContextSettings(smooth_guide(5), bcla_seed=1.0)
    canvas = torch.zeros(1, 4, PLAN.canvas_height, PLAN.canvas_width)
    host = FlowHost(transformer, cond, uncond, FlowSampling(steps=3, cfg=3.0))
    with pytest.raises(ContextError, match="BCLA Cache node"):
        global_context(settings, PLAN, host, None, canvas, denoise=1.0)
    with pytest.raises(ContextError, match="recorded no attention statistics"):
        global_context(settings, PLAN, host, BCLACache(BCLAConfig(), PLAN), canvas, denoise=1.0)


def test_stats_matches_the_std_only_as_noise_goes() -> None:
    guide, tile = smooth_guide(3, height=12, width=20), PLAN.tiles[1]
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6)) * 0.5
    crop = GlobalContext(guide).guide_crop(tile, PLAN)
    hook = GlobalContext(guide, stats=1.0).x0_hook(tile, PLAN)
    std_gaps = []
    for sigma in (1.0, 0.5, 0.0):
        out = hook(x0, torch.tensor(sigma))
        assert torch.allclose(out.mean(dim=(2, 3)), crop.mean(dim=(2, 3)), atol=1e-5)  # mean: every σ
        std_gaps.append(float((out.std(dim=(2, 3)) - crop.std(dim=(2, 3))).abs().mean()))
    initial = float((x0.std(dim=(2, 3)) - crop.std(dim=(2, 3))).abs().mean())
    assert std_gaps[0] == pytest.approx(initial, rel=1e-4)  # σ = 1: the shrunk spread is left alone
    assert std_gaps[1] == pytest.approx(initial / 2, rel=1e-3) and std_gaps[2] < 1e-4


def test_stats_does_not_blow_up_a_flat_prediction() -> None:
    flat = torch.full((1, 4, 8, 8), 0.5) + 1e-4 * torch.randn(
        1, 4, 8, 8, generator=torch.Generator().manual_seed(5)
    )
    out = GlobalContext(smooth_guide(3), stats=1.0).x0_hook(PLAN.tiles[0], PLAN)(flat, torch.tensor(0.0))
    assert torch.isfinite(out).all()
    assert (out - out.mean(dim=(2, 3), keepdim=True)).abs().max() <= 10 * (flat - 0.5).abs().max() + 1e-6


# --- bad input ------------------------------------------------------------------------------------


def test_guide_with_wrong_channel_count_names_the_mismatch() -> None:
    hook = GlobalContext(smooth_guide(0, channels=3), stats=0.5).x0_hook(PLAN.tiles[0], PLAN)
    with pytest.raises(ContextError, match="3 channels but the model's latent has 4"):
        hook(torch.zeros(1, 4, 8, 8), torch.tensor(1.0))


def test_guide_with_wrong_channel_count_through_the_sampler(model) -> None:
    with pytest.raises(ValueError, match="channels"):
        run_causal(model, GlobalContext(smooth_guide(0, channels=8), skip_residual=0.5), steps=1)


def test_guide_far_from_canvas_aspect_ratio_is_refused() -> None:
    context = GlobalContext(
        smooth_guide(0, height=5, width=3), skip_residual=0.5
    )  # portrait, canvas landscape
    with pytest.raises(ContextError, match="aspect ratio"):
        context.x0_hook(PLAN.tiles[0], PLAN)
    # One cell of rounding on a tiny guide is fine (2×4 vs 12×20 is 2.0 vs 1.67).
    assert GlobalContext(smooth_guide(0, height=2, width=4), stats=0.5).x0_hook(PLAN.tiles[0], PLAN)


def test_guide_batch_must_be_one_or_canvas_batch() -> None:
    guide = smooth_guide(0).repeat(3, 1, 1, 1)
    hook = GlobalContext(guide, stats=0.5).x0_hook(PLAN.tiles[0], PLAN)
    with pytest.raises(ContextError, match="batch 3 but the canvas batch is 2"):
        hook(torch.zeros(2, 4, 8, 8), torch.tensor(1.0))


@pytest.mark.parametrize(
    ("guide", "kwargs", "message"),
    [
        (smooth_guide(0).index_fill(3, torch.tensor([1]), math.nan), {}, "NaN"),
        (torch.zeros(4, 3, 5), {}, r"\[B, C, h, w\]"),
        (smooth_guide(0), {"stats": 1.5}, "stats strength must be between 0 and 1"),
        (smooth_guide(0), {"skip_residual": -0.1}, "skip_residual strength"),
        (smooth_guide(0), {"bcla_seed": math.nan}, "bcla_seed strength"),
        (smooth_guide(0), {"bcla_seed": 1.0}, "needs seed statistics"),
        (smooth_guide(0), {"skip_power": -1.0}, "skip_power"),
    ],
)
def test_bad_context_is_refused(guide, kwargs, message: str) -> None:
    with pytest.raises(ContextError, match=message):
        GlobalContext(guide, **kwargs)


# --- building a guide -----------------------------------------------------------------------------


def fake_encode(image: torch.Tensor) -> torch.Tensor:
    """A 4× 'VAE': [-1, 1] scaling, average pooling, a fourth channel of luminance."""
    x = F.avg_pool2d(image * 2 - 1, 4)
    return torch.cat([x, x.mean(dim=1, keepdim=True)], dim=1)


def test_guide_from_image_resizes_then_encodes() -> None:
    plan = make_plan(
        width_px=640,
        height_px=384,
        tile_width_px=256,
        tile_height_px=256,
        overlap_px=64,
        compression=32,
        fit="shift",
    )  # 20×12 cells of 32 px
    size = guide_size(plan, 80)
    assert size == (64, 96) and size[0] % 32 == 0  # 80 px long side rounds to whole 32 px cells
    image = torch.rand(1, 3, 384, 640, generator=torch.Generator().manual_seed(0))
    guide = guide_from_image(image, fake_encode, size=(48, 80))
    assert guide.shape == (1, 4, 12, 20)
    assert guide[:, 3].mean() == pytest.approx(float(image.mean() * 2 - 1), abs=1e-2)
    with pytest.raises(ContextError, match="NaN"):
        guide_from_image(image.index_fill(2, torch.tensor([0]), math.nan), fake_encode)
    with pytest.raises(ContextError, match=r"\[0, 1\]"):
        guide_from_image(image * 255, fake_encode)
    with pytest.raises(ContextError, match="RGB"):
        guide_from_image(image[:, :2], fake_encode)


def test_guide_crop_resizes_only_the_tile_not_the_canvas(monkeypatch) -> None:
    """A tile's guide is the guide enlarged to the canvas and cut to the tile, made at the tile's size:
    on a 16K-wide canvas (256 × 2048 cells) no tensor near the canvas's size is made per tile."""
    guide = smooth_guide(3, channels=16, height=8, width=64)
    plan = make_plan(
        width_px=2048 * 8,
        height_px=256 * 8,
        tile_width_px=512,
        tile_height_px=512,
        overlap_px=64,
        compression=8,
        max_tiles=10**6,
    )
    tile = plan.tiles[45]
    expected = resize_latent(guide, 256, 2048)[(..., *tile.slices)]
    made: list[int] = []
    interpolate = F.interpolate

    def counted(*args, **kwargs) -> torch.Tensor:
        out = interpolate(*args, **kwargs)
        made.append(out.numel())
        return out

    monkeypatch.setattr(F, "interpolate", counted)
    crop = GlobalContext(guide).guide_crop(tile, plan)
    torch.testing.assert_close(crop, expected, atol=1e-5, rtol=1e-5)
    assert made and max(made) < 16 * 256 * 2048 / 8
