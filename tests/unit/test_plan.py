import inspect
import itertools

import pytest
import torch

from temporal_tiling.plan import ORDERS, PlanError, TilePlan, check_plan, make_plan


def test_uniform_tiles_cover_canvas_and_edge_tiles_shift_inward():
    plan = make_plan(
        width_px=1000 // 8 * 8,
        height_px=520,
        tile_width_px=256,
        tile_height_px=256,
        overlap_px=64,
        compression=8,
        fit="shift",
    )
    assert {(t.height, t.width) for t in plan.tiles} == {(32, 32)}
    assert bool((plan.coverage() > 0).all())
    right = max(t.x + t.width for t in plan.tiles)
    bottom = max(t.y + t.height for t in plan.tiles)
    assert (bottom, right) == (plan.canvas_height, plan.canvas_width)
    strides = sorted({t.x for t in plan.tiles})
    assert all(b - a <= 32 - 8 for a, b in itertools.pairwise(strides))


def test_grid_size_and_token_amplification():
    plan = make_plan(
        width_px=2048,
        height_px=1024,
        tile_width_px=512,
        tile_height_px=512,
        overlap_px=0,
        compression=32,
        fit="shift",
    )
    assert (plan.rows, plan.cols, len(plan)) == (2, 4, 8)
    assert plan.token_amplification == 1.0
    overlapped = make_plan(
        width_px=2048,
        height_px=1024,
        tile_width_px=512,
        tile_height_px=512,
        overlap_px=128,
        compression=32,
        fit="shift",
    )
    assert overlapped.token_amplification > 1.0


@pytest.mark.parametrize("order", ORDERS)
def test_every_order_visits_every_tile_once(order):
    plan = make_plan(
        width_px=640,
        height_px=384,
        tile_width_px=128,
        tile_height_px=128,
        overlap_px=32,
        compression=32,
        order=order,
        seed=3,
        fit="shift",
    )
    assert sorted((t.row, t.col) for t in plan.tiles) == [
        (r, c) for r in range(plan.rows) for c in range(plan.cols)
    ]
    assert [t.index for t in plan.tiles] == list(range(len(plan)))


def test_orders_differ_and_random_is_seeded():
    cells = {
        o: [
            (t.row, t.col)
            for t in make_plan(
                width_px=640,
                height_px=640,
                tile_width_px=128,
                tile_height_px=128,
                overlap_px=0,
                compression=32,
                order=o,
                seed=1,
                fit="shift",
            ).tiles
        ]
        for o in ORDERS
    }
    assert len({tuple(v) for v in cells.values()}) == len(ORDERS)
    again = [
        (t.row, t.col)
        for t in make_plan(
            width_px=640,
            height_px=640,
            tile_width_px=128,
            tile_height_px=128,
            overlap_px=0,
            compression=32,
            order="random",
            seed=1,
            fit="shift",
        ).tiles
    ]
    other = [
        (t.row, t.col)
        for t in make_plan(
            width_px=640,
            height_px=640,
            tile_width_px=128,
            tile_height_px=128,
            overlap_px=0,
            compression=32,
            order="random",
            seed=2,
            fit="shift",
        ).tiles
    ]
    assert again == cells["random"] != other
    assert cells["serpentine"][5] == (1, cells["serpentine"][4][1])
    assert cells["center_out"][0] == (2, 2)
    assert cells["spiral"][:6] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 4)]


def test_neighbours_are_earlier_adjacent_tiles():
    plan = make_plan(
        width_px=384,
        height_px=384,
        tile_width_px=128,
        tile_height_px=128,
        overlap_px=0,
        compression=32,
        order="raster",
        fit="shift",
    )
    assert plan.tiles[0].neighbors == ()
    assert plan.tiles[4].neighbors == (0, 1, 2, 3)  # centre of a 3x3 grid in raster order
    for tile in plan.tiles:
        for n in tile.neighbors:
            other = plan.tiles[n]
            assert n < tile.index and max(abs(other.row - tile.row), abs(other.col - tile.col)) == 1


def test_known_mask_marks_cells_made_by_earlier_tiles():
    plan = make_plan(
        width_px=448,
        height_px=256,
        tile_width_px=256,
        tile_height_px=256,
        overlap_px=64,
        compression=32,
        fit="shift",
    )
    assert not plan.known_mask(0).any()
    known = plan.known_mask(1)
    assert known.shape == (8, 8)
    assert bool(known[:, :2].all()) and not known[:, 2:].any()


def test_seams_sit_on_overlap_centre_lines_in_pixels():
    plan = make_plan(
        width_px=448,
        height_px=256,
        tile_width_px=256,
        tile_height_px=256,
        overlap_px=64,
        compression=32,
        fit="shift",
    )
    (seam,) = plan.seams()
    assert (seam.axis, seam.overlap_start, seam.overlap_stop, seam.position) == ("vertical", 192, 256, 224)
    flush = make_plan(
        width_px=512,
        height_px=512,
        tile_width_px=256,
        tile_height_px=256,
        overlap_px=0,
        compression=32,
        fit="shift",
    ).seams()
    assert sorted((s.axis, s.position) for s in flush) == [("horizontal", 256)] * 2 + [("vertical", 256)] * 2


def test_json_round_trip_and_rejects_uncovering_edit():
    plan = make_plan(
        width_px=640,
        height_px=384,
        tile_width_px=128,
        tile_height_px=128,
        overlap_px=32,
        compression=32,
        order="spiral",
        fit="shift",
    )
    assert TilePlan.from_json(plan.to_json()) == plan
    broken = plan.to_json().replace('"x": 0,', '"x": 1,', 1)
    with pytest.raises(PlanError, match="uncovered"):
        TilePlan.from_json(broken)
    with pytest.raises(PlanError, match="tile plan JSON"):
        TilePlan.from_json("{}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((512, 512, 1024, 256, 0, 32), "larger than the canvas"),
        ((512, 512, 256, 256, 256, 32), "smaller than the tile"),
        ((500, 512, 256, 256, 0, 32), "multiple of the VAE's compression factor 32; use 480 or 512"),
        ((512, 512, 256, 256, 20, 32), "overlap = 20 px is not a multiple"),
        ((0, 512, 256, 256, 0, 32), "positive"),
        ((512, -64, 256, 256, 0, 32), "positive"),
        ((512, 512, 256, 256, -32, 32), "zero or a positive"),
        ((512, 512, 256, 256, 0, 0), "compression"),
    ],
)
def test_impossible_plans_say_what_to_change(args, message):
    names = ("width_px", "height_px", "tile_width_px", "tile_height_px", "overlap_px", "compression")
    with pytest.raises(PlanError, match=message):
        make_plan(**dict(zip(names, args, strict=True)))


@pytest.mark.parametrize("function", [make_plan, check_plan])
def test_sizes_are_pixels_by_keyword_only(function):
    """The plan holds sizes in latent cells (``TilePlan.tile_width``) and takes them in pixels: every size
    parameter is named ``*_px`` and keyword-only, so neither a positional call nor a cell-named keyword
    (``tile_width=plan.tile_width``) reaches the planner."""
    parameters = inspect.signature(function).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters)
    sizes = [p.name for p in parameters if p.name not in ("compression", "order", "seed", "fit", "max_tiles")]
    assert sizes == ["width_px", "height_px", "tile_width_px", "tile_height_px", "overlap_px"]
    with pytest.raises(TypeError):
        function(512, 256, 128, 128, 32, 8)
    with pytest.raises(TypeError):
        function(width=512, height=256, tile_width=128, tile_height=128, overlap=32, compression=8)


def test_the_plan_gives_back_the_pixels_it_was_given():
    plan = make_plan(
        width_px=512,
        height_px=256,
        tile_width_px=128,
        tile_height_px=128,
        overlap_px=32,
        compression=8,
        fit="shift",
    )
    assert (plan.width_px, plan.height_px, plan.tile_width_px, plan.tile_height_px) == (512, 256, 128, 128)
    assert (plan.canvas_width, plan.tile_width, plan.overlap) == (64, 16, 4)  # cells


def test_unknown_order_lists_choices():
    with pytest.raises(PlanError, match="raster, serpentine"):
        make_plan(
            width_px=512,
            height_px=512,
            tile_width_px=256,
            tile_height_px=256,
            overlap_px=0,
            compression=32,
            order="zigzag",
            fit="shift",
        )


def test_plan_error_is_a_value_error():
    assert issubclass(PlanError, ValueError)
    assert torch.equal(
        make_plan(
            width_px=256,
            height_px=256,
            tile_width_px=256,
            tile_height_px=256,
            overlap_px=0,
            compression=32,
            fit="shift",
        ).coverage(),
        torch.ones(8, 8),
    )


@pytest.mark.parametrize("cells", [64, 128, 256])
def test_grow_fit_keeps_overlap_free_tile_count_and_low_amplification(cells):
    shifted = make_plan(
        width_px=cells * 32,
        height_px=cells * 32,
        tile_width_px=1024,
        tile_height_px=1024,
        overlap_px=64,
        compression=32,
        fit="shift",
    )
    grown = make_plan(
        width_px=cells * 32,
        height_px=cells * 32,
        tile_width_px=1024,
        tile_height_px=1024,
        overlap_px=64,
        compression=32,
        fit="grow",
    )
    assert (grown.rows, grown.cols) == (cells // 32, cells // 32)
    assert (shifted.rows, shifted.cols) == (cells // 32 + 1, cells // 32 + 1)
    count = cells // 32
    assert grown.tile_width == grown.tile_height == -(-(cells + (count - 1) * 2) // count)  # ceil
    assert grown.token_amplification <= 1.15 < shifted.token_amplification
    assert bool((grown.coverage() > 0).all())
    assert min(s.overlap_stop - s.overlap_start for s in grown.seams()) >= 64
    assert TilePlan.from_json(grown.to_json()) == grown


def test_grow_fit_leaves_single_tile_axes_alone_and_rejects_unknown_fit():
    plan = make_plan(
        width_px=1024,
        height_px=512,
        tile_width_px=512,
        tile_height_px=512,
        overlap_px=64,
        compression=32,
        fit="grow",
    )
    assert (plan.rows, plan.tile_height, plan.tile_width) == (1, 16, 17)
    with pytest.raises(PlanError, match="shift, grow"):
        make_plan(
            width_px=1024,
            height_px=512,
            tile_width_px=512,
            tile_height_px=512,
            overlap_px=64,
            compression=32,
            fit="stretch",
        )


def test_tile_ceiling_is_checked_before_any_tile_is_built():
    import time

    start = time.perf_counter()
    with pytest.raises(PlanError, match=r"65536 tiles \(256×256\), more than the ceiling of 1024"):
        make_plan(
            width_px=16384,
            height_px=16384,
            tile_width_px=64,
            tile_height_px=64,
            overlap_px=0,
            compression=8,
            fit="shift",
        )
    assert time.perf_counter() - start < 0.5  # counted, not built: building them took 17-35 s
    assert check_plan(
        width_px=16384,
        height_px=16384,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=0,
        compression=8,
        max_tiles=65536,
    ) == (256, 256)
    for fit in ("shift", "grow"):
        plan = make_plan(
            width_px=2048,
            height_px=1024,
            tile_width_px=256,
            tile_height_px=256,
            overlap_px=64,
            compression=32,
            fit=fit,
        )
        assert check_plan(
            width_px=2048,
            height_px=1024,
            tile_width_px=256,
            tile_height_px=256,
            overlap_px=64,
            compression=32,
            fit=fit,
        ) == (plan.rows, plan.cols)
    with pytest.raises(PlanError, match="ceiling of 7"):
        make_plan(
            width_px=2048,
            height_px=1024,
            tile_width_px=256,
            tile_height_px=256,
            overlap_px=64,
            compression=32,
            fit="grow",
            max_tiles=7,
        )
