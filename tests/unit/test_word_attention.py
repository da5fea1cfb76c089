"""Automatic tile prompts: SANA's cross-attention recorded per block, words mapped to the image, and a
word whose attention lies outside a tile dropped from it."""

from __future__ import annotations

import torch

from lab.word_attention import (
    attention_of_words,
    recording_cross_attention,
    tile_words,
    word_maps,
)
from temporal_tiling.plan import make_plan


def test_a_word_whose_attention_lies_outside_a_tile_is_dropped_from_it() -> None:
    plan = make_plan(
        width_px=512, height_px=256, tile_width_px=128, tile_height_px=128, overlap_px=0, compression=8
    )  # 4 × 2 tiles of 16 × 16 cells
    maps = torch.zeros(3, 8, 16)  # a grid at a quarter of the canvas's 32 × 64 cells
    maps[0] = 1.0  # "sky": everywhere
    maps[1, 1:3, 1:3] = 1.0  # "sun": inside tile 0 only
    maps[2, 0:3, 12:16] = 0.6 + 0.4 * torch.rand(3, 4)  # "moon": top right, tile 3 only
    kept = tile_words(plan, maps, threshold=0.5)
    assert kept[0] == [0, 1]
    assert kept[1] == [0]
    assert kept[3] == [0, 2]
    assert all(kept[i] == [0] for i in (1, 2, 4, 5, 6, 7))


def test_word_maps_sum_each_words_tokens_and_skip_tokens_without_a_word() -> None:
    attention = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8]])  # 2 image tokens × 3 text tokens
    maps = word_maps([attention[None], attention[None]], (1, 2), [-1, 0, 0])
    assert torch.allclose(maps, torch.tensor([[[0.5, 0.9]]]))


def test_recorder_keeps_softmax_weights_of_every_block_and_restores_the_processors(model, prompts) -> None:
    processors = [block.attn2.processor for block in model.transformer_blocks]
    x, cond = torch.randn(2, model.config.in_channels, 4, 6), prompts[0]
    with torch.no_grad():
        plain = model(x, encoder_hidden_states=cond.repeat(2, 1, 1), timestep=torch.tensor([500.0] * 2))[0]
        with recording_cross_attention(model) as maps:
            recorded = model(
                x, encoder_hidden_states=cond.repeat(2, 1, 1), timestep=torch.tensor([500.0] * 2)
            )[0]
    assert torch.equal(plain, recorded)  # the output is the original processor's
    assert len(maps) == len(model.transformer_blocks)
    assert maps[0].shape == (2, 4 * 6 // model.config.patch_size**2, cond.shape[1])
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, maps[0].shape[1]))
    assert [block.attn2.processor for block in model.transformer_blocks] == processors
    guide = torch.randn(1, model.config.in_channels, 4, 6)
    words = attention_of_words(model, guide, cond, [-1, 0, 0, 1, 1, 1])
    assert words.shape == (2, 4 // model.config.patch_size, 6 // model.config.patch_size)
