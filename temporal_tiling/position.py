"""Canvas positions for tiles: position encodings seen from the whole canvas, not from (0, 0).

SANA 2K/4K add a 2D sin-cos embedding whose grid is normalised to the model's ``base_size``; SANA-Video
rotates q/k with RoPE. Run on a tile, the stock modules would give every tile the positions of a small
image starting at (0, 0), so tiles disagree about where they are and the cached statistics of BCLA mix
positions. While a tile is active, the replacement forwards below use the tile's place on the canvas
(for RoPE this makes cache + own tokens exactly full attention over the canvas for one layer).
They call the stock forward whenever ``source.position_tile`` is None (no tile active, BCLA off).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from diffusers.models.embeddings import PatchEmbed, get_2d_sincos_pos_embed_from_grid
from diffusers.models.transformers.transformer_sana_video import WanRotaryPosEmbed
from torch import Tensor

from .errors import UserInputError

if TYPE_CHECKING:
    from .contracts import PositionSource
    from .plan import Tile, TilePlan


class PositionError(UserInputError):
    """The canvas does not fit the model's position encoding; the message says what to change."""


def has_sincos_pos_embed(transformer: torch.nn.Module) -> bool:
    """True for SANA configs with an absolute sin-cos PE (``interpolation_scale`` set)."""
    embed = getattr(transformer, "patch_embed", None)
    return (
        isinstance(embed, PatchEmbed)
        and getattr(embed, "pos_embed", None) is not None
        and not embed.pos_embed_max_size
    )


def canvas_sincos_pos_embed(
    embed: PatchEmbed, plan: TilePlan, tile: Tile, device: torch.device | None = None
) -> Tensor:
    """The canvas sin-cos PE cropped to ``tile``, shape [1, tokens, dim] float32.

    Same numbers as ``get_2d_sincos_pos_embed`` for the whole canvas patch grid (same ``base_size``
    and ``interpolation_scale`` as ``embed``) followed by the crop, without building the canvas table:
    each position is computed by the same float ops, so the result is bit-identical to the crop.
    """
    p = embed.patch_size
    canvas_h, canvas_w = plan.canvas_height / p, plan.canvas_width / p
    rows = torch.arange(tile.y, tile.y + tile.height, p, device=device, dtype=torch.float32) / p
    cols = torch.arange(tile.x, tile.x + tile.width, p, device=device, dtype=torch.float32) / p
    grid_h = rows / (canvas_h / embed.base_size) / embed.interpolation_scale
    grid_w = cols / (canvas_w / embed.base_size) / embed.interpolation_scale
    grid = torch.stack(torch.meshgrid(grid_w, grid_h, indexing="xy"), dim=0).reshape(2, 1, -1)
    pos = get_2d_sincos_pos_embed_from_grid(embed.pos_embed.shape[-1], grid, output_type="pt")
    return pos.float().unsqueeze(0)


class CanvasPatchEmbedForward:
    """Replacement for ``patch_embed.forward`` that adds the canvas PE crop of the active tile.

    A plain callable (not a module) so it can be set as an instance attribute by ``install_bcla`` or
    as a ComfyUI object patch (``diffusion_model.patch_embed.forward``) on a model clone.
    ``source`` says which tile is active (a ``BCLACache``).
    """

    def __init__(self, embed: PatchEmbed, source: PositionSource) -> None:
        self.embed = embed
        self.source = source
        self._memo: tuple[tuple[int, Tile, torch.device], Tensor] | None = None

    def _pos_embed(self, tile: Tile, device: torch.device) -> Tensor:
        memo_key = (id(self.source.plan), tile, device)
        if self._memo is None or self._memo[0] != memo_key:
            self._memo = (memo_key, canvas_sincos_pos_embed(self.embed, self.source.plan, tile, device))
        return self._memo[1]

    def __call__(self, latent: Tensor) -> Tensor:
        embed, tile = self.embed, self.source.position_tile
        if tile is None or tuple(latent.shape[-2:]) != (tile.height, tile.width):
            return PatchEmbed.forward(embed, latent)
        # Mirrors PatchEmbed.forward (non-cropping branch) with the canvas PE.
        latent = embed.proj(latent)
        if embed.flatten:
            latent = latent.flatten(2).transpose(1, 2)
        if embed.layer_norm:
            latent = embed.norm(latent)
        return (latent + self._pos_embed(tile, latent.device)).to(latent.dtype)


class CanvasRopeForward:
    """Replacement for SANA-Video's ``rope.forward``: the rotary tables of the tile's canvas rows/cols.

    Mirrors ``WanRotaryPosEmbed.forward`` with the height/width tables read from the tile's offset
    (in patches, rounded down when a tile edge falls inside a patch).
    """

    def __init__(self, rope: WanRotaryPosEmbed, source: PositionSource) -> None:
        self.rope = rope
        self.source = source

    def __call__(self, hidden_states: Tensor) -> tuple[Tensor, Tensor]:
        rope, tile = self.rope, self.source.position_tile
        _, _, num_frames, height, width = hidden_states.shape
        if tile is None or (height, width) != (tile.height, tile.width):
            return WanRotaryPosEmbed.forward(rope, hidden_states)
        p_t, p_h, p_w = rope.patch_size
        ppf, pph, ppw = num_frames // p_t, height // p_h, width // p_w
        y0, x0 = tile.y // p_h, tile.x // p_w
        if max(y0 + pph, x0 + ppw, ppf) > rope.max_seq_len:
            raise PositionError(
                f"The canvas needs {max(y0 + pph, x0 + ppw)} RoPE positions but the model has "
                f"{rope.max_seq_len} (rope_max_seq_len); use a smaller canvas."
            )
        split_sizes = [rope.t_dim, rope.h_dim, rope.w_dim]

        def table(freqs: Tensor) -> Tensor:
            f, h, w = freqs.split(split_sizes, dim=1)
            f = f[:ppf].view(ppf, 1, 1, -1).expand(ppf, pph, ppw, -1)
            h = h[y0 : y0 + pph].view(1, pph, 1, -1).expand(ppf, pph, ppw, -1)
            w = w[x0 : x0 + ppw].view(1, 1, ppw, -1).expand(ppf, pph, ppw, -1)
            return torch.cat([f, h, w], dim=-1).reshape(1, ppf * pph * ppw, 1, -1)

        return table(rope.freqs_cos), table(rope.freqs_sin)


def has_canvas_positions(transformer: torch.nn.Module) -> bool:
    """Whether ``transformer``'s position encoding must follow each tile's place on the canvas: SANA
    2K/4K's sin-cos PE or SANA-Video's RoPE (SANA 512/1024 have none)."""
    return has_sincos_pos_embed(transformer) or _has_rope(transformer)


def patch_size(transformer: torch.nn.Module) -> int:
    """Latent cells per token side: a diffusers config's ``patch_size`` (SANA-Video's spatial part), else
    a ``patch_size`` attribute (ExtraModels' SANA), else 1. Every latent the model runs on must be a
    whole number of tokens on each side; the run rounds the sizes it picks itself to it."""
    config = getattr(transformer, "config", None)
    size = getattr(config, "patch_size", None) or getattr(transformer, "patch_size", None) or 1
    return int(size[-1] if isinstance(size, tuple | list) else size)


def _has_rope(transformer: torch.nn.Module) -> bool:
    return isinstance(getattr(transformer, "rope", None), WanRotaryPosEmbed)


def position_patches(transformer: torch.nn.Module, source: PositionSource) -> dict[str, object]:
    """Attribute path -> replacement for the position encodings that must follow the canvas."""
    patches: dict[str, object] = {}
    if has_sincos_pos_embed(transformer):
        patches["patch_embed.forward"] = CanvasPatchEmbedForward(transformer.patch_embed, source)
    if _has_rope(transformer):
        patches["rope.forward"] = CanvasRopeForward(transformer.rope, source)
    return patches
