"""Closing the lock border: the seam refine pass and the context halo, on a tiny random SANA transformer."""

from __future__ import annotations

import pytest
import torch

from temporal_tiling import pipeline
from temporal_tiling.bcla import BCLACache, BCLAConfig
from temporal_tiling.contracts import TileJob
from temporal_tiling.options import DEFAULT_GUIDE_HALO
from temporal_tiling.pipeline import GuideFirst, RunSettings, generate, guide_levels
from temporal_tiling.plan import PlanError, TilePlan, make_plan
from temporal_tiling.sampling import (
    SamplingError,
    canvas_noise,
    lock_mask,
    multidiffusion_denoiser,
    sample_causal,
    sample_independent,
)
from temporal_tiling.seam_refine import SeamRefine, refine_bands

STEPS = 4


PLANS = {
    "2×2, overlap 2": make_plan(
        width_px=112,
        height_px=112,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=16,
        compression=8,
        fit="shift",
    ),
    "2×1, no overlap": make_plan(
        width_px=128,
        height_px=64,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=0,
        compression=8,
        fit="shift",
    ),
    "quick start 4×2 (grow)": make_plan(
        width_px=512,
        height_px=256,
        tile_width_px=128,
        tile_height_px=128,
        overlap_px=32,
        compression=8,
        fit="grow",
    ),
    "3×3, serpentine": make_plan(
        width_px=160,
        height_px=160,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=16,
        compression=8,
        order="serpentine",
        fit="shift",
    ),
}


def run(model, prompts, plan, **settings):
    settings = {"method": "causal", **settings}
    return generate(plan, model, prompts[0], prompts[1], steps=STEPS, cfg=3.0, seed=11, **settings)


def band_cover(plan: TilePlan, pad: int = 4) -> torch.Tensor:
    """[H, W]: the largest band mask value at each canvas cell (0 outside every band)."""
    cover = torch.zeros(plan.canvas_height, plan.canvas_width)
    for band in refine_bands(plan, pad):
        rows, cols = band.window.slices
        cover[rows, cols] = torch.maximum(cover[rows, cols], band.mask[0, 0])
    return cover


# --- band geometry --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PLANS)
def test_one_band_per_border_inside_the_canvas_covering_its_overlap(name: str) -> None:
    plan = PLANS[name]
    bands = refine_bands(plan, pad=3)
    assert [(b.first, b.second, b.axis) for b in bands] == [(s.first, s.second, s.axis) for s in plan.seams()]
    for band in bands:
        w = band.window
        assert w.y >= 0 and w.y + w.height <= plan.canvas_height
        assert w.x >= 0 and w.x + w.width <= plan.canvas_width
        assert band.mask.shape == (1, 1, w.height, w.width)
        assert band.mask.min() >= 0 and band.mask.max() == 1
        in_first, in_second = (
            torch.zeros(plan.canvas_height, plan.canvas_width, dtype=torch.bool) for _ in "ab"
        )
        in_first[plan.tiles[band.first].slices] = True
        in_second[plan.tiles[band.second].slices] = True
        both = in_first & in_second
        inside = torch.zeros_like(both)
        inside[w.slices] = band.mask[0, 0] == 1
        assert both.any() == (plan.overlap > 0)
        assert not (both & ~inside).any(), "a band leaves part of its tiles' overlap unrefined"
        across = band.mask[0, 0] if band.axis == "vertical" else band.mask[0, 0].T
        assert across[:, 0].eq(0).all() and across[:, -1].eq(0).all(), "the band's edges must be kept"


def test_without_overlap_the_band_straddles_the_shared_edge() -> None:
    plan = PLANS["2×1, no overlap"]  # tiles at x = 0 and 8 cells
    (band,) = refine_bands(plan, pad=2)
    assert (band.window.x, band.window.width) == (5, 6)
    assert band.mask[0, 0, 0].tolist() == [0.0, 0.5, 1.0, 1.0, 0.5, 0.0]


# --- seam refine ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["independent", "causal", "multidiffusion"])
def test_seam_refine_changes_only_the_bands_and_keeps_the_tiles_output(model, prompts, method: str) -> None:
    plan = PLANS["2×2, overlap 2"]
    plain = run(model, prompts, plan, method=method)
    refined = run(model, prompts, plan, method=method, seam_refine=SeamRefine(0.5, pad=2))
    changed = (refined.canvas - plain.canvas).abs().amax(dim=(0, 1)) > 0
    assert changed.any()
    assert not (changed & (band_cover(plan, pad=2) == 0)).any(), "a cell outside every band changed"
    assert torch.equal(refined.tiles, plain.tiles)


def test_seam_refine_fades_to_nothing_as_its_denoise_goes_to_zero(model, prompts) -> None:
    plan = PLANS["2×2, overlap 2"]
    plain = run(model, prompts, plan, method="independent").canvas
    change = {
        d: float((run(model, prompts, plan, method="independent", seam_refine=SeamRefine(d)).canvas - plain)
                 .abs().max())
        for d in (1e-4, 0.3)
    }  # fmt: skip
    assert change[1e-4] < 1e-3 < change[0.3]


def test_seam_refine_runs_steps_times_denoise_per_band_and_counts_them(model, prompts) -> None:
    plan = PLANS["2×2, overlap 2"]
    seen: list[tuple[int, int]] = []
    run(model, prompts, plan, method="full", progress=lambda done, total: seen.append((done, total)))
    full_total = seen[-1][1]
    seen.clear()
    run(model, prompts, plan, method="full", seam_refine=SeamRefine(0.5), progress=lambda *a: seen.append(a))
    assert seen[-1] == (full_total + 4 * 2, full_total + 4 * 2)  # 4 borders × (4 steps × 0.5)


# --- context halo ---------------------------------------------------------------------------------


def test_window_grows_the_tile_by_the_halo_clamped_to_the_canvas() -> None:
    plan = PLANS["3×3, serpentine"]
    centre = next(t for t in plan.tiles if (t.row, t.col) == (1, 1))
    window = plan.window(centre, 2)
    assert (window.y, window.x, window.height, window.width) == (centre.y - 2, centre.x - 2, 12, 12)
    corner = next(t for t in plan.tiles if (t.row, t.col) == (0, 0))
    window = plan.window(corner, 2)
    assert (window.y, window.x, window.height, window.width) == (0, 0, 10, 10)
    assert plan.window(corner, 0) is corner
    rows, cols = centre.slices_in(plan.window(centre, 2))
    assert (rows, cols) == (slice(2, 10), slice(2, 10))
    with pytest.raises(PlanError, match="halo"):
        plan.window(corner, -1)


def noise_echo(jobs: list[TileJob]):
    """A denoiser of tiles that returns each job's noise crop: a canvas made of the right cells equals the
    canvas noise wherever a tile kept only its own area."""

    def denoise(job: TileJob) -> torch.Tensor:
        jobs.append(job)
        return job.noise.clone()

    return denoise


@pytest.mark.parametrize("loop", [sample_independent, sample_causal])
def test_halo_samples_the_grown_window_and_keeps_only_the_tile_area(loop) -> None:
    plan = PLANS["3×3, serpentine"]
    noise = canvas_noise(3, (2, 4, plan.canvas_height, plan.canvas_width))
    jobs: list[TileJob] = []
    result = loop(plan, noise, noise_echo(jobs), halo=2)
    assert [job.tile for job in jobs] == [plan.window(tile, 2) for tile in plan.tiles]
    assert any(job.tile.height > plan.tile_height for job in jobs)
    assert torch.allclose(result.canvas, noise)
    assert torch.equal(result.tiles, plan.crops(noise))


def test_causal_halo_locks_earlier_content_and_generates_the_rest_of_the_window() -> None:
    plan = PLANS["3×3, serpentine"]
    tile = plan.tiles[4]  # the centre: earlier tiles above and on one side
    window = plan.window(tile, 2)
    mask = lock_mask(plan, tile.index, feather=0, margin=0, window=window)[0, 0]
    rows, cols = window.slices
    done = torch.zeros(plan.canvas_height, plan.canvas_width, dtype=torch.bool)
    for earlier in plan.tiles[: tile.index]:
        done[earlier.slices] = True
    assert torch.equal(mask == 0, done[rows, cols])
    assert torch.equal(
        lock_mask(plan, tile.index, 2, 1, plan.window(tile, 0)), lock_mask(plan, tile.index, 2, 1)
    )


def test_multidiffusion_halo_averages_only_each_tiles_own_prediction() -> None:
    plan = PLANS["3×3, serpentine"]
    shapes: list[tuple[int, ...]] = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape[-2:]))
        return x * 2.0

    x = torch.randn(1, 4, plan.canvas_height, plan.canvas_width)
    out = multidiffusion_denoiser(plan, denoiser, halo=2)(x, torch.ones(1))
    assert torch.allclose(out, x * 2.0)
    assert shapes == [(w.height, w.width) for w in (plan.window(t, 2) for t in plan.tiles)]


def test_halo_reaches_every_tiled_method_and_the_cache_follows_the_window(model, prompts) -> None:
    plan = PLANS["2×2, overlap 2"]
    for method in ("causal", "independent", "multidiffusion"):
        plain = run(model, prompts, plan, method=method).canvas
        assert not torch.equal(run(model, prompts, plan, method=method, halo=2).canvas, plain), method
    cache = BCLACache(BCLAConfig(record_locked=False), plan)
    windows = []

    def denoise(job: TileJob) -> torch.Tensor:
        windows.append(cache.position_tile)
        return job.latent

    noise = canvas_noise(1, (1, 4, plan.canvas_height, plan.canvas_width))
    sample_causal(plan, noise, denoise, cache=cache, halo=2)
    assert windows == [plan.window(tile, 2) for tile in plan.tiles]


# --- refused settings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: SeamRefine(0.0), "seam refine denoise"),
        (lambda: SeamRefine(1.5), "seam refine denoise"),
        (lambda: SeamRefine(0.2, pad=0), "pad"),
        (lambda: SeamRefine(0.2, steps=0), "steps"),
        (lambda: RunSettings(halo=-1), "halo"),
        (lambda: RunSettings(method="full", halo=2), "full"),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(make, match: str) -> None:
    with pytest.raises(SamplingError, match=match):
        make()


def test_guided_tiles_run_with_a_halo_and_a_held_low_band_pull_by_default() -> None:
    """The guided default against the tile-row staircase (bench/results/enlargement.md): every tile's
    window border outside what is kept, its low band held to the guide's to the last step, and beyond 4×
    the whole-scene pass an intermediate canvas; the other methods keep no halo unless asked, and an
    explicit 0 turns it off."""
    guided = RunSettings(method="guided", cache_config=BCLAConfig())
    assert guided.tile_halo == DEFAULT_GUIDE_HALO > 0
    assert guided.guide.skip_residual > 0 and guided.guide.skip_power == 0
    assert RunSettings(method="guided", cache_config=BCLAConfig(), halo=0).tile_halo == 0
    twelve = make_plan(
        width_px=2048,
        height_px=1024,
        tile_width_px=128,
        tile_height_px=128,
        overlap_px=32,
        compression=8,
        fit="grow",
    )  # 12.8× the 160 px whole-scene pass
    assert len(guide_levels(twelve, guided.guide)) == 1
    assert (
        guide_levels(
            make_plan(
                width_px=640,
                height_px=320,
                tile_width_px=128,
                tile_height_px=128,
                overlap_px=32,
                compression=8,
                fit="grow",
            ),
            guided.guide,
        )
        == []
    )  # 4×
    others = ("causal", "independent", "multidiffusion", "full")
    assert all(RunSettings(method=m).tile_halo == 0 for m in others)


@pytest.mark.parametrize(("guide_cells", "halo"), [((16, 24), 0), ((8, 12), DEFAULT_GUIDE_HALO)])
def test_guided_keeps_its_default_halo_for_an_enlarged_guide_only(guide_cells, halo: int) -> None:
    """A refine hands guided a guide at the canvas's size (the picture encoded at the output size):
    nothing is enlarged, so no tile-row staircase to hide, and its tiles run on their own windows; a guide
    that is enlarged to the canvas (text to image's whole-scene pass) keeps the default halo."""
    from test_tile_prompts import RecordingHost

    plan = make_plan(
        width_px=192, height_px=128, tile_width_px=64, tile_height_px=64, overlap_px=0, compression=8
    )  # 3 × 2 tiles of 8 × 8 cells
    host = RecordingHost()
    settings = RunSettings(method="guided", guide_first=GuideFirst(bcla_seed=0.0))
    pipeline.run(plan, host, settings, (1, 4), latent=torch.zeros(1, 4, *guide_cells))
    windows = [tile for tile, _ in host.heard if tile.width < plan.canvas_width]
    assert len(windows) == len(plan)
    middle = windows[1]  # the top row's middle tile: a halo grows it left, right and down
    assert (middle.width, middle.height) == (8 + 2 * halo, 8 + halo)
