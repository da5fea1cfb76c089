"""The Tile Prompts node in-process: its tile conditioning reaches the right tile of the Causal SANA
Sampler's run, and mismatched plans and methods are refused."""

# ruff: noqa: F811 (test_nodes' fixtures are imported, then named as test arguments)

from __future__ import annotations

import logging
import re

import pytest
import torch
from sana_comfy import pack_module
from test_nodes import _sample, conds, nodes, parts, plan  # noqa: F401

SCENE = "a blue to pink sky"


@pytest.fixture(scope="module")
def tile_prompts(nodes):
    return pack_module("nodes.tile_prompts").SanaTilePrompts


def test_tile_prompts_node_encodes_each_tiles_text(tile_prompts, parts, plan):
    _, clip, _ = parts
    positive, tiles = tile_prompts.execute(clip, plan, SCENE, "\na sun\n6, 0, 1, 1: a bird", "append").result
    assert tiles.texts == {1: f"{SCENE}, a sun", 0: f"{SCENE}, a bird"}
    assert set(tiles.by_tile) == {0, 1} and tiles.plan == plan
    scene = clip.encode_from_tokens_scheduled(clip.tokenize(f"{SCENE}, a sun, a bird"))
    assert torch.equal(tiles.scene[0][0], scene[0][0])
    expected = clip.encode_from_tokens_scheduled(clip.tokenize(SCENE))
    assert torch.equal(positive[0][0], expected[0][0])


def test_sampler_runs_each_tile_with_its_own_conditioning(tile_prompts, nodes, parts, conds, plan):
    """Independent tiles, tile prompts at every step (tile_prompt_sigma 0): the tile with words of its own
    equals the run with that prompt everywhere; the others equal the run without tile prompts."""
    model, clip, _ = parts
    positive, tiles = tile_prompts.execute(clip, plan, SCENE, "\na sun", "append", False, 0.5, 0.0).result
    plain = _sample(nodes, model, conds, plan, mode="independent")[1]
    sun = clip.encode_from_tokens_scheduled(clip.tokenize(f"{SCENE}, a sun"))
    everywhere = _sample(nodes, model, (sun, conds[1]), plan, mode="independent")[1]
    mixed = _sample(nodes, model, (positive, conds[1]), plan, mode="independent", tile_conditioning=tiles)[1]
    assert torch.equal(mixed[0], plain[0]) and torch.equal(mixed[2:], plain[2:])
    assert torch.equal(mixed[1], everywhere[1]) and not torch.equal(mixed[1], plain[1])
    causal = _sample(nodes, model, (positive, conds[1]), plan, tile_conditioning=tiles)[1]
    assert torch.equal(causal[0], _sample(nodes, model, conds, plan)[1][0])


def test_tile_prompt_sigma_runs_the_tile_as_stock_timestep_ranges_do(tile_prompts, nodes, parts, conds, plan):
    """tile_prompt_sigma s: the told tile equals a run whose positive is ComfyUI's own
    ConditioningSetTimestepRange of its words over [0, p] combined with the scene's over [p, 1], where
    p is the percent of σ = s; the other tiles equal the run without tile prompts."""
    import nodes as comfy_nodes

    model, clip, _ = parts
    sigma = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    positive, tiles = tile_prompts.execute(clip, plan, SCENE, "\na sun", "append", False, 0.5, sigma).result
    assert tiles.prompt_sigma == sigma
    sun = clip.encode_from_tokens_scheduled(clip.tokenize(f"{SCENE}, a sun"))
    ranged = comfy_nodes.ConditioningSetTimestepRange()
    (stock,) = comfy_nodes.ConditioningCombine().combine(
        ranged.set_range(sun, 0.0, 0.5)[0], ranged.set_range(positive, 0.5, 1.0)[0]
    )
    plain = _sample(nodes, model, conds, plan, mode="independent")[1]
    reference = _sample(nodes, model, (stock, conds[1]), plan, mode="independent")[1]
    everywhere = _sample(nodes, model, (sun, conds[1]), plan, mode="independent")[1]
    gated = _sample(nodes, model, (positive, conds[1]), plan, mode="independent", tile_conditioning=tiles)[1]
    assert torch.equal(gated[0], plain[0]) and torch.equal(gated[2:], plain[2:])
    assert torch.equal(gated[1], reference[1])
    assert not torch.equal(gated[1], everywhere[1]) and not torch.equal(gated[1], plain[1])


def test_sampler_refuses_tile_conditioning_of_another_plan_or_a_canvas_method(
    tile_prompts,
    nodes,
    parts,
    conds,
    plan,
):
    model, clip, _ = parts
    SamplingError = pack_module("temporal_tiling.sampling").SamplingError
    other = pack_module("temporal_tiling.plan").make_plan(
        width_px=plan.width_px,
        height_px=plan.height_px,
        tile_width_px=plan.width_px,
        tile_height_px=plan.height_px,
        overlap_px=0,
        compression=plan.compression,
    )
    tiles = tile_prompts.execute(clip, other, SCENE, "a sun", "append").result[1]
    with pytest.raises(SamplingError, match="another tile plan"):
        _sample(nodes, model, conds, plan, tile_conditioning=tiles)
    tiles = tile_prompts.execute(clip, plan, SCENE, "a sun", "append").result[1]
    with pytest.raises(SamplingError, match="tile by tile"):
        _sample(nodes, model, conds, plan, mode="multidiffusion", tile_conditioning=tiles)


def test_automatic_tile_prompts_run_from_the_whole_scene(tile_prompts, nodes, parts, conds, plan, caplog):
    """automatic: the sampler reads the prompt's cross-attention on the whole scene (guided: its guide;
    causal: a whole-scene pass of its own) and the tiles whose words it drops hear fewer words."""
    model, clip, _ = parts
    prompt = "a blue to pink sky with one sun at top left"
    positive, tiles = tile_prompts.execute(clip, plan, prompt, "", "append", True, 1.0).result
    assert tiles.by_tile == {} and tiles.automatic.threshold == 1.0
    assert torch.equal(positive[0][0], clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][0])
    for mode in ("guided", "causal"):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            canvas, _ = _sample(nodes, model, (positive, conds[1]), plan, mode=mode, tile_conditioning=tiles)
        assert torch.isfinite(canvas).all()
        heard = [r.getMessage().split("hears ")[1].strip("'") for r in caplog.records if "hears" in r.msg]
        assert heard and all(set(text.split()) < set(prompt.split()) for text in heard), mode


def test_automatic_tile_prompts_gate_runs_as_manual_prompts_over_the_scene_words(
    tile_prompts, nodes, parts, conds, plan, caplog
):
    """automatic with word_sigma s (independent tiles): the run equals manual tile prompts
    (replace) giving each tile its automatic text (a tile the log leaves out: the whole prompt) over the
    words every tile keeps as positive, gated at s: above s the object's tile hears its words, below it
    every tile the scene's words. At s = 0 (every step) it differs."""
    model, clip, _ = parts
    prompt = "a blue to pink sky with one sun at top left"
    sigma = model.get_model_object("model_sampling").percent_to_sigma(0.5)
    positive, tiles = tile_prompts.execute(
        clip, plan, prompt, "", "append", True, 1.0, word_sigma=sigma
    ).result
    assert tiles.automatic.sigma == sigma
    with caplog.at_level(logging.INFO):
        gated = _sample(
            nodes, model, (positive, conds[1]), plan, mode="independent", tile_conditioning=tiles
        )[1]
    told = [re.search(r"tile (\d+) hears '(.*)'$", r.getMessage()) for r in caplog.records]
    texts = {int(m[1]): m[2] for m in told if m}
    kept = [set(text.split()) for text in texts.values()]
    scene = " ".join(word for word in prompt.split() if all(word in words for words in kept))
    lines = "\n".join(f"{n}: {texts.get(n, prompt)}" for n in range(1, len(plan) + 1))
    scene_positive, manual = tile_prompts.execute(
        clip, plan, scene, lines, "replace", False, 0.5, sigma
    ).result
    reference = _sample(
        nodes, model, (scene_positive, conds[1]), plan, mode="independent", tile_conditioning=manual
    )
    assert torch.equal(gated, reference[1])
    every_step = tile_prompts.execute(clip, plan, prompt, "", "append", True, 1.0, word_sigma=0.0).result[1]
    ungated = _sample(
        nodes, model, (positive, conds[1]), plan, mode="independent", tile_conditioning=every_step
    )
    assert not torch.equal(gated, ungated[1])


def test_automatic_tile_prompts_refuse_lines_and_other_text_encoders(tile_prompts, parts, plan):
    _, clip, _ = parts
    TilePromptError = pack_module("temporal_tiling.tile_prompts").TilePromptError
    with pytest.raises(TilePromptError, match="clear tile_prompts or turn automatic off"):
        tile_prompts.execute(clip, plan, SCENE, "a sun", "append", True, 0.5)
    other = clip.clone()
    other.tokenizer = object()
    with pytest.raises(TilePromptError, match="this pack's SANA text encoder"):
        tile_prompts.execute(other, plan, SCENE, "", "append", True, 0.5)
