"""Where each word of a prompt acts, from SANA's cross-attention, and the words each tile keeps.

AccDiffusion's automatic tile prompts: in one model call on the whole scene (the guide), SANA's
cross-attention (a softmax over the text tokens for every image token) shows which image tokens each
word steers. A tile keeps the words whose map reaches it and drops the others, so a word that names an
object the guide put elsewhere does not make the tile paint that object again.

It lives in the lab, beside the engine: measured by bench/bench_tile_prompts.py, not yet offered by the
CLI or the nodes (on the embedded model its maps are too weakly localised to be a default).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from temporal_tiling.plan import TilePlan


class _Recorder:
    """A cross-attention processor that runs the original one and keeps its attention weights,
    averaged over heads: [B, image tokens, text tokens]."""

    def __init__(self, original, maps: list[Tensor]) -> None:
        self.original, self.maps = original, maps

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        query, key = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states)
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        batch, length = key.shape[0], key.shape[1]
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        scores = query @ key.transpose(-1, -2) * head_dim**-0.5
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask, length, batch)
            scores = scores + mask.view(batch, attn.heads, -1, length)
        self.maps.append(scores.float().softmax(-1).mean(1))
        return out


@contextmanager
def recording_cross_attention(transformer: torch.nn.Module) -> Iterator[list[Tensor]]:
    """Model calls inside append every block's cross-attention weights [B, N, L] to the yielded list
    (a diffusers SanaTransformer2DModel; its own processors come back on exit)."""
    maps: list[Tensor] = []
    blocks = [block.attn2 for block in transformer.transformer_blocks]
    originals = [attn.processor for attn in blocks]
    for attn, original in zip(blocks, originals, strict=True):
        attn.processor = _Recorder(original, maps)
    try:
        yield maps
    finally:
        for attn, original in zip(blocks, originals, strict=True):
            attn.processor = original


def word_maps(maps: Sequence[Tensor], grid: tuple[int, int], token_words: Sequence[int]) -> Tensor:
    """Each word's attention [W, h, w] on the token grid ``grid`` (rows, cols), from recorded weights
    (batch item 0, the cond branch, averaged over blocks); ``token_words[l]`` is the word of text token
    ``l`` (-1: no word, e.g. the start token); a word's map is the sum of its tokens'."""
    attention = torch.stack([m[0] for m in maps]).mean(0)  # [N, L]
    words = torch.as_tensor(token_words)
    count = int(words.max()) + 1
    owner = F.one_hot(words.clamp(min=0), count).float() * (words >= 0)[:, None]  # [L, W]
    return (attention[:, : len(words)] @ owner.to(attention)).T.reshape(count, *grid)


def tile_words(plan: TilePlan, maps: Tensor, threshold: float) -> dict[int, list[int]]:
    """The words (indices into ``maps`` [W, h, w], any grid with the canvas's aspect) each tile keeps:
    those whose map reaches ``threshold`` × its own maximum somewhere in the tile's cells."""
    canvas = F.interpolate(maps[None].float(), size=(plan.canvas_height, plan.canvas_width), mode="bilinear")[
        0
    ]
    peaks = canvas.flatten(1).amax(1).clamp(min=1e-12)
    where = canvas >= threshold * peaks[:, None, None]  # [W, H, W]
    return {
        tile.index: [
            int(w) for w in torch.nonzero(where[:, tile.slices[0], tile.slices[1]].flatten(1).any(1))
        ]
        for tile in plan.tiles
    }


def attention_of_words(
    transformer: torch.nn.Module,
    guide: Tensor,
    prompt_embeds: Tensor,
    token_words: Sequence[int],
    sigma: float = 0.5,
    seed: int = 0,
) -> Tensor:
    """Each word's cross-attention map [W, h, w] over ``guide`` [1, C, h·p, w·p] (p: the model's patch
    size), from one call of the model on the guide noised to ``sigma`` with ``seed``'s noise."""
    from temporal_tiling.flow import CFGDenoiser, noise_scaling
    from temporal_tiling.position import patch_size

    noise = torch.randn(guide.shape, generator=torch.Generator().manual_seed(seed)).to(guide)
    sigmas = torch.full((guide.shape[0],), sigma)
    denoiser = CFGDenoiser(transformer, prompt_embeds, None, 1.0)
    with recording_cross_attention(transformer) as maps:
        denoiser(noise_scaling(sigmas, noise, guide), sigmas)
    p = patch_size(transformer)
    return word_maps(maps, (guide.shape[-2] // p, guide.shape[-1] // p), token_words)
