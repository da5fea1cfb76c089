"""The guide-first benches' plans follow the model's compression: tiles are whole latent cells and big
enough for a 32× model (whose smallest training size is 8 cells, 256 px)."""

import pytest

from bench.bench_guide_first import make_plans
from temporal_tiling.pipeline import guide_plan


def test_the_8x_plans_are_the_quick_starts():
    plans = make_plans(8)
    tiles, windows = plans["tiles"], plans["multidiffusion"]
    assert (tiles.cols, tiles.rows, tiles.tile_width_px, tiles.tile_height_px) == (4, 2, 152, 144)
    assert tiles.overlap == 4, "32 px: overlaps are in cells"
    assert (windows.tile_width_px, windows.overlap) == (128, 8), "overlaps are in cells"


@pytest.mark.parametrize(("width", "height"), [(512, 256), (1024, 512)])
def test_at_32x_tiles_are_at_least_8_whole_cells_with_2_cells_of_overlap(width: int, height: int):
    for plan in make_plans(32, width, height).values():
        assert plan.tile_width_px % 32 == 0 and plan.tile_height_px % 32 == 0
        assert min(plan.tile_width_px, plan.tile_height_px) >= 256 and plan.overlap >= 2
    guide = guide_plan(make_plans(32, width, height)["tiles"])
    assert guide.height_px // 32 >= 4, "the whole-scene pass is at least 4 cells tall"
