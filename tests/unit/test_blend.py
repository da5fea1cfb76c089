"""Split / stitch / blenders / colour correction: exact on consistent tiles, better on drifted ones."""

import kornia
import pytest
import torch
import torch.nn.functional as F

from temporal_tiling.blend import (
    BlendError,
    apt_correct,
    feather_weights,
    reference_correct,
    screened_poisson,
    split_tiles,
    stitch,
)
from temporal_tiling.metrics import seam_report
from temporal_tiling.pipeline import guide_plan
from temporal_tiling.plan import PlanError, make_plan

BLENDERS = ("feather", "laplacian", "poisson")


def photo_like(batch=1, height=192, width=256, seed=0):
    """Smooth structure at several scales with faint fine texture, like a downscaled photo."""
    g = torch.Generator().manual_seed(seed)
    image = 0.35 + sum(
        amplitude
        * F.interpolate(
            torch.rand(batch, 3, height // s, width // s, generator=g), size=(height, width), mode="bicubic"
        )
        for s, amplitude in ((4, 0.03), (16, 0.07), (64, 0.2))
    )
    return image.clamp(0, 1)


def drift(tiles, plan, seed=0, gain=0.08, offset=0.04, lab_cast=0.0):
    """What independent generation does: per-tile gain/offset (and a chroma cast in Lab)."""
    g = torch.Generator().manual_seed(seed)
    n = tiles.shape[0]
    gains = 1 + gain * torch.randn(n, 1, 1, 1, generator=g)
    offsets = offset * torch.randn(n, 3, 1, 1, generator=g)
    out = (tiles * gains + offsets).clamp(0, 1)
    if lab_cast:
        lab = kornia.color.rgb_to_lab(out)
        lab[:, 1:] += lab_cast * torch.randn(n, 2, 1, 1, generator=g)
        out = kornia.color.lab_to_rgb(lab).clamp(0, 1)
    return out


def visible_ratio(image, plan):
    """Gradient ratio of each seam's worst line, wherever in the overlap the step is."""
    return seam_report(image, plan).gradient_ratio_mean


def visible_delta_e(image, plan):
    return seam_report(image, plan).delta_e_mean


PLANS = {
    "overlap32_c8": lambda: make_plan(
        width_px=256,
        height_px=192,
        tile_width_px=96,
        tile_height_px=96,
        overlap_px=32,
        compression=8,
        fit="shift",
    ),
    "overlap0_c8": lambda: make_plan(
        width_px=256,
        height_px=192,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=0,
        compression=8,
        fit="shift",
    ),
    "shifted_edges_c32": lambda: make_plan(
        width_px=320,
        height_px=192,
        tile_width_px=128,
        tile_height_px=128,
        overlap_px=32,
        compression=32,
        fit="shift",
    ),
}


@pytest.mark.parametrize("name", list(PLANS))
def test_split_then_none_stitch_is_exact(name):
    plan = PLANS[name]()
    image = photo_like(2, plan.height_px, plan.width_px)
    tiles = split_tiles(image, plan)
    assert tiles.shape == (len(plan) * 2, 3, plan.tile_height_px, plan.tile_width_px)
    assert torch.equal(stitch(tiles, plan, "none"), image)


def test_split_is_tile_major_in_plan_order_and_handles_latents():
    plan = make_plan(
        width_px=256,
        height_px=192,
        tile_width_px=96,
        tile_height_px=96,
        overlap_px=32,
        compression=8,
        order="serpentine",
        fit="shift",
    )
    image = photo_like(batch=2)
    tiles = split_tiles(image, plan)
    for t in plan.tiles:
        ys, xs = t.pixel_slices(plan.compression)
        for b in range(2):
            assert torch.equal(tiles[t.index * 2 + b], image[b, :, ys, xs])
    latent = torch.randn(2, 32, plan.canvas_height, plan.canvas_width)
    latent_tiles = split_tiles(latent, plan, scale=1)
    assert latent_tiles.shape == (len(plan) * 2, 32, plan.tile_height, plan.tile_width)
    torch.testing.assert_close(stitch(latent_tiles, plan, "feather", scale=1), latent)


def test_feather_weights_are_a_partition_of_unity():
    for name in PLANS:
        plan = PLANS[name]()
        for ramp in ("linear", "cosine"):
            weights = feather_weights(plan, ramp)
            total = torch.zeros(plan.height_px, plan.width_px)
            for t, w in zip(plan.tiles, weights, strict=True):
                total[t.pixel_slices(plan.compression)] += w[0]
            torch.testing.assert_close(total, torch.ones_like(total))
            assert weights.min() > 0


@pytest.mark.parametrize("method", BLENDERS)
@pytest.mark.parametrize("ramp", ["linear", "cosine"])
@pytest.mark.parametrize("name", ["overlap32_c8", "shifted_edges_c32"])
def test_every_blender_is_lossless_on_consistent_tiles(method, ramp, name):
    plan = PLANS[name]()
    image = photo_like(2, plan.height_px, plan.width_px)
    out = stitch(split_tiles(image, plan), plan, method, ramp)
    assert (out - image).abs().max() <= 1e-4


@pytest.mark.parametrize("method", ["feather", "laplacian"])
def test_zero_overlap_blenders_are_lossless(method):
    plan = PLANS["overlap0_c8"]()
    image = photo_like()
    assert (stitch(split_tiles(image, plan), plan, method) - image).abs().max() <= 1e-4


@pytest.mark.parametrize("color", ["apt", "reference"])
def test_colour_correction_is_identity_on_consistent_tiles(color):
    plan = PLANS["overlap32_c8"]()
    image = photo_like(batch=2)
    out = stitch(split_tiles(image, plan), plan, "feather", color=color, reference=image)
    assert (out - image).abs().max() <= 1e-4


@pytest.mark.parametrize("method", BLENDERS)
def test_every_blender_reduces_the_gradient_ratio_on_drifted_tiles(method):
    plan = PLANS["overlap32_c8"]()
    image = photo_like()
    tiles = drift(split_tiles(image, plan), plan)
    baseline = visible_ratio(stitch(tiles, plan, "none"), plan)
    blended = visible_ratio(stitch(tiles, plan, method, "cosine"), plan)
    assert baseline > 1.8
    assert blended < 0.75 * baseline


def test_poisson_hides_zero_overlap_seams():
    plan = PLANS["overlap0_c8"]()
    tiles = drift(split_tiles(photo_like(), plan), plan)
    baseline = seam_report(stitch(tiles, plan, "none"), plan).gradient_ratio_mean
    assert seam_report(stitch(tiles, plan, "poisson"), plan).gradient_ratio_mean < 0.6 * baseline


@pytest.mark.parametrize("name", ["overlap32_c8", "overlap0_c8"])
def test_apt_and_reference_reduce_delta_e_on_colour_cast_tiles(name):
    plan = PLANS[name]()
    image = photo_like()
    tiles = drift(split_tiles(image, plan), plan, gain=0.0, offset=0.0, lab_cast=6.0)
    low_res = F.interpolate(image, scale_factor=0.25, mode="area")
    clean = visible_delta_e(image, plan)  # what the image itself scores across those lines
    cast = visible_delta_e(stitch(tiles, plan, "none"), plan) - clean
    apt = visible_delta_e(stitch(tiles, plan, "none", color="apt"), plan) - clean
    ref = visible_delta_e(stitch(tiles, plan, "none", color="reference", reference=low_res), plan) - clean
    assert cast > 1.5
    assert apt < 0.3 * cast and ref < 0.3 * cast


def test_batches_stitch_like_single_images():
    plan = PLANS["overlap32_c8"]()
    image = photo_like(batch=2)
    tiles = drift(split_tiles(image, plan), plan)
    both = stitch(tiles, plan, "poisson", color="apt")
    grid = tiles.reshape(len(plan), 2, *tiles.shape[1:])
    for b in range(2):
        single = stitch(grid[:, b], plan, "poisson", color="apt")
        torch.testing.assert_close(both[b : b + 1], single, atol=1e-5, rtol=0)


def test_half_precision_tiles_come_back_in_their_dtype():
    plan = PLANS["overlap32_c8"]()
    tiles = split_tiles(photo_like(), plan).to(torch.bfloat16)
    out = stitch(tiles, plan, "laplacian", color="apt")
    assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 192, 256)


def test_bad_inputs_raise_clear_errors():
    plan = PLANS["overlap32_c8"]()
    image = photo_like()
    tiles = split_tiles(image, plan)
    with pytest.raises(PlanError, match=f"holds {len(plan) - 1} images but the plan has {len(plan)} tiles"):
        stitch(tiles[1:], plan)
    with pytest.raises(PlanError, match="Tiles are 64×96 but the plan's tiles are 96×96"):
        stitch(tiles[..., :64], plan)
    with pytest.raises(BlendError, match="image is 200×192 but the tile plan covers 256×192"):
        split_tiles(image[..., :200], plan)
    with pytest.raises(PlanError, match="NaN"):
        stitch(tiles.index_put((torch.tensor([3]),), torch.tensor(float("nan"))), plan, "feather")
    with pytest.raises(BlendError, match="NaN"):
        split_tiles(image.index_put((torch.tensor([0]),), torch.tensor(float("nan"))), plan)
    with pytest.raises(BlendError, match="aspect"):
        stitch(tiles, plan, "feather", color="reference", reference=torch.rand(1, 3, 64, 64))
    with pytest.raises(BlendError, match="needs a reference"):
        stitch(tiles, plan, "feather", color="reference")
    with pytest.raises(BlendError, match="Unknown method 'blur'"):
        stitch(tiles, plan, "blur")
    with pytest.raises(BlendError, match="RGB"):
        stitch(torch.rand(len(plan), 4, 96, 96), plan, color="apt")


def test_the_samplers_whole_scene_guide_is_a_colour_reference():
    """The sampler's guide output is rounded to whole latent cells, so its aspect differs from the
    canvas's by up to one cell (19×13 cells, 1.462, for a 48×32-cell canvas, 1.500); the Seam Blender
    takes it as its reference. A reference off by more than a cell and 1 % is still refused."""
    plan = make_plan(
        width_px=384, height_px=256, tile_width_px=128, tile_height_px=128, overlap_px=32, compression=8
    )
    tiles = split_tiles(photo_like(1, 256, 384), plan)
    for long_side in (None, 100, 512):
        guide = guide_plan(plan, long_side)
        reference = torch.rand(1, 3, guide.height_px, guide.width_px)
        assert stitch(tiles, plan, "feather", color="reference", reference=reference).shape[-2:] == (256, 384)
    with pytest.raises(BlendError, match="aspect"):
        stitch(tiles, plan, "feather", color="reference", reference=torch.rand(1, 3, 104, 176))


def test_direct_colour_functions_keep_shape():
    plan = PLANS["overlap32_c8"]()
    tiles = split_tiles(photo_like(), plan)
    assert apt_correct(tiles, plan).shape == tiles.shape
    assert reference_correct(tiles, plan, photo_like()[..., ::2, ::2]).shape == tiles.shape


@pytest.mark.parametrize("shape", [(6, 8), (7, 5)])
def test_screened_poisson_solves_the_neumann_system(shape):
    rhs = torch.randn(2, 1, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = screened_poisson(rhs, 0.1)
    padded = F.pad(u, (1, 1, 1, 1), mode="replicate")  # Neumann: ghost pixel = edge pixel
    laplace = (
        padded[..., 2:, 1:-1]
        + padded[..., :-2, 1:-1]
        + padded[..., 1:-1, 2:]
        + padded[..., 1:-1, :-2]
        - 4 * u
    )
    torch.testing.assert_close(0.1 * u - laplace, rhs, atol=1e-10, rtol=0)
