import itertools

import pytest
import torch

from temporal_tiling.plan import ORDERS, PlanError, TilePlan, make_plan


def test_uniform_tiles_cover_canvas_and_edge_tiles_shift_inward():
    plan = make_plan(1000 // 8 * 8, 520, 256, 256, 64, 8)
    assert {(t.height, t.width) for t in plan.tiles} == {(32, 32)}
    assert bool((plan.coverage() > 0).all())
    right = max(t.x + t.width for t in plan.tiles)
    bottom = max(t.y + t.height for t in plan.tiles)
    assert (bottom, right) == (plan.canvas_height, plan.canvas_width)
    strides = sorted({t.x for t in plan.tiles})
    assert all(b - a <= 32 - 8 for a, b in itertools.pairwise(strides))


def test_grid_size_and_token_amplification():
    plan = make_plan(2048, 1024, 512, 512, 0, 32)
    assert (plan.rows, plan.cols, len(plan)) == (2, 4, 8)
    assert plan.token_amplification == 1.0
    overlapped = make_plan(2048, 1024, 512, 512, 128, 32)
    assert overlapped.token_amplification > 1.0


@pytest.mark.parametrize("order", ORDERS)
def test_every_order_visits_every_tile_once(order):
    plan = make_plan(640, 384, 128, 128, 32, 32, order=order, seed=3)
    assert sorted((t.row, t.col) for t in plan.tiles) == [
        (r, c) for r in range(plan.rows) for c in range(plan.cols)
    ]
    assert [t.index for t in plan.tiles] == list(range(len(plan)))


def test_orders_differ_and_random_is_seeded():
    cells = {o: [(t.row, t.col) for t in make_plan(640, 640, 128, 128, 0, 32, o, 1).tiles] for o in ORDERS}
    assert len({tuple(v) for v in cells.values()}) == len(ORDERS)
    again = [(t.row, t.col) for t in make_plan(640, 640, 128, 128, 0, 32, "random", 1).tiles]
    other = [(t.row, t.col) for t in make_plan(640, 640, 128, 128, 0, 32, "random", 2).tiles]
    assert again == cells["random"] != other
    assert cells["serpentine"][5] == (1, cells["serpentine"][4][1])
    assert cells["center_out"][0] == (2, 2)
    assert cells["spiral"][:6] == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 4)]


def test_neighbours_are_earlier_adjacent_tiles():
    plan = make_plan(384, 384, 128, 128, 0, 32, "raster")
    assert plan.tiles[0].neighbors == ()
    assert plan.tiles[4].neighbors == (0, 1, 2, 3)  # centre of a 3x3 grid in raster order
    for tile in plan.tiles:
        for n in tile.neighbors:
            other = plan.tiles[n]
            assert n < tile.index and max(abs(other.row - tile.row), abs(other.col - tile.col)) == 1


def test_known_mask_marks_cells_made_by_earlier_tiles():
    plan = make_plan(448, 256, 256, 256, 64, 32)
    assert not plan.known_mask(0).any()
    known = plan.known_mask(1)
    assert known.shape == (8, 8)
    assert bool(known[:, :2].all()) and not known[:, 2:].any()


def test_seams_sit_on_overlap_centre_lines_in_pixels():
    plan = make_plan(448, 256, 256, 256, 64, 32)
    (seam,) = plan.seams()
    assert (seam.axis, seam.overlap_start, seam.overlap_stop, seam.position) == ("vertical", 192, 256, 224)
    flush = make_plan(512, 512, 256, 256, 0, 32).seams()
    assert sorted((s.axis, s.position) for s in flush) == [("horizontal", 256)] * 2 + [("vertical", 256)] * 2


def test_json_round_trip_and_rejects_uncovering_edit():
    plan = make_plan(640, 384, 128, 128, 32, 32, "spiral")
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
    with pytest.raises(PlanError, match=message):
        make_plan(*args)


def test_unknown_order_lists_choices():
    with pytest.raises(PlanError, match="raster, serpentine"):
        make_plan(512, 512, 256, 256, 0, 32, order="zigzag")


def test_plan_error_is_a_value_error():
    assert issubclass(PlanError, ValueError)
    assert torch.equal(make_plan(256, 256, 256, 256, 0, 32).coverage(), torch.ones(8, 8))


@pytest.mark.parametrize("cells", [64, 128, 256])
def test_grow_fit_keeps_overlap_free_tile_count_and_low_amplification(cells):
    shifted = make_plan(cells * 32, cells * 32, 1024, 1024, 64, 32)
    grown = make_plan(cells * 32, cells * 32, 1024, 1024, 64, 32, fit="grow")
    assert (grown.rows, grown.cols) == (cells // 32, cells // 32)
    assert (shifted.rows, shifted.cols) == (cells // 32 + 1, cells // 32 + 1)
    count = cells // 32
    assert grown.tile_width == grown.tile_height == -(-(cells + (count - 1) * 2) // count)  # ceil
    assert grown.token_amplification <= 1.15 < shifted.token_amplification
    assert bool((grown.coverage() > 0).all())
    assert min(s.overlap_stop - s.overlap_start for s in grown.seams()) >= 64
    assert TilePlan.from_json(grown.to_json()) == grown


def test_grow_fit_leaves_single_tile_axes_alone_and_rejects_unknown_fit():
    plan = make_plan(1024, 512, 512, 512, 64, 32, fit="grow")
    assert (plan.rows, plan.tile_height, plan.tile_width) == (1, 16, 17)
    with pytest.raises(PlanError, match="shift, grow"):
        make_plan(1024, 512, 512, 512, 64, 32, fit="stretch")


def test_tile_ceiling_is_checked_before_any_tile_is_built():
    import time

    from temporal_tiling.plan import check_plan

    start = time.perf_counter()
    with pytest.raises(PlanError, match=r"65536 tiles \(256×256\), more than the ceiling of 1024"):
        make_plan(16384, 16384, 64, 64, 0, 8)
    assert time.perf_counter() - start < 0.5  # counted, not built: building them took 17-35 s
    assert check_plan(16384, 16384, 64, 64, 0, 8, max_tiles=65536) == (256, 256)
    for fit in ("shift", "grow"):
        plan = make_plan(2048, 1024, 256, 256, 64, 32, fit=fit)
        assert check_plan(2048, 1024, 256, 256, 64, 32, fit=fit) == (plan.rows, plan.cols)
    with pytest.raises(PlanError, match="ceiling of 7"):
        make_plan(2048, 1024, 256, 256, 64, 32, fit="grow", max_tiles=7)
