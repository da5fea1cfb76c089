"""Canvas sin-cos PE: a tile gets the crop of the whole canvas' embedding, and undo restores stock."""

import pytest
import torch
from diffusers import SanaTransformer2DModel
from diffusers.models.embeddings import PatchEmbed, get_2d_sincos_pos_embed

from lab.fixtures import tiny_transformer, tiny_video_transformer
from temporal_tiling.bcla import BCLACache, BCLAConfig, install_bcla
from temporal_tiling.pipeline import GuideFirst, generate, guide_plan
from temporal_tiling.plan import make_plan
from temporal_tiling.position import canvas_sincos_pos_embed, has_sincos_pos_embed


def tiny_sana_2k(**overrides) -> SanaTransformer2DModel:
    """A 2K-style model: sin-cos absolute position embedding (interpolation_scale set)."""
    return tiny_transformer(**{"num_layers": 1, "interpolation_scale": 2, **overrides})


def manual_tile_embedding(embed: PatchEmbed, x, plan, tile):
    """proj(x) + crop of get_2d_sincos_pos_embed on the whole canvas patch grid."""
    p = embed.patch_size
    grid = (plan.canvas_height // p, plan.canvas_width // p)
    dim, base, scale = embed.pos_embed.shape[-1], embed.base_size, embed.interpolation_scale
    canvas = get_2d_sincos_pos_embed(dim, grid, base_size=base, interpolation_scale=scale).float()
    rows = slice(tile.y // p, (tile.y + tile.height) // p)
    cols = slice(tile.x // p, (tile.x + tile.width) // p)
    crop = canvas.reshape(*grid, -1)[rows, cols]
    with torch.no_grad():
        latent = embed.proj(x).flatten(2).transpose(1, 2)
    return latent + crop.reshape(1, -1, crop.shape[-1])


def test_tile_gets_the_canvas_pe_crop_and_undo_restores_stock():
    model = tiny_sana_2k()
    embed = model.patch_embed
    assert has_sincos_pos_embed(model)
    plan = make_plan(
        width_px=40, height_px=24, tile_width_px=8, tile_height_px=8, overlap_px=2, compression=1, fit="shift"
    )  # non-square canvas: 24 × 40 cells
    tile = next(t for t in plan.tiles if t.y > 0 and t.x > 0)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        stock = embed(x)
    cache = BCLACache(BCLAConfig(), plan)
    undo = install_bcla(model, cache)
    with torch.no_grad():
        assert torch.equal(embed(x), stock), "no active tile: untouched"
        cache.begin_tile(tile)
        tiled = embed(x)
        cache.end_tile()
        after_tile = embed(x)
    expected = manual_tile_embedding(embed, x, plan, tile)
    assert torch.equal(tiled, expected)
    assert (tiled - stock).abs().max() > 0.1, "the canvas crop must differ from the stock (0, 0) grid"
    assert torch.equal(after_tile, stock)
    undo()
    assert "forward" not in embed.__dict__
    with torch.no_grad():
        assert torch.equal(embed(x), stock)


def test_canvas_pe_reaches_the_transformer_output_and_mode_off_leaves_it_stock():
    model = tiny_sana_2k()
    plan = make_plan(
        width_px=16, height_px=16, tile_width_px=8, tile_height_px=8, overlap_px=0, compression=1, fit="shift"
    )
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    text = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(3))

    def run():
        with torch.no_grad():
            return model(x, encoder_hidden_states=text, timestep=torch.tensor([500.0])).sample

    stock = run()
    outs = {}
    for mode in ("cumulative", "off"):
        cache = BCLACache(BCLAConfig(mode=mode, strength=0.0), plan)
        undo = install_bcla(model, cache)
        outs[mode] = []
        for tile in plan.tiles:
            cache.begin_tile(tile)
            outs[mode].append(run())
            cache.end_tile()
        undo()
    assert all(torch.equal(o, stock) for o in outs["off"])
    outs = outs["cumulative"]
    # Same content at four canvas places: four different embeddings, none of them the stock one.
    assert all((a - b).abs().max() > 1e-3 for i, a in enumerate(outs) for b in outs[i + 1 :])
    assert all((o - stock).abs().max() > 1e-3 for o in outs)
    assert torch.equal(run(), stock)


@pytest.mark.parametrize(
    "settings",
    [
        {"method": "guided", "cache_config": BCLAConfig(), "halo": 0},  # tile-sized calls, no halo window
        {"method": "guided", "guide_first": GuideFirst(bcla_seed=0.0), "halo": 0},  # no BCLA asked for
        {"method": "causal"},
    ],
    ids=["guided with BCLA", "guided without BCLA", "causal without BCLA"],
)
def test_a_tiled_run_gives_every_tile_its_canvas_positions(settings):
    """Through the whole guided path (guide pass, BCLA seed pass, causal tiles), and without a BCLA cache
    (a positions-only cache then carries the tile's place): every tile-sized model call adds the canvas
    PE crop of one tile, each tile's crop turns up, and none adds the stock grid a tile would get on its
    own; the whole-scene passes keep the model's own (whole-image) grid."""
    model = tiny_sana_2k()
    embed = model.patch_embed
    plan = make_plan(
        width_px=40,
        height_px=24,
        tile_width_px=16,
        tile_height_px=16,
        overlap_px=4,
        compression=1,
        fit="shift",
    )  # 24 × 40 cells, 3 × 2 tiles of 16 × 16
    guide_shape = (guide_plan(plan).canvas_height, guide_plan(plan).canvas_width)
    added: list[torch.Tensor] = []

    def record(module, inputs, output):
        added.append(output - module.proj(inputs[0]).flatten(2).transpose(1, 2))

    hook = embed.register_forward_hook(record)
    prompts = torch.randn(2, 1, 4, 16, generator=torch.Generator().manual_seed(4))
    generate(plan, model, prompts[0], prompts[1], steps=2, seed=3, **settings)
    hook.remove()

    def stock(shape: tuple[int, int]) -> torch.Tensor:
        dim, base, scale = embed.pos_embed.shape[-1], embed.base_size, embed.interpolation_scale
        return get_2d_sincos_pos_embed(dim, shape, base_size=base, interpolation_scale=scale).float()[None]

    crops = [canvas_sincos_pos_embed(embed, plan, tile) for tile in plan.tiles]
    tile_calls = [pe for pe in added if pe.shape[1] == 16 * 16]
    whole_calls = [pe for pe in added if pe.shape[1] == guide_shape[0] * guide_shape[1]]
    assert len(tile_calls) + len(whole_calls) == len(added) and guide_shape != (16, 16)
    assert bool(whole_calls) == (settings["method"] == "guided")
    matched = [
        [i for i, crop in enumerate(crops) if torch.allclose(pe[:1], crop, atol=1e-5)] for pe in tile_calls
    ]
    assert all(len(m) == 1 for m in matched), "a tile call added no tile's canvas crop"
    assert {m[0] for m in matched} == set(range(len(plan.tiles)))
    assert not any(torch.allclose(pe[:1], stock((16, 16)), atol=1e-3) for pe in tile_calls)
    assert all(torch.allclose(pe[:1], stock(guide_shape), atol=1e-5) for pe in whole_calls)


def test_models_without_sincos_pe_get_no_position_patch():
    model = tiny_transformer(num_layers=1)
    assert not has_sincos_pos_embed(model)
    install_bcla(
        model,
        BCLACache(
            BCLAConfig(),
            make_plan(
                width_px=16,
                height_px=8,
                tile_width_px=8,
                tile_height_px=8,
                overlap_px=0,
                compression=1,
                fit="shift",
            ),
        ),
    )
    assert "forward" not in model.patch_embed.__dict__


def test_rope_tables_follow_the_tile_on_the_canvas():
    model = tiny_video_transformer(num_layers=1, patch_size=(1, 2, 2), rope_max_seq_len=32)
    plan = make_plan(
        width_px=24, height_px=16, tile_width_px=8, tile_height_px=8, overlap_px=0, compression=1, fit="shift"
    )  # 16 × 24 cells = 8 × 12 patches
    tile = plan.tiles[-1]  # rows 8..16, cols 16..24 = patches 4..8, 8..12
    with torch.no_grad():
        canvas_cos, canvas_sin = model.rope(torch.zeros(1, 4, 1, 16, 24))
        stock = model.rope(torch.zeros(1, 4, 1, 8, 8))
    ids = torch.arange(8 * 12).reshape(8, 12)[4:8, 8:12].flatten()
    cache = BCLACache(BCLAConfig(), plan)
    undo = install_bcla(model, cache)
    cache.begin_tile(tile)
    cos, sin = model.rope(torch.zeros(1, 4, 1, 8, 8))
    assert torch.equal(cos, canvas_cos[:, ids]) and torch.equal(sin, canvas_sin[:, ids])
    assert not torch.equal(cos, stock[0])
    cache.end_tile()
    assert torch.equal(model.rope(torch.zeros(1, 4, 1, 8, 8))[0], stock[0])
    undo()
    assert "forward" not in model.rope.__dict__
