"""Tile loops of temporal_tiling.sampling on a tiny random SANA transformer (deterministic, CPU)."""

from __future__ import annotations

import itertools
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from lab.fixtures import tiny_transformer
from temporal_tiling import pipeline
from temporal_tiling.bcla import BCLACache, BCLAConfig, install_bcla
from temporal_tiling.context import lowpass
from temporal_tiling.contracts import TileJob
from temporal_tiling.flow import CFGDenoiser, flow_sigmas, sample_tile
from temporal_tiling.pipeline import (
    FlowHost,
    FlowSampling,
    GuideFirst,
    RunSettings,
    generate,
    guide_levels,
    guide_plan,
    latent_upscale,
    pixel_upscale,
)
from temporal_tiling.plan import TilePlan, make_plan
from temporal_tiling.sampling import (
    CLEAN_SIGMA,
    LockRelease,
    SamplingError,
    canvas_noise,
    lock_mask,
    multidiffusion_denoiser,
    sample_causal,
    sample_independent,
)

STEPS = 4


def overlapping_plan(order: str = "raster") -> TilePlan:
    """14×14 cells in 2×2 tiles of 8×8 cells overlapping by 2."""
    return make_plan(
        width_px=112,
        height_px=112,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=16,
        compression=8,
        order=order,
        fit="shift",
    )


def side_by_side_plan() -> TilePlan:
    """8×16 cells in two 8×8 tiles that do not overlap."""
    return make_plan(
        width_px=128,
        height_px=64,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=0,
        compression=8,
        fit="shift",
    )


def run(model, prompts, plan, **kwargs):
    options = {"steps": STEPS, "cfg": 3.0, "seed": 11, "method": "causal", **kwargs}
    return generate(plan, model, prompts[0], prompts[1], **options)


def processor_names(model) -> list[str]:
    return [type(p).__name__ for p in model.attn_processors.values()]


# --- lock mask ------------------------------------------------------------------------------------


def test_lock_mask_ramps_linearly_from_known_to_new() -> None:
    plan = side_by_side_plan()
    assert torch.equal(lock_mask(plan, 0, 2), torch.ones(1, 1, 8, 8))
    overlap = make_plan(
        width_px=96,
        height_px=64,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=32,
        compression=8,
        fit="shift",
    )  # tiles overlap by 4 columns
    hard = lock_mask(overlap, 1, 0, 0)[0, 0, 0]
    assert hard.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    soft = lock_mask(overlap, 1, 2, 0)[0, 0, 0]
    assert torch.allclose(soft, torch.tensor([0, 0, 1 / 3, 2 / 3, 1, 1, 1, 1]))
    with pytest.raises(SamplingError, match="lock_feather"):
        lock_mask(overlap, 1, -1)


def test_lock_margin_regenerates_the_earlier_tiles_outermost_cells() -> None:
    plan = overlapping_plan()  # tile 3 (bottom right) overlaps tiles 0, 1, 2 by 2 cells
    inner = torch.arange(8)
    for margin, first_new in ((0, 2), (1, 1), (2, 0)):
        expected = ((inner[:, None] >= first_new) & (inner[None, :] >= first_new)).float()
        assert torch.equal(lock_mask(plan, 3, 0, margin)[0, 0], expected), margin
    # Tile 1 (top right): tile 0's top edge is the canvas border and stays locked; its bottom
    # edge (canvas row 7) and right edge (column 7, tile 1's column 1) are regenerated.
    known = lock_mask(plan, 1, 0, 1)[0, 0] == 0
    assert known[:7, 0].all() and not known[7:, 0].any() and not known[:, 1:].any()
    with pytest.raises(SamplingError, match="lock_margin"):
        lock_mask(plan, 3, 0, -1)


def test_lock_margin_reaches_generate(model, prompts) -> None:
    plan = overlapping_plan()
    kept, regenerated = (run(model, prompts, plan, lock_margin=m).tiles.split(1) for m in (0, 1))
    assert torch.equal(kept[0], regenerated[0])  # the first tile has no earlier edge
    assert all((a - b).abs().max() > 1e-3 for a, b in zip(kept[1:], regenerated[1:], strict=True))


# --- determinism and order ------------------------------------------------------------------------


def test_same_seed_gives_same_canvas_whatever_runs_in_between(model, prompts) -> None:
    plan = overlapping_plan()
    first = run(model, prompts, plan, cache_config=BCLAConfig())
    torch.manual_seed(123)
    torch.randn(1000)  # unrelated work consuming the global RNG
    run(model, prompts, plan, method="independent", seed=99)
    second = run(model, prompts, plan, cache_config=BCLAConfig())
    assert torch.equal(first.canvas, second.canvas) and torch.equal(first.tiles, second.tiles)
    other_seed = run(model, prompts, plan, cache_config=BCLAConfig(), seed=12)
    assert (other_seed.canvas - first.canvas).abs().mean() > 0.05


def test_tiles_run_in_plan_order_and_order_changes_the_result(model, prompts) -> None:
    raster, serpentine = overlapping_plan("raster"), overlapping_plan("serpentine")
    seen: list[tuple[int, int]] = []
    denoiser = CFGDenoiser(model, prompts[0], prompts[1], cfg=3.0)
    sigmas = flow_sigmas(STEPS)

    def denoise_tile(job: TileJob) -> torch.Tensor:
        seen.append((job.tile.row, job.tile.col))
        return sample_tile(denoiser, job, sigmas)

    noise = canvas_noise(11, (1, 4, 14, 14))
    with torch.no_grad():
        a = sample_causal(raster, noise, denoise_tile, lock_feather=0, lock_margin=0)
        b = sample_causal(serpentine, noise, denoise_tile, lock_feather=0, lock_margin=0)
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1), (0, 0), (0, 1), (1, 1), (1, 0)]
    assert (a.canvas - b.canvas)[..., 8:, :].abs().max() > 1e-2  # the bottom row saw different content
    assert torch.equal(a.canvas[..., :8, :], b.canvas[..., :8, :])  # the shared first row is identical


# --- locking --------------------------------------------------------------------------------------


def test_hard_lock_keeps_the_content_earlier_tiles_produced(model, prompts) -> None:
    plan = overlapping_plan("spiral")
    denoiser = CFGDenoiser(model, prompts[0], prompts[1], cfg=3.0)
    jobs: list[TileJob] = []

    def denoise_tile(job: TileJob) -> torch.Tensor:
        jobs.append(job)
        return sample_tile(denoiser, job, flow_sigmas(STEPS), "dpmpp_2m")

    with torch.no_grad():
        result = sample_causal(
            plan, canvas_noise(3, (2, 4, 14, 14)), denoise_tile, lock_feather=0, lock_margin=0
        )
    canvas = torch.zeros(2, 4, 14, 14)
    for job, out in zip(jobs, result.tiles.split(2), strict=True):
        known = plan.known_mask(job.tile.index)
        rows, cols = job.tile.slices
        assert torch.equal(job.latent[..., known], canvas[..., rows, cols][..., known])
        assert torch.equal(out[..., known], job.latent[..., known])  # at σ = 0: locked cells untouched
        assert (out[..., ~known] - job.latent[..., ~known]).abs().mean() > 0.1  # new cells were generated
        canvas[..., rows, cols] = out
    assert torch.equal(canvas, result.canvas)


def test_feathered_lock_changes_only_the_ramp(model, prompts) -> None:
    plan = overlapping_plan()
    denoiser = CFGDenoiser(model, prompts[0], prompts[1], cfg=3.0)
    jobs: list[TileJob] = []

    def denoise_tile(job: TileJob) -> torch.Tensor:
        jobs.append(job)
        return sample_tile(denoiser, job, flow_sigmas(STEPS))

    with torch.no_grad():
        result = sample_causal(
            plan, canvas_noise(3, (1, 4, 14, 14)), denoise_tile, lock_feather=1, lock_margin=0
        )
    out, job = result.tiles[1:2], jobs[1]  # tile 1 overlaps tile 0 in its first two columns
    assert job.denoise_mask[0, 0, 0, :3].tolist() == [0.0, 0.5, 1.0]
    assert torch.equal(out[..., :1], job.latent[..., :1])  # deep inside: kept
    assert (out[..., 1] - job.latent[..., 1]).abs().mean() > 1e-3  # the ramp blends
    assert torch.equal(result.canvas[..., :6, 6:8], out[..., :6, :2])  # written whole (blend included)


def test_lock_release_loosens_known_cells_as_sigma_falls() -> None:
    overlap = make_plan(
        width_px=96,
        height_px=64,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=32,
        compression=8,
        fit="shift",
    )  # tile 1's first 4 columns are known
    mask = lock_mask(overlap, 1, 0, 0).expand(2, 4, 8, 8)  # ComfyUI hands the mask over as [B, C, h, w]
    everywhere, near_edge = LockRelease(0.5), LockRelease(0.5, band=1)
    assert torch.equal(everywhere(torch.tensor([1.0, 1.0]), mask), mask)  # σ = 1: the full lock
    assert torch.equal(LockRelease(0.0)(torch.tensor(0.0), mask), mask)  # amount 0: ComfyUI's lock
    assert everywhere(torch.tensor(0.4), mask)[0, 0, 0].tolist() == pytest.approx([0.3] * 4 + [1.0] * 4)
    assert near_edge(torch.tensor(0.0), mask)[1, 3, 5].tolist() == [0, 0, 0, 0.5, 1, 1, 1, 1]
    with pytest.raises(SamplingError, match="lock_release"):
        LockRelease(1.5)
    with pytest.raises(SamplingError, match="release_band"):
        LockRelease(0.5, band=-1)


def test_lock_release_averages_old_and_new_content_in_the_overlap() -> None:
    """Each tile predicts a constant (its index + 1): what the overlap ends as is the blend weight."""
    plan = make_plan(
        width_px=96,
        height_px=64,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=32,
        compression=8,
        fit="shift",
    )
    sigmas = flow_sigmas(STEPS)

    def denoise_tile(job: TileJob) -> torch.Tensor:
        value = float(job.tile.index + 1)
        return sample_tile(lambda x, sigma: torch.full_like(x, value), job, sigmas)

    noise = canvas_noise(0, (1, 4, 8, 12))
    hard = {"lock_feather": 0, "lock_margin": 0}
    locked = sample_causal(plan, noise, denoise_tile, **hard).canvas[0, 0, 0]
    released = sample_causal(plan, noise, denoise_tile, **hard, lock_release=LockRelease(0.5, 1))
    weight = 0.5 * (1 - float(sigmas[-2]))  # the last model call's release decides the final blend
    assert locked.tolist() == [1.0] * 8 + [2.0] * 4
    assert released.canvas[0, 0, 0].tolist() == pytest.approx([1.0] * 7 + [1 + weight] + [2.0] * 4)
    assert torch.equal(released.tiles[0], torch.ones(4, 8, 8))  # the first tile's own result is kept


# --- BCLA cache -----------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [BCLAConfig(mode="off"), BCLAConfig(strength=0.0)])
def test_empty_cache_without_overlap_equals_independent_tiles_bit_for_bit(model, prompts, config) -> None:
    plan = side_by_side_plan()
    causal = run(model, prompts, plan, cache_config=config, lock_feather=0)
    independent = run(model, prompts, plan, method="independent")
    assert torch.equal(causal.canvas, independent.canvas)
    assert torch.equal(causal.tiles, independent.tiles)
    with_cache = run(model, prompts, plan, cache_config=BCLAConfig(), lock_feather=0)
    assert (with_cache.canvas[..., 8:] - independent.canvas[..., 8:]).abs().max() > 1e-3
    assert torch.equal(with_cache.canvas[..., :8], independent.canvas[..., :8])  # tile 0 sees no cache


def test_cfg_branches_never_share_statistics(model, prompts) -> None:
    """After tile 0 (both branches recorded), tile 1's cond and uncond chunks each read their own
    branch: one batched CFG call equals the two branches run alone, whatever the chunk order."""
    plan = side_by_side_plan()
    cond, uncond = prompts
    cache = BCLACache(BCLAConfig(), plan)
    denoiser = CFGDenoiser(model, cond, uncond, cfg=3.0, cache=cache)
    sigmas = flow_sigmas(STEPS)
    checks: dict[str, torch.Tensor] = {}

    def velocity(x, embeds, branches):
        cache.set_call(float(sigmas[1]), branches)
        batch = x.repeat(len(branches), 1, 1, 1)
        timestep = torch.full((batch.shape[0],), float(sigmas[1]) * 1000)
        return model(batch, encoder_hidden_states=embeds, timestep=timestep).sample

    def denoise_tile(job: TileJob) -> torch.Tensor:
        if job.tile.index == 1:
            x = job.noise
            checks["both"] = velocity(x, torch.cat([cond, uncond]), [0, 1])
            checks["swapped"] = velocity(x, torch.cat([uncond, cond]), [1, 0])
            checks["cond"], checks["uncond"] = velocity(x, cond, [0]), velocity(x, uncond, [1])
            checks["uncond_as_cond"] = velocity(x, uncond, [0])
        return sample_tile(denoiser, job, sigmas)

    undo = install_bcla(model, cache)
    try:
        with torch.no_grad():
            sample_causal(plan, canvas_noise(5, (1, 4, 8, 16)), denoise_tile, cache=cache, lock_feather=0)
    finally:
        undo()
    assert torch.allclose(checks["both"][:1], checks["cond"], atol=1e-5)
    assert torch.allclose(checks["both"][1:], checks["uncond"], atol=1e-5)
    assert torch.allclose(checks["swapped"][:1], checks["uncond"], atol=1e-5)
    assert torch.allclose(checks["swapped"][1:], checks["cond"], atol=1e-5)
    assert (checks["uncond_as_cond"] - checks["uncond"]).abs().max() > 1e-4  # the branch id matters


class _FakeCache:
    """Records the sampler's side of the BCLA protocol."""

    def __init__(self, needs_clean_pass: bool) -> None:
        self.needs_clean_pass = needs_clean_pass
        self.log: list[tuple] = []

    def reset(self) -> None:
        self.log.append(("reset",))

    def seed(self, stats, strength) -> None:
        self.log.append(("seed", stats, strength))

    def begin_tile(self, tile, token_mask, window) -> None:
        self.log.append(("begin", tile.index, token_mask.clone(), window))

    def set_call(self, sigma, branches) -> None:
        self.log.append(("call", round(sigma, 6), list(branches)))

    def end_tile(self) -> None:
        self.log.append(("end",))

    @contextmanager
    def clean_pass(self):
        self.log.append(("clean",))
        yield
        self.log.append(("/clean",))


class _FakeContext:
    seeds_cache, seed_stats, bcla_seed = True, "stats", 0.5

    def __init__(self) -> None:
        self.hooked: list[int] = []

    def x0_hook(self, tile, plan):
        self.hooked.append(tile.index)
        return lambda x0, sigma: x0 * 0.0  # a context that pins every prediction to zero


def test_sampler_drives_the_cache_protocol_and_clean_pass(model, prompts) -> None:
    plan = overlapping_plan()
    cache, context = _FakeCache(needs_clean_pass=True), _FakeContext()
    denoiser = CFGDenoiser(model, prompts[0], prompts[1], cfg=3.0, cache=cache)
    sigmas = flow_sigmas(2)
    reencoded: list[torch.Tensor] = []

    def reencode(x0: torch.Tensor) -> None:
        reencoded.append(x0)
        denoiser(x0, x0.new_full((x0.shape[0],), CLEAN_SIGMA))

    with torch.no_grad():
        result = sample_causal(
            plan,
            canvas_noise(1, (1, 4, 14, 14)),
            lambda job: sample_tile(denoiser, job, sigmas),
            cache=cache,
            context=context,
            reencode=reencode,
        )
    expected: list[tuple] = [("reset",), ("seed", "stats", 0.5)]
    for tile in plan.tiles:
        expected += [
            ("begin", tile.index),
            ("call", 1.0, [0, 1]),
            ("call", round(float(sigmas[1]), 6), [0, 1]),
        ]
        expected += [("clean",), ("call", CLEAN_SIGMA, [0, 1]), ("/clean",), ("end",)]
    assert [entry[:2] if entry[0] == "begin" else entry for entry in cache.log] == expected
    masks = [entry[2] for entry in cache.log if entry[0] == "begin"]
    for tile, mask in zip(plan.tiles, masks, strict=True):
        assert mask.dtype == torch.bool and torch.equal(mask, ~plan.known_mask(tile.index))  # True = new
    assert context.hooked == [0, 1, 2, 3]
    assert result.canvas.abs().max() == 0  # the context's hook ran on every model call
    assert all(torch.equal(a, b) for a, b in zip(reencoded, result.tiles.split(1), strict=True))


def test_real_cache_clean_source_runs_the_clean_pass(model, prompts) -> None:
    plan = side_by_side_plan()
    clean = run(model, prompts, plan, cache_config=BCLAConfig(source="clean"), lock_feather=0)
    off = run(model, prompts, plan, cache_config=BCLAConfig(mode="off"), lock_feather=0)
    assert torch.isfinite(clean.canvas).all()
    assert torch.equal(clean.canvas[..., :8], off.canvas[..., :8])
    assert (clean.canvas[..., 8:] - off.canvas[..., 8:]).abs().max() > 1e-3


# --- baselines ------------------------------------------------------------------------------------


def test_independent_tiles_average_their_overlaps() -> None:
    plan = overlapping_plan()
    result = sample_independent(plan, torch.zeros(2, 4, 14, 14), lambda job: job.noise + job.tile.index)
    assert result.tiles.shape == (8, 4, 8, 8) and torch.equal(result.tiles[2:4], torch.ones(2, 4, 8, 8))
    assert result.canvas[0, 0, 0, 0] == 0 and result.canvas[0, 0, 0, 7] == 0.5  # tiles 0 and 1
    assert result.canvas[0, 0, 7, 7] == 1.5 and result.canvas[0, 0, 13, 13] == 3  # all four / tile 3


def test_multidiffusion_denoiser_averages_every_tile_prediction() -> None:
    plan = overlapping_plan()
    calls: list[int] = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        calls.append(len(calls))
        return x + len(calls) - 1  # the k-th call (tile k) adds k

    ticks: list[tuple[int, int]] = []
    x = torch.randn(2, 4, 14, 14, generator=torch.Generator().manual_seed(2))
    out = multidiffusion_denoiser(plan, denoiser, lambda i, n: ticks.append((i, n)))(x, torch.full((2,), 0.5))
    expected = torch.zeros(14, 14)
    for tile in plan.tiles:
        expected[tile.slices] += tile.index
    assert torch.allclose(out, x + expected / plan.coverage(), atol=1e-6)
    assert ticks == [(0, 4), (1, 4), (2, 4), (3, 4)]


def test_multidiffusion_with_one_tile_equals_the_full_pass(model, prompts) -> None:
    plan = make_plan(
        width_px=64,
        height_px=64,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=0,
        compression=8,
        fit="shift",
    )
    md = run(model, prompts, plan, method="multidiffusion", sampler="dpmpp_2m")
    full = run(model, prompts, plan, method="full", sampler="dpmpp_2m")
    assert torch.equal(md.canvas, full.canvas) and md.tiles.shape == (1, 4, 8, 8)


# --- batching, progress, cancellation, img2img ----------------------------------------------------


def test_batched_canvases_match_single_runs(model, prompts) -> None:
    plan = overlapping_plan()
    cond, uncond = prompts
    options = {"steps": STEPS, "cfg": 3.0, "seed": 4, "method": "causal", "cache_config": BCLAConfig()}
    pair = generate(plan, model, torch.cat([cond, uncond]), torch.cat([uncond, uncond]), **options)
    single = generate(plan, model, cond, uncond, **options)
    assert pair.canvas.shape == (2, 4, 14, 14) and pair.tiles.shape == (8, 4, 8, 8)
    assert torch.allclose(pair.canvas[:1], single.canvas, atol=1e-4)  # same noise row, own statistics
    assert torch.allclose(pair.tiles[2:3], single.tiles[1:2], atol=1e-4)  # tile-major: t*B + b
    assert (pair.canvas[1] - pair.canvas[0]).abs().mean() > 0.05


@pytest.mark.parametrize(
    ("method", "calls"),
    [("causal", 4 * STEPS), ("independent", 4 * STEPS), ("multidiffusion", 4 * STEPS), ("full", STEPS)],
)
def test_progress_counts_tiles_times_steps(model, prompts, method: str, calls: int) -> None:
    ticks: list[tuple[int, int]] = []
    run(
        model,
        prompts,
        overlapping_plan(),
        method=method,
        progress=lambda done, total: ticks.append((done, total)),
    )
    assert ticks == [(i + 1, calls) for i in range(calls)]


def test_cancellation_stops_without_a_result_and_restores_the_model(model, prompts) -> None:
    latent = torch.randn(1, 4, 14, 14, generator=torch.Generator().manual_seed(8))
    before, names = latent.clone(), processor_names(model)

    def cancel(done: int, total: int) -> None:
        if done == STEPS + 2:  # inside the second tile
            raise InterruptedError("cancelled")

    result = None
    with pytest.raises(InterruptedError):
        result = run(
            model, prompts, overlapping_plan(), latent=latent, cache_config=BCLAConfig(), progress=cancel
        )
    assert result is None and torch.equal(latent, before)
    assert processor_names(model) == names and "BCLA" not in "".join(names)


def test_img2img_keeps_the_low_frequencies_of_the_input(model, prompts) -> None:
    plan = overlapping_plan()
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 14), torch.linspace(-1, 1, 14), indexing="ij")
    latent = torch.stack([2 * xx, -2 * yy, 2 * xx * yy, xx + yy])[None]

    def low(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, 7).flatten()

    def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([low(a), low(b)]))[0, 1])

    light, half, fresh = (
        run(model, prompts, plan, latent=latent, denoise=d, steps=8) for d in (0.2, 0.5, 1.0)
    )
    assert correlation(light.canvas, latent) > 0.9
    assert correlation(light.canvas, latent) > correlation(half.canvas, latent) + 0.2
    assert correlation(fresh.canvas, latent) < 0.3  # from pure noise the input is forgotten
    assert (light.canvas - latent).abs().mean() > 0.1  # it did denoise something


# --- guide first ----------------------------------------------------------------------------------


def test_guided_starts_the_tiles_from_the_upscaled_whole_scene_pass(model, prompts) -> None:
    plan = overlapping_plan()
    ticks: list[tuple[int, int]] = []
    light = run(
        model,
        prompts,
        plan,
        method="guided",
        guide_first=GuideFirst(denoise=0.1, bcla_seed=0),
        progress=lambda done, total: ticks.append((done, total)),
    )
    assert ticks == [(i + 1, STEPS + 4) for i in range(STEPS + 4)]  # guide pass, 4 tiles of 1 step
    whole = guide_plan(plan)
    assert (len(whole), whole.canvas_height, whole.canvas_width) == (1, 8, 8)  # the tile's size
    assert torch.equal(light.guide, run(model, prompts, whole, method="full").canvas)
    start = latent_upscale(light.guide, plan.canvas_height, plan.canvas_width)
    fresh = run(model, prompts, plan, method="guided", guide_first=GuideFirst(denoise=1.0, bcla_seed=0))
    assert (light.canvas - start).abs().mean() < 0.5 * (fresh.canvas - start).abs().mean()


def test_guided_tiles_walk_the_last_levels_of_the_guides_own_schedule(model, prompts) -> None:
    levels: list[float] = []

    def record(module, args, kwargs) -> None:
        levels.append(round(float(kwargs["timestep"][0]) / 1000, 5))

    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run(
            model, prompts, overlapping_plan(), method="guided", steps=10, guide_first=GuideFirst(bcla_seed=0)
        )
        guide_levels, tile_levels = levels[:10], levels[10:]
        assert len(tile_levels) == 4 * 3  # 4 tiles × round(10 steps × denoise 0.3)
        assert tile_levels[:3] == guide_levels[-3:]  # the guide's own last three levels, not 10 finer ones
        levels.clear()
        run(model, prompts, overlapping_plan(), method="guided", steps=10, guide_first=GuideFirst(
            bcla_seed=0, tile_steps=5))  # fmt: skip
        assert len(levels) == 10 + 4 * 5
    finally:
        handle.remove()


def test_progressive_chain_levels_grow_by_at_most_max_upscale_up_to_the_canvas() -> None:
    plan = make_plan(
        width_px=1024,
        height_px=512,
        tile_width_px=128,
        tile_height_px=128,
        overlap_px=32,
        compression=8,
        fit="grow",
    )
    assert guide_levels(plan, GuideFirst(max_upscale=None)) == []  # one step
    assert len(guide_levels(plan, GuideFirst())) == 1  # by default at most 4× a step: 6.7× takes two
    levels = guide_levels(plan, GuideFirst(max_upscale=2.0))
    sides = [max(guide_plan(plan).width_px, guide_plan(plan).height_px)]
    sides += [level.width_px for level in levels] + [plan.width_px]
    assert sides == sorted(sides) and len(levels) == 2  # 152 → 296 → 552 → 1024 px
    assert all(big / small <= 2.0 for small, big in itertools.pairwise(sides))
    for level in levels:
        assert level.width_px / level.height_px == pytest.approx(2.0, rel=0.1)
        assert level.tile_width_px <= plan.tile_width_px and len(level) > 1
    assert guide_levels(plan, GuideFirst(max_upscale=8.0)) == []  # 6.7× fits in one step
    with pytest.raises(SamplingError, match="max_upscale must be above 1"):
        GuideFirst(max_upscale=1.0)


def test_progressive_chain_refines_each_level_from_the_one_before(model, prompts) -> None:
    plan = make_plan(
        width_px=224,
        height_px=112,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=16,
        compression=8,
        fit="shift",
    )  # 28×14 cells, guide 8×4 cells
    chain = GuideFirst(bcla_seed=0, max_upscale=2.0)
    levels = guide_levels(plan, chain)
    assert [level.canvas_width for level in levels] == [15]  # 8 → 15 → 28 cells: √3.5 each
    ticks: list[tuple[int, int]] = []
    result = run(model, prompts, plan, method="guided", guide_first=chain,
                 progress=lambda done, total: ticks.append((done, total)))  # fmt: skip
    tiles = len(plan) + len(levels[0])
    assert ticks[-1] == (STEPS + tiles, STEPS + tiles)  # 1 step per tile at STEPS × 0.3
    assert result.guide.shape[-2:] == (levels[0].canvas_height, levels[0].canvas_width)  # the last level
    one_step = run(model, prompts, plan, method="guided", guide_first=GuideFirst(bcla_seed=0))
    assert (result.canvas - one_step.canvas).abs().max() > 1e-3


def test_guided_runs_on_a_patch_size_2_transformer(prompts) -> None:
    """104×56 cells in 32-cell tiles: the whole-scene pass at the tile's long side would be 32×17 cells,
    which a patch-2 model cannot tokenise; it is rounded to whole tokens (32×18)."""
    model = tiny_transformer(patch_size=2)
    plan = make_plan(
        width_px=104, height_px=56, tile_width_px=32, tile_height_px=32, overlap_px=8, compression=1
    )
    result = run(model, prompts, plan, method="guided", steps=2, cache_config=BCLAConfig())
    assert result.canvas.shape[-2:] == (56, 104)
    assert result.guide.shape[-2:] == (18, 32)
    assert bool(torch.isfinite(result.canvas).all())


def test_guide_margin_renders_a_larger_whole_scene_pass_and_crops_it_to_the_guide(model, prompts) -> None:
    """A margin of m cells: the whole-scene pass runs on (h + 2m) × (w + 2m) cells, with the pass
    without margin's noise in the middle, and the guide is its middle h × w (interior content at the
    guide's edge, not the model's border treatment); on a patch-2 model the margin is whole tokens."""
    plan = overlapping_plan()
    small = guide_plan(plan)
    margin = run(model, prompts, plan, method="guided", guide_first=GuideFirst(bcla_seed=0, margin=2))
    assert margin.guide.shape[-2:] == (small.canvas_height, small.canvas_width)
    big = make_plan(width_px=96, height_px=96, tile_width_px=96, tile_height_px=96, overlap_px=0,
                    compression=8)  # fmt: skip
    channels = margin.canvas.shape[1]
    noise = canvas_noise(11, (1, channels, 12, 12))
    noise[..., 2:10, 2:10] = canvas_noise(11, (1, channels, 8, 8))
    host = FlowHost(model, *prompts, FlowSampling(STEPS, cfg=3.0))
    full = pipeline.run(big, host, RunSettings(method="full"), (1, channels), noise=noise).canvas
    assert torch.equal(margin.guide, full[..., 2:10, 2:10])
    plain = run(model, prompts, plan, method="guided", guide_first=GuideFirst(bcla_seed=0, margin=0))
    assert (margin.guide - plain.guide).abs().max() > 1e-3

    sizes: list[tuple[int, int]] = []
    patch2 = tiny_transformer(patch_size=2)
    handle = patch2.register_forward_pre_hook(lambda _, args: sizes.append(tuple(args[0].shape[-2:])))
    try:
        plan2 = make_plan(width_px=104, height_px=56, tile_width_px=32, tile_height_px=32, overlap_px=8,
                          compression=1)  # fmt: skip
        result = run(patch2, prompts, plan2, method="guided", steps=2, guide_first=GuideFirst(margin=1),
                     cache_config=BCLAConfig())  # fmt: skip
    finally:
        handle.remove()
    assert sizes[0] == (18 + 4, 32 + 4)  # 1 cell rounded up to one 2-cell token on every side
    assert result.guide.shape[-2:] == (18, 32)
    with pytest.raises(SamplingError, match="guide margin must be ≥ 0"):
        GuideFirst(margin=-1)


def test_guided_refines_a_given_guide_without_a_whole_scene_pass(model, prompts) -> None:
    """The refine path: the input latent is the guide (canvas-size as a photo's, or smaller and
    enlarged); no whole-scene pass runs, the tiles start from it at guide denoise, and the seed pass
    sees it shrunk to the model's size."""
    plan = overlapping_plan()
    photo = torch.randn(1, 4, 14, 14, generator=torch.Generator().manual_seed(3))
    seen: list[tuple[int, ...]] = []

    def record(module, args, kwargs) -> None:
        seen.append(tuple(args[0].shape[-2:]))

    ticks: list[tuple[int, int]] = []
    handle = model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        refined = run(
            model,
            prompts,
            plan,
            method="guided",
            latent=photo,
            cache_config=BCLAConfig(),
            guide_first=GuideFirst(denoise=0.25),
            progress=lambda *tick: ticks.append(tick),
        )
    finally:
        handle.remove()
    assert ticks[-1] == (4, 4)  # 4 tiles × 1 step (STEPS × 0.25), no whole-scene pass
    assert (14, 14) not in seen and (8, 8) in seen  # the seed pass on the guide at the tile's size
    assert refined.guide is photo
    fresh = run(
        model, prompts, plan, method="guided", latent=photo, guide_first=GuideFirst(denoise=1.0, bcla_seed=0)
    )
    assert (refined.canvas - photo).abs().mean() < 0.6 * (fresh.canvas - photo).abs().mean()
    small = photo[..., ::2, ::2]  # 7×7 cells: enlarged to the canvas as the tiles' start
    enlarged = run(model, prompts, plan, method="guided", latent=small, guide_first=GuideFirst(bcla_seed=0))
    assert enlarged.canvas.shape == photo.shape and enlarged.guide is small


def test_canvas_only_paints_the_same_canvas_over_the_latent_and_keeps_no_tiles(model, prompts) -> None:
    """The refine's run: no per-tile latents, no guide, and the same canvas. ``causal`` (img2img) paints
    it over the given latent (no canvas-sized copy); ``guided`` keeps the given latent as it was, since
    its tiles are pulled toward it, also on a canvas no larger than the whole-scene pass, whose guide is
    then the tiles' global context itself."""
    tall = make_plan(
        width_px=128, height_px=128, tile_width_px=128, tile_height_px=64, overlap_px=16, compression=8
    )
    whole = torch.zeros(1, 4, 16, 16)
    assert pipeline._whole_scene(tall, whole, None, 1) is whole  # the global context's guide
    methods = {
        "guided": {"method": "guided", "cache_config": BCLAConfig(), "guide_first": GuideFirst(denoise=0.5)},
        "causal": {"method": "causal", "cache_config": BCLAConfig(), "denoise": 0.5},
    }
    for (name, options), plan in itertools.product(methods.items(), (overlapping_plan(), tall)):
        shape = (1, 4, plan.canvas_height, plan.canvas_width)
        photo = torch.randn(shape, generator=torch.Generator().manual_seed(3))
        kept = run(model, prompts, plan, latent=photo.clone(), **options)
        latent = photo.clone()
        only = run(model, prompts, plan, latent=latent, canvas_only=True, **options)
        assert only.tiles is None and only.guide is None and kept.tiles is not None
        assert torch.equal(only.canvas, kept.canvas), name
        if name == "guided":
            assert torch.equal(latent, photo)
        else:
            assert only.canvas.data_ptr() == latent.data_ptr()


def test_a_refine_pulls_toward_its_guide_itself_and_seeds_from_one_tile(model, prompts) -> None:
    """A guide of the canvas's size (a photo refined at its size): each tile's low band (a Gaussian of
    ``DEFAULT_REFINE_BAND_SIGMA`` = 1 cell) is pulled toward that guide, not toward the copy shrunk to one
    tile for the BCLA seed pass (which pulled every tile toward a blurred photo: 0.40 of a free run's
    low-band drift was left, now 0.22); finer detail stays the model's; the seed pass runs on one tile."""
    plan = make_plan(
        width_px=192,
        height_px=192,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=16,
        compression=8,
        fit="shift",
    )  # 24×24 cells, 4×4 tiles of 8: the shrunk copy is 3× smaller
    photo = torch.randn(1, 4, 24, 24, generator=torch.Generator().manual_seed(3))
    sizes: list[tuple[int, ...]] = []
    handle = model.register_forward_pre_hook(lambda _, args: sizes.append(tuple(args[0].shape[-2:])))
    try:
        canvases = {
            skip: run(
                model,
                prompts,
                plan,
                method="guided",
                latent=photo.clone(),
                cache_config=BCLAConfig(),
                guide_first=GuideFirst(denoise=0.5, stats=0.0, skip_residual=skip),
            ).canvas
            for skip in (1.0, 0.0)
        }
    finally:
        handle.remove()
    drift = {skip: float(lowpass(canvas - photo, 2.0).abs().mean()) for skip, canvas in canvases.items()}
    assert drift[1.0] < 0.3 * drift[0.0], drift
    detail = {skip: float((canvas - photo).abs().mean()) for skip, canvas in canvases.items()}
    assert detail[1.0] > 0.5 * detail[0.0], detail  # the pull leaves the detail to the model
    assert sizes[0] == (8, 8) and max(h * w for h, w in sizes) == 64  # seed pass and tiles: one tile


def test_guided_seeds_the_cache_and_pulls_toward_the_guide(model, prompts) -> None:
    plan = overlapping_plan()
    with pytest.raises(SamplingError, match="give a BCLA cache"):
        run(model, prompts, plan, method="guided", guide_first=GuideFirst(bcla_seed=1))
    assert RunSettings(method="guided").guide.bcla_seed == 0  # no cache: the default guide seeds none
    assert RunSettings(method="guided", cache_config=BCLAConfig()).guide.bcla_seed > 0
    results = {
        name: run(model, prompts, plan, method="guided", cache_config=BCLAConfig(), guide_first=settings)
        for name, settings in (
            ("plain", GuideFirst(bcla_seed=0)),
            ("seeded", GuideFirst(bcla_seed=1)),
            ("skip", GuideFirst(bcla_seed=0, skip_residual=0.8)),
        )
    }
    plain = results["plain"]
    for name in ("seeded", "skip"):
        assert torch.equal(results[name].guide, plain.guide)
        assert (results[name].tiles[:1] - plain.tiles[:1]).abs().max() > 1e-3, name  # even the first tile


def test_pixel_upscale_decodes_resizes_and_reencodes() -> None:
    seen: list[object] = []

    def decode(latent: torch.Tensor) -> torch.Tensor:
        seen.append("decode")
        return latent.repeat_interleave(2, -1).repeat_interleave(2, -2)

    def encode(image: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(image.shape))
        return F.avg_pool2d(image, 2)

    ramp = torch.linspace(0.2, 0.8, 5).expand(1, 4, 3, 5)
    out = pixel_upscale(decode, encode, 2)(ramp, 6, 10)
    assert seen == ["decode", (1, 4, 12, 20)] and out.shape == (1, 4, 6, 10)
    assert (out[..., 1:] - out[..., :-1] > 0).all() and float(out.min()) > 0.15 and float(out.max()) < 0.85


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_is_refused_with_a_clear_message(model, prompts) -> None:
    plan = overlapping_plan()
    tile = lambda job: job.latent  # noqa: E731
    with pytest.raises(SamplingError, match="plan's canvas"):
        sample_causal(plan, torch.zeros(1, 4, 12, 14), tile)
    with pytest.raises(SamplingError, match="does not match the noise"):
        sample_independent(plan, torch.zeros(1, 4, 14, 14), tile, latent=torch.zeros(1, 3, 14, 14))
    with pytest.raises(SamplingError, match="reencode"):
        sample_causal(plan, torch.zeros(1, 4, 14, 14), tile, cache=_FakeCache(needs_clean_pass=True))
    with pytest.raises(SamplingError, match="pass a cache"):
        sample_causal(plan, torch.zeros(1, 4, 14, 14), tile, context=_FakeContext())
    with pytest.raises(SamplingError, match="choose one of"):
        run(model, prompts, plan, method="tiled")
    with pytest.raises(SamplingError, match="needs an input latent"):
        run(model, prompts, plan, denoise=0.5)
    with pytest.raises(SamplingError, match="only used by method='causal'"):
        run(model, prompts, plan, method="independent", context=_FakeContext())
    with pytest.raises(SamplingError, match="encode the image at the canvas size or smaller"):
        run(
            model,
            prompts,
            plan,
            method="guided",
            guide_first=GuideFirst(bcla_seed=0),
            latent=torch.zeros(1, 4, 16, 16),
        )
    with pytest.raises(SamplingError, match="only used by method='guided'"):
        run(model, prompts, plan, guide_first=GuideFirst())
    with pytest.raises(SamplingError, match="guide denoise"):
        GuideFirst(denoise=0.0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_runs_causal_bcla_with_float32_latents(prompts, dtype) -> None:
    """bf16/fp16 weights on the sampler path: the model computes in its dtype, latents, x0 and the BCLA
    statistics stay float32, and the canvas follows the float32 model's."""
    plan = overlapping_plan()
    reference = run(tiny_transformer(), prompts, plan, cache_config=BCLAConfig())
    half = run(tiny_transformer().to(dtype), prompts, plan, cache_config=BCLAConfig())
    assert half.canvas.dtype == torch.float32 and torch.isfinite(half.canvas).all()
    error = (half.canvas - reference.canvas).abs().mean() / reference.canvas.abs().mean()
    assert error < 0.02, error  # measured: bf16 0.005, fp16 0.0006
