"""BCLA: exactness against stock diffusers processors, full attention over A ∪ B, modes, CFG, RoPE rule."""

import itertools

import pytest
import torch
from diffusers.models.attention_processor import Attention, SanaLinearAttnProcessor2_0
from diffusers.models.transformers.transformer_sana_video import SanaLinearAttnProcessor3_0, WanRotaryPosEmbed

from lab.fixtures import tiny_transformer, tiny_video_transformer
from temporal_tiling.bcla import (
    BCLACache,
    BCLAConfig,
    BCLAError,
    BCLALinearAttnProcessor2_0,
    BCLALinearAttnProcessor3_0,
    BCLAStats,
    bcla_processors,
    install_bcla,
)
from temporal_tiling.bcla.processors import apply_rotary_emb
from temporal_tiling.plan import make_plan

LAYER = "attn"


# --- helpers ---------------------------------------------------------------------------------------


def run_sana(model, x, seed=1, batch_text=None):
    g = torch.Generator().manual_seed(seed)
    text = batch_text if batch_text is not None else torch.randn(x.shape[0], 4, 16, generator=g)
    with torch.no_grad():
        return model(x, encoder_hidden_states=text, timestep=torch.full((x.shape[0],), 500.0)).sample


def linear_attn(dim=16, heads=2, rope=False, dtype=torch.float32) -> Attention:
    torch.manual_seed(0)
    if rope:
        attn = Attention(
            query_dim=dim,
            heads=heads,
            dim_head=dim // heads,
            kv_heads=heads,
            qk_norm="rms_norm_across_heads",
            processor=SanaLinearAttnProcessor3_0(),
        )
    else:
        attn = Attention(
            query_dim=dim, heads=heads, dim_head=dim // heads, processor=SanaLinearAttnProcessor2_0()
        )
    return attn.to(dtype).eval()


def rope_tables(height: int, width: int, head_dim: int = 12):
    """SANA-Video's rotary tables for a [height, width] token grid, [1, N, 1, head_dim] each."""
    rope = WanRotaryPosEmbed(head_dim, (1, 1, 1), max_seq_len=max(height, width) + 1)
    return rope(torch.zeros(1, 1, 1, height, width))


def tokens(n: int, dim: int = 16, batch: int = 1, seed: int = 0, dtype=torch.float32):
    return torch.randn(batch, n, dim, generator=torch.Generator().manual_seed(seed)).to(dtype)


def strip_plan(tiles: int):
    """A 1 × tiles plan of 4 × 4-cell tiles (compression 1), raster order."""
    return make_plan(
        width_px=4 * tiles,
        height_px=4,
        tile_width_px=4,
        tile_height_px=4,
        overlap_px=0,
        compression=1,
        fit="shift",
    )


# --- 1. empty cache is bit-identical to stock ------------------------------------------------------
def test_empty_cache_is_bit_identical_to_stock_sana():
    model = tiny_transformer()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    stock = run_sana(model, x)
    plan = make_plan(
        width_px=16, height_px=8, tile_width_px=8, tile_height_px=8, overlap_px=0, compression=1, fit="shift"
    )
    cache = BCLACache(BCLAConfig(), plan)
    undo = install_bcla(model, cache)
    assert isinstance(model.transformer_blocks[1].attn1.processor, BCLALinearAttnProcessor2_0)
    assert torch.equal(run_sana(model, x), stock)  # no tile active: model untouched
    cache.begin_tile(plan.tiles[0])
    cache.set_call(0.5, [0])
    out = run_sana(model, x)
    assert cache.nbytes() > 0, "the BCLA path (recording) must have run"
    assert torch.equal(out, stock)
    undo()
    assert type(model.transformer_blocks[0].attn1.processor) is SanaLinearAttnProcessor2_0


def test_empty_cache_is_bit_identical_to_stock_sana_video_rope():
    model = tiny_video_transformer()
    x = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    text = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        stock = model(x, encoder_hidden_states=text, timestep=torch.tensor([500.0])).sample
    plan = make_plan(
        width_px=16, height_px=8, tile_width_px=8, tile_height_px=8, overlap_px=0, compression=1, fit="shift"
    )
    cache = BCLACache(BCLAConfig(), plan)
    undo = install_bcla(model, cache)
    assert isinstance(model.transformer_blocks[0].attn1.processor, BCLALinearAttnProcessor3_0)
    cache.begin_tile(plan.tiles[0])
    cache.set_call(0.5, [0])
    with torch.no_grad():
        out = model(x, encoder_hidden_states=text, timestep=torch.tensor([500.0])).sample
    assert cache.nbytes() > 0
    assert torch.equal(out, stock)
    undo()


# --- 2. cache from A + own B == full linear attention over A ∪ B -----------------------------------
def _cache_a_then_b(proc_kwargs_a, proc_kwargs_b, attn, config=None, plan=None):
    plan = plan or strip_plan(2)
    cache = BCLACache(config or BCLAConfig(), plan)
    cls = BCLALinearAttnProcessor3_0 if "rotary_emb" in proc_kwargs_a else BCLALinearAttnProcessor2_0
    proc = cls(cache, LAYER)
    cache.begin_tile(plan.tiles[0])
    cache.set_call(0.5, [0])
    proc(attn, **proc_kwargs_a)
    cache.end_tile()
    cache.begin_tile(plan.tiles[1])
    cache.set_call(0.5, [0])
    return proc(attn, **proc_kwargs_b), cache


def test_cache_of_a_equals_full_linear_attention_over_a_and_b():
    attn = linear_attn()
    a, b = tokens(24, seed=1), tokens(16, seed=2)
    with torch.no_grad():
        out, _ = _cache_a_then_b({"hidden_states": a}, {"hidden_states": b}, attn)
        full = SanaLinearAttnProcessor2_0()(attn, torch.cat([a, b], dim=1))[:, 24:]
        alone = SanaLinearAttnProcessor2_0()(attn, b)
    assert (out - full).abs().max() <= 1e-5
    assert (alone - full).abs().max() > 1e-2, "A must matter, or the test proves nothing"


def test_cache_of_a_equals_full_linear_attention_with_rope():
    attn = linear_attn(dim=24, rope=True)
    cos, sin = rope_tables(6, 8)  # 48 positions: A = first 28, B = last 20
    a, b = tokens(28, dim=24, seed=1), tokens(20, dim=24, seed=2)
    with torch.no_grad():
        out, _ = _cache_a_then_b(
            {"hidden_states": a, "rotary_emb": (cos[:, :28], sin[:, :28])},
            {"hidden_states": b, "rotary_emb": (cos[:, 28:], sin[:, 28:])},
            attn,
        )
        full = SanaLinearAttnProcessor3_0()(attn, torch.cat([a, b], dim=1), rotary_emb=(cos, sin))[:, 28:]
        alone = SanaLinearAttnProcessor3_0()(attn, b, rotary_emb=(cos[:, 28:], sin[:, 28:]))
    assert (out - full).abs().max() <= 1e-5
    assert (alone - full).abs().max() > 1e-2


# --- 3. cache norm grows over a raster pass ------------------------------------------------------
def test_cumulative_cache_norm_grows_monotonically_over_raster_pass():
    model = tiny_transformer()
    plan = make_plan(
        width_px=24, height_px=16, tile_width_px=8, tile_height_px=8, overlap_px=0, compression=1, fit="shift"
    )  # 2 × 3 tiles
    cache = BCLACache(BCLAConfig(), plan)
    install_bcla(model, cache)
    norms = [cache.norm()]
    for tile in plan.tiles:
        cache.begin_tile(tile)
        for sigma in (1.0, 0.5):
            cache.set_call(sigma, [0])
            run_sana(model, torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(tile.index)))
        cache.end_tile()
        norms.append(cache.norm())
    assert norms[0] == 0.0
    assert all(b > a for a, b in itertools.pairwise(norms)), norms


# --- 4. RoPE rule in bf16 --------------------------------------------------------------------------
def _rope_raster(dtype):
    """64 tiles of 4 × 4 tokens on a 32 × 32 canvas, each with its canvas RoPE positions."""
    plan = make_plan(
        width_px=32, height_px=32, tile_width_px=4, tile_height_px=4, overlap_px=0, compression=1, fit="shift"
    )
    cos, sin = rope_tables(32, 32)
    grid = torch.arange(32 * 32).reshape(32, 32)
    attn = linear_attn(dim=24, rope=True, dtype=dtype)
    cache = BCLACache(BCLAConfig(), plan)
    proc = BCLALinearAttnProcessor3_0(cache, LAYER)
    xs, idx = [], []
    with torch.no_grad():
        for tile in plan.tiles:
            ids = grid[tile.slices].flatten()
            x = (tokens(16, dim=24, seed=tile.index) + 1.0).to(dtype)
            cache.begin_tile(tile)
            cache.set_call(0.5, [0])
            out = proc(attn, x, rotary_emb=(cos[:, ids], sin[:, ids]))
            xs.append(x)
            idx.append(ids)
            if tile.index < len(plan) - 1:
                cache.end_tile()
    return attn, torch.cat(xs, dim=1), torch.cat(idx), (cos, sin), out


def test_rope_bf16_64_tiles_stays_finite_with_unrotated_denominator():
    attn, x, idx, (cos, sin), out = _rope_raster(torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    with torch.no_grad():  # float32 full attention over all 64 tiles, last tile's queries
        full = SanaLinearAttnProcessor3_0()(attn.float(), x.float(), rotary_emb=(cos[:, idx], sin[:, idx]))
    assert (out.float() - full[:, -16:]).abs().max() < 0.05 * full.abs().max()


def test_rotated_denominator_crosses_zero_which_is_why_bcla_must_not_use_it():
    """Documents SANA-Video's rule. Z built from ROTATED φ(k) is not positive: its dot with rotated φ(q)
    changes sign and comes arbitrarily close to 0 (÷0 → Inf/NaN, sign-flipped outputs). The un-rotated
    denominator is a sum of products of non-negative numbers and stays > 0. Do not "fix" it back."""
    attn, x, idx, (cos, sin), _ = _rope_raster(torch.float32)
    with torch.no_grad():
        q = torch.relu(attn.norm_q(attn.to_q(x))).unflatten(2, (2, -1))
        k = torch.relu(attn.norm_k(attn.to_k(x))).unflatten(2, (2, -1))
    rot = (cos[:, idx], sin[:, idx])
    q_rot, k_rot = apply_rotary_emb(q, *rot), apply_rotary_emb(k, *rot)
    z, z_rot = k.sum(1, keepdim=True), k_rot.sum(1, keepdim=True)  # [1, 1, heads, d]
    den = (q * z).sum(-1)  # [1, N, heads]
    den_rot = (q_rot * z_rot).sum(-1)
    assert den.min() > 0
    assert den_rot.min() < 0 < den_rot.max(), "the rotated denominator changes sign"
    ratio = (den_rot / den).abs()
    assert ratio.min() < 1e-2, "…and gets near zero where the true normaliser does not"


def test_fp16_model_at_4k_token_counts_keeps_statistics_in_float32():
    """A SANA 4K tile is 128 × 128 = 16384 tokens. Its S = Σ φ(k)ᵀ[v; 1] leaves fp16's range (65504)
    long before the sum ends, so the processor runs the model's fp16 projections but accumulates,
    caches and mixes S in float32; two such tiles (one cached) match float64 attention over both."""
    attn = linear_attn(dim=64, heads=2, dtype=torch.float16)
    with torch.no_grad():
        for projection in (attn.to_q, attn.to_k, attn.to_v):
            projection.weight.mul_(4)
    n = 16384
    a = (tokens(n, dim=64, seed=1).abs() + 1).half()
    b = (tokens(n, dim=64, seed=2).abs() + 1).half()
    with torch.no_grad():
        out, cache = _cache_a_then_b({"hidden_states": a}, {"hidden_states": b}, attn)
        k = torch.relu(attn.to_k(a)).unflatten(2, (2, -1))  # [1, N, heads, d], fp16 as the model gives it
        v = attn.to_v(a).unflatten(2, (2, -1))
        in_fp16 = torch.einsum("bnhd,bnhe->bhde", v, k)  # the same sum kept in the model's dtype
        attn64 = attn.double()
        full = SanaLinearAttnProcessor2_0()(attn64, torch.cat([a, b], dim=1).double())[:, n:]
    stats = cache.earlier_stats.get(0.5, LAYER, 0)
    assert stats.dtype == torch.float32
    assert torch.isfinite(stats).all() and stats.abs().max() > 65504, "S must exceed fp16's range"
    assert not torch.isfinite(in_fp16).all(), "the same sum in fp16 overflows: the test would catch it"
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    assert (out.double() - full).abs().max() < 1e-2 * full.abs().max()


# --- 5. CFG branches never mix --------------------------------------------------------------------
def _cfg_run(perturbed: int | None):
    """Tile 0 then tile 1 with a [cond, uncond] batch; optionally perturb one branch's tile-0 inputs."""
    model = tiny_transformer()
    plan = make_plan(
        width_px=16, height_px=8, tile_width_px=8, tile_height_px=8, overlap_px=0, compression=1, fit="shift"
    )
    cache = BCLACache(BCLAConfig(), plan)
    install_bcla(model, cache)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 8, 8, generator=g)
    text = torch.randn(2, 4, 16, generator=g)
    x0, text0 = x.clone(), text.clone()
    if perturbed is not None:
        x0[perturbed] += 1.5
        text0[perturbed] += 1.5
    cache.begin_tile(plan.tiles[0])
    cache.set_call(0.5, [0, 1])
    run_sana(model, x0, batch_text=text0)
    cache.end_tile()
    cache.begin_tile(plan.tiles[1])
    cache.set_call(0.5, [0, 1])
    out = run_sana(model, x.flip(-1), batch_text=text)
    return cache, out


@pytest.mark.parametrize("perturbed", [1, 0])
def test_cfg_perturbing_one_branch_leaves_the_other_branch_unchanged(perturbed):
    """Perturb the uncond (or cond) branch's inputs: the other branch's stats and outputs do not move."""
    other = 1 - perturbed
    base, out = _cfg_run(None)
    pert, out_p = _cfg_run(perturbed)
    for layer in ("transformer_blocks.0.attn1", "transformer_blocks.1.attn1"):
        kept, kept_p = base.earlier_stats.get(0.5, layer, other), pert.earlier_stats.get(0.5, layer, other)
        assert kept.shape == (1, 2, 9, 8)
        assert (kept - kept_p).abs().max() <= 1e-6
        moved = base.earlier_stats.get(0.5, layer, perturbed) - pert.earlier_stats.get(0.5, layer, perturbed)
        assert moved.abs().max() > 1e-2
    assert (out[other] - out_p[other]).abs().max() <= 1e-6
    assert (out[perturbed] - out_p[perturbed]).abs().max() > 1e-3


# --- 6. memory and modes -------------------------------------------------------------------------
def _raster(cache, plan, attn, batch=2, sigmas=(1.0, 0.5), track=None):
    proc = BCLALinearAttnProcessor2_0(cache, LAYER)
    out = None
    with torch.no_grad():
        for tile in plan.tiles:
            cache.begin_tile(tile)
            for sigma in sigmas:
                cache.set_call(sigma, [0, 1][:batch])
                out = proc(attn, tokens(16, batch=batch, seed=tile.index))
            if track is not None:
                track.append(cache.nbytes())
            cache.end_tile()
            if track is not None:
                track.append(cache.nbytes())
    return out


def test_cumulative_nbytes_identical_for_4_and_256_tiles():
    attn = linear_attn()
    sizes = []
    for side in (2, 16):
        plan = make_plan(
            width_px=4 * side,
            height_px=4 * side,
            tile_width_px=4,
            tile_height_px=4,
            overlap_px=0,
            compression=1,
            fit="shift",
        )
        cache = BCLACache(BCLAConfig(), plan)
        _raster(cache, plan, attn)
        sizes.append(cache.nbytes())
    # 2 sigmas × 2 branches × [1, 2 heads, 9, 8] float32
    assert sizes == [2 * 2 * 2 * 9 * 8 * 4] * 2


def test_neighbors_mode_memory_is_bounded_by_the_neighbour_window():
    attn = linear_attn()
    peaks = []
    for rows in (3, 12):
        plan = make_plan(
            width_px=12,
            height_px=4 * rows,
            tile_width_px=4,
            tile_height_px=4,
            overlap_px=0,
            compression=1,
            fit="shift",
        )  # 3 columns
        cache = BCLACache(BCLAConfig(mode="neighbors"), plan)
        track: list[int] = []
        _raster(cache, plan, attn, sigmas=(0.5,), track=track)
        peaks.append(max(track))
    assert peaks[0] == peaks[1] > 0


def _reference(attn, token_sets, own):
    """Full linear attention over the union of token_sets and own, own's queries."""
    with torch.no_grad():
        full = SanaLinearAttnProcessor2_0()(attn, torch.cat([*token_sets, own], dim=1))
    return full[:, -own.shape[1] :]


def _mode_output(config, plan, last):
    attn = linear_attn()
    cache = BCLACache(config, plan)
    proc = BCLALinearAttnProcessor2_0(cache, LAYER)
    with torch.no_grad():
        for tile in plan.tiles[: last + 1]:
            cache.begin_tile(tile)
            cache.set_call(0.5, [0])
            out = proc(attn, tokens(16, seed=tile.index))
            if tile.index < last:
                cache.end_tile()
    return attn, out


@pytest.mark.parametrize(
    ("config", "seen"),
    [
        (BCLAConfig(mode="cumulative"), [0, 1, 2, 3]),
        (BCLAConfig(mode="sparse"), [0, 3]),
        (BCLAConfig(mode="decay", decay=0.0), [3]),
        (BCLAConfig(mode="decay", decay=1.0), [0, 1, 2, 3]),
    ],
)
def test_mode_sees_exactly_the_expected_tiles(config, seen):
    plan = strip_plan(5)
    attn, out = _mode_output(config, plan, last=4)
    expected = _reference(attn, [tokens(16, seed=i) for i in seen], tokens(16, seed=4))
    assert (out - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("decay", [0.0, 0.25, 1.0])
def test_distance_mode_weights_earlier_tiles_by_canvas_distance(decay):
    plan = make_plan(
        width_px=12, height_px=12, tile_width_px=4, tile_height_px=4, overlap_px=0, compression=1, fit="shift"
    )  # 3 × 3 raster; tile 4 is the centre: 0, 2 diagonal, 1, 3 beside
    attn = linear_attn()
    cache = BCLACache(BCLAConfig(mode="distance", decay=decay), plan)
    proc = BCLALinearAttnProcessor2_0(cache, LAYER)
    recorded = []
    with torch.no_grad():
        for tile in plan.tiles[:5]:
            cache.begin_tile(tile)
            cache.set_call(0.5, [0])
            proc(attn, tokens(16, seed=tile.index))
            recorded.append(cache.tile_stats.get(0.5, LAYER, 0).clone())
            if tile.index < 4:
                cache.end_tile()
    diagonal = decay ** (2**0.5 - 1)
    expected = sum(w * s for w, s in zip([diagonal, 1, diagonal, 1], recorded, strict=False))
    assert torch.allclose(cache.earlier_stats.get(0.5, LAYER, 0), expected, rtol=1e-6, atol=1e-6)


def test_strength_schedule_runs_linearly_in_sigma_from_strength_to_strength_end():
    attn = linear_attn()
    plan = strip_plan(2)
    seen = tokens(16, seed=1)
    outs = {}
    for name, config, sigma in (
        ("scheduled", BCLAConfig(strength=2.0, strength_end=0.0), 0.25),
        ("constant", BCLAConfig(strength=0.5), 0.25),
        ("start", BCLAConfig(strength=2.0, strength_end=0.0), 1.0),
        ("two", BCLAConfig(strength=2.0), 1.0),
    ):
        cache = BCLACache(config, plan)
        proc = BCLALinearAttnProcessor2_0(cache, LAYER)
        with torch.no_grad():
            cache.begin_tile(plan.tiles[0])
            cache.set_call(sigma, [0])
            proc(attn, seen)
            cache.end_tile()
            cache.begin_tile(plan.tiles[1])
            cache.set_call(sigma, [0])
            outs[name] = proc(attn, tokens(16, seed=2))
    assert torch.equal(outs["scheduled"], outs["constant"])  # α(0.25) = 0 + (2 - 0)·0.25
    assert torch.equal(outs["start"], outs["two"])
    assert BCLAConfig(strength=0.0, strength_end=1.0).active and not BCLAConfig(strength=0.0).active
    with pytest.raises(BCLAError, match="strength_end"):
        BCLAConfig(strength_end=-1.0)


def test_zeroed_cache_gives_what_no_cache_gives():
    attn = linear_attn()
    plan = strip_plan(2)
    outs = []
    for zero in (False, True):
        cache = BCLACache(BCLAConfig(), plan)
        proc = BCLALinearAttnProcessor2_0(cache, LAYER)
        with torch.no_grad():
            cache.begin_tile(plan.tiles[0])
            cache.set_call(0.5, [0])
            proc(attn, tokens(16, seed=1))
            cache.end_tile()
            if zero:
                cache.zero_()
            cache.begin_tile(plan.tiles[1])
            cache.set_call(0.5, [0])
            outs.append(proc(attn, tokens(16, seed=2)))
    with torch.no_grad():
        alone = SanaLinearAttnProcessor2_0()(attn, tokens(16, seed=2))
    assert torch.equal(outs[1], alone)
    assert (outs[0] - alone).abs().max() > 1e-3


def test_neighbors_mode_sees_exactly_the_earlier_8_neighbours():
    plan = make_plan(
        width_px=12, height_px=12, tile_width_px=4, tile_height_px=4, overlap_px=0, compression=1, fit="shift"
    )  # 3 × 3 raster; tile 5 = (row 1, col 2)
    assert plan.tiles[5].neighbors == (1, 2, 4)
    attn, out = _mode_output(BCLAConfig(mode="neighbors"), plan, last=5)
    expected = _reference(attn, [tokens(16, seed=i) for i in (1, 2, 4)], tokens(16, seed=5))
    assert (out - expected).abs().max() <= 1e-5


def test_decay_weights_earlier_tiles_geometrically():
    attn = linear_attn()
    plan = strip_plan(3)
    cache = BCLACache(BCLAConfig(mode="decay", decay=0.5), plan)
    proc = BCLALinearAttnProcessor2_0(cache, LAYER)
    recorded = []
    with torch.no_grad():
        for tile in plan.tiles[:2]:
            cache.begin_tile(tile)
            cache.set_call(0.5, [0])
            proc(attn, tokens(16, seed=tile.index))
            recorded.append(cache.tile_stats.get(0.5, LAYER, 0).clone())
            cache.end_tile()
    stored = cache.earlier_stats.get(0.5, LAYER, 0)
    assert torch.allclose(stored, 0.5 * recorded[0] + recorded[1], rtol=1e-6, atol=0)
    assert not torch.allclose(stored, recorded[0] + recorded[1], rtol=1e-3, atol=0)


def test_nearest_sigma_fallback_for_multi_evaluation_samplers():
    attn = linear_attn()
    plan = strip_plan(2)
    outs = []
    for sigma in (0.4, 0.43):
        cache = BCLACache(BCLAConfig(), plan)
        proc = BCLALinearAttnProcessor2_0(cache, LAYER)
        with torch.no_grad():
            cache.begin_tile(plan.tiles[0])
            for s, seed in ((0.8, 10), (0.4, 11), (0.0, 12)):
                cache.set_call(s, [0])
                proc(attn, tokens(16, seed=seed))
            cache.end_tile()
            cache.begin_tile(plan.tiles[1])
            cache.set_call(sigma, [0])
            outs.append(proc(attn, tokens(16, seed=3)))
    assert torch.equal(outs[0], outs[1])
    assert (outs[0] - _reference(attn, [tokens(16, seed=11)], tokens(16, seed=3))).abs().max() <= 1e-5


def test_clean_source_records_only_in_clean_pass():
    attn = linear_attn()
    plan = strip_plan(2)
    cache = BCLACache(BCLAConfig(source="clean"), plan)
    proc = BCLALinearAttnProcessor2_0(cache, LAYER)
    assert cache.needs_clean_pass
    with torch.no_grad():
        cache.begin_tile(plan.tiles[0])
        cache.set_call(0.9, [0])
        proc(attn, tokens(16, seed=20))
        assert cache.nbytes() == 0, "outside the clean pass nothing is recorded"
        with cache.clean_pass():
            cache.set_call(0.01, [0])
            clean_out = proc(attn, tokens(16, seed=21))
        cache.end_tile()
        cache.begin_tile(plan.tiles[1])
        cache.set_call(0.9, [0])
        out = proc(attn, tokens(16, seed=3))
    assert torch.equal(clean_out, SanaLinearAttnProcessor2_0()(attn, tokens(16, seed=21)))
    assert (out - _reference(attn, [tokens(16, seed=21)], tokens(16, seed=3))).abs().max() <= 1e-5


def test_record_locked_false_records_only_the_generated_tokens():
    attn = linear_attn()
    plan = strip_plan(2)
    cache = BCLACache(BCLAConfig(record_locked=False), plan)
    proc = BCLALinearAttnProcessor2_0(cache, LAYER)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:, 1:] = True  # first column locked
    a = tokens(16, seed=30)
    with torch.no_grad():
        cache.begin_tile(plan.tiles[0], token_mask=mask)
        cache.set_call(0.5, [0])
        proc(attn, a)
        cache.end_tile()
        cache.begin_tile(plan.tiles[1])
        cache.set_call(0.5, [0])
        out = proc(attn, tokens(16, seed=3))
    expected = _reference(attn, [a[:, mask.flatten()]], tokens(16, seed=3))
    assert (out - expected).abs().max() <= 1e-5


def test_seed_statistics_act_as_extra_tokens_in_every_tile():
    attn = linear_attn()
    plan = strip_plan(2)
    cache = BCLACache(BCLAConfig(), plan)
    proc = BCLALinearAttnProcessor2_0(cache, LAYER)
    guide = tokens(32, seed=40)
    with torch.no_grad():
        with cache.record_seed() as handle:
            cache.set_call(0.5, [0])
            proc(attn, guide)
        assert isinstance(handle.stats, BCLAStats) and handle.stats
        cache.seed(handle.stats, 1.0)
        cache.begin_tile(plan.tiles[0])
        cache.set_call(0.5, [0])
        out = proc(attn, tokens(16, seed=0))
    assert (out - _reference(attn, [guide], tokens(16, seed=0))).abs().max() <= 1e-5


# --- 8. strength 0 / mode off are stock ----------------------------------------------------------
@pytest.mark.parametrize("config", [BCLAConfig(strength=0.0), BCLAConfig(mode="off")])
def test_strength_zero_or_mode_off_is_identical_to_stock(config):
    model = tiny_transformer()
    plan = make_plan(
        width_px=16, height_px=8, tile_width_px=8, tile_height_px=8, overlap_px=0, compression=1, fit="shift"
    )
    xs = [torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    stock = run_sana(model, xs[1])
    outs = {}
    for name, cfg in (("test", config), ("on", BCLAConfig())):
        cache = BCLACache(cfg, plan)
        undo = install_bcla(model, cache)
        for tile, x in zip(plan.tiles, xs, strict=True):
            cache.begin_tile(tile)
            cache.set_call(0.5, [0])
            outs[name] = run_sana(model, x)
            cache.end_tile()
        undo()
    assert torch.equal(outs["test"], stock)
    assert (outs["on"] - stock).abs().max() > 1e-3


# --- contract errors -----------------------------------------------------------------------------
def test_bad_settings_and_call_order_raise_clear_errors():
    with pytest.raises(BCLAError, match="mode"):
        BCLAConfig(mode="everything")
    with pytest.raises(BCLAError, match="decay"):
        BCLAConfig(mode="decay", decay=1.5)
    plan = strip_plan(2)
    cache = BCLACache(BCLAConfig(), plan)
    with pytest.raises(BCLAError, match="begin_tile"):
        cache.end_tile()
    with pytest.raises(BCLAError, match="token_mask"):
        cache.begin_tile(plan.tiles[0], token_mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(BCLAError, match="SANA"):
        bcla_processors(torch.nn.Linear(2, 2), cache)
    proc = BCLALinearAttnProcessor2_0(cache, LAYER)
    cache.begin_tile(plan.tiles[0])
    cache.set_call(0.5, [0, 1])
    with pytest.raises(BCLAError, match="equal CFG chunks"):
        proc(linear_attn(), tokens(16, batch=3))
