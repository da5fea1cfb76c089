"""Automatic tile prompts: where each word of the prompt acts, from SANA's cross-attention on the whole
scene, and the words each tile keeps.

AccDiffusion's idea: in one model call on the whole scene (the guide noised to :data:`WORD_MAP_SIGMA`),
SANA's cross-attention (a softmax over the text tokens for every image token) shows which image tokens
each word steers, so a word that names an object the guide put elsewhere ("one sun") can be dropped
from the tiles that would paint that object again.

Which tile keeps a word (:func:`tile_words`):

* A word's region is where its map rises ``threshold`` of the way from the map's lowest value to its
  peak. Not a share of the peak alone: every image token gives every word some attention (a word's map
  never falls far below its mean), so a share of the peak is reached by noise all over the scene.
* Each canvas cell is painted anew by one tile, the first in the plan's order that covers it; later
  tiles hold it from the earlier one.
* A word is placed when its region is no larger than what the tile that paints its peak paints (it
  could lie inside that one tile: an object, and the words that describe it). A placed word goes to that
  tile only: a tile that merely borders the object, or holds a noise peak of its map, would paint an
  object of its own. Every other word (the scene's "sky", its colours) stays in every tile, as a
  manual tile prompt's scene prompt does.
* A quiet word, one no image token attends much more than it attends an average word (its map's peak
  under ``quiet`` times the average word's attention, :func:`quiet_words`), names nothing the scene
  shows: an object the guide did not draw ("one tree" over an empty sky), or a word that steers nothing.
  No tile keeps it, at any noise level. Kept, it would be too spread out to be placed: every tile would
  keep it as a word of the scene and paint a small object of its own. Its level tells it apart, not its
  map's shape: a word of the scene ("sky") can be as evenly spread as a missing object, but every image
  token attends it strongly.

Words, not tokens: a tokenizer cuts "sunset," into pieces, and a tile's prompt is rebuilt from the
prompt's own text, so a word is kept or dropped whole. A word is a run of non-space characters; its map
is the sum of the maps of the tokens that start inside it. A tile's prompt is its kept words joined by
single spaces, in the prompt's order; a tile that keeps every word hears the run's prompt unchanged.

When each is heard (:attr:`AutoTilePrompts.sigma`, a σ gate as manual tile prompts have): the tile
that paints an object hears its words at noise levels σ ≥ the gate, where the layout is placed, and
every tile hears the scene's words (those every tile keeps, :func:`scene_words`) below it. Heard at
every step, the object's tile paints small copies of the object around it (its window is larger than
the object); the run's prompt below the gate would give every tile back the words it dropped.

The maps are recorded on diffusers' ``SanaTransformer2DModel`` (its blocks' ``attn2`` cross-attention
modules): :class:`AttentionRecorder` runs the module's own processor for the output and recomputes the
softmax weights from ``to_q`` / ``to_k``, so any processor a model carries gives the same maps. On
ComfyUI_ExtraModels' SANA (its blocks' ``cross_attn``, recognised by interface: the pack does not import
ExtraModels) :class:`PackedCrossAttentionRecorder` does the same around the module's ``forward``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import UserInputError
from .flow import CFGDenoiser, noise_scaling
from .options import DEFAULT_WORD_QUIET, DEFAULT_WORD_SIGMA, DEFAULT_WORD_THRESHOLD
from .plan import TilePlan
from .position import patch_size
from .sampling import canvas_noise

WORD_MAP_SIGMA = 0.5
"""Noise level of the one model call that records the maps: the layout is set, the words still steer."""

Span = tuple[int, int] | None
"""Characters ``[start, end)`` of the prompt's text a text token reads; None: no character of the prompt
(start token, instruction template, padding)."""


class WordMapError(UserInputError):
    """Automatic tile prompts cannot work with these settings or this model; the message says why."""

    flag = "--tile-prompts"
    """The command-line flag these errors are about (the CLI names it before the message)."""


@dataclass(frozen=True)
class PromptTokens:
    """A prompt as its text encoder reads it, and which characters each conditioning token reads."""

    text: str
    spans: tuple[Span, ...]
    """One per token of the prompt's conditioning, in order."""


@dataclass(frozen=True)
class AutoTilePrompts:
    """Settings of automatic tile prompts: the run's prompt, how a tile's text is encoded, the threshold."""

    tokens: PromptTokens
    """The run's prompt and its tokens' spans (what the recorded maps are indexed by)."""
    encode: Callable[[str], object]
    """A tile's text -> its positive conditioning in the host's form (as ``RunSettings.tile_prompts``)."""
    threshold: float = DEFAULT_WORD_THRESHOLD
    """A word's region: where its map rises this share of the way from its lowest value to its peak
    (:func:`tile_words`)."""
    report: Callable[[dict[int, str]], None] | None = None
    """Told each tile's text (by ``Tile.index``, tiles with the whole prompt absent) once computed."""
    prompt: object | None = None
    """The conditioning of ``tokens``' prompt in the host's form, for the model call; None: the run's
    prompt (which must then be that prompt)."""
    sigma: float = DEFAULT_WORD_SIGMA
    """The tile that paints an object hears its words at noise levels σ ≥ this, every tile the words all
    tiles keep below it (the run's ``tile_prompt_sigma`` for these prompts); 0: at every step."""
    quiet: float = DEFAULT_WORD_QUIET
    """A word whose map peaks under this multiple of the average word's attention is kept by no tile
    (:func:`quiet_words`); 0: every word counts."""

    def __post_init__(self) -> None:
        check_threshold(self.threshold)
        check_word_sigma(self.sigma)
        if self.quiet < 0:
            raise WordMapError(
                f"the automatic tile prompts' quiet ratio must be 0 or more (a multiple of the average "
                f"word's attention; {DEFAULT_WORD_QUIET} by default, 0: off), got {self.quiet}."
            )


def check_threshold(threshold: float) -> None:
    """A WordMapError unless ``threshold`` is in (0, 1]."""
    if not 0.0 < threshold <= 1.0:
        raise WordMapError(
            f"the automatic tile prompts' threshold must be in (0, 1] (a share of the way from each word's "
            f"lowest attention to its peak; {DEFAULT_WORD_THRESHOLD} by default), got {threshold}."
        )


def check_word_sigma(sigma: float) -> None:
    """A WordMapError unless ``sigma`` is a noise level in [0, 1]."""
    if not 0.0 <= sigma <= 1.0:
        raise WordMapError(
            f"the automatic tile prompts' sigma must be a noise level in [0, 1] (the object's tile hears its "
            f"words at σ ≥ it; 0: at every step; {DEFAULT_WORD_SIGMA} by default), got {sigma}."
        )


def prompt_words(tokens: PromptTokens) -> tuple[list[str], list[int]]:
    """The prompt's words, and the word of each token: the one its first non-space character lies in
    (-1: a token that reads no character of a word)."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", tokens.text)]
    starts = [start for start, _ in words]
    owners = []
    for span in tokens.spans:
        read = "" if span is None else tokens.text[span[0] : span[1]]
        first = -1 if not read.strip() else span[0] + len(read) - len(read.lstrip())
        owners.append(-1 if first < 0 else bisect.bisect_right(starts, first) - 1)
    return [tokens.text[a:b] for a, b in words], owners


def head_mean_softmax(query: Tensor, key: Tensor, heads: int, bias: Tensor | None = None) -> Tensor:
    """Softmax attention weights [image tokens, text tokens], averaged over ``heads``, of one batch item's
    projected ``query`` [1, N, h·d] and ``key`` [1, L, h·d] (``bias`` [1, h, N, L] added to the scores)."""
    head_dim = key.shape[-1] // heads
    query = query.view(1, -1, heads, head_dim).transpose(1, 2)
    key = key.view(1, -1, heads, head_dim).transpose(1, 2)
    scores = (query @ key.transpose(-1, -2)).float() * head_dim**-0.5
    if bias is not None:
        scores = scores + bias.float()
    return scores.softmax(-1).mean(1)[0]


class AttentionRecorder:
    """A cross-attention processor that runs ``original`` and adds its softmax weights for batch item 0,
    averaged over heads, [image tokens, text tokens], to ``into`` (a running sum over blocks)."""

    def __init__(self, original: Callable, into: RecordedAttention) -> None:
        self.original, self.into = original, into

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)
        query, key = attn.to_q(hidden_states[:1]), attn.to_k(encoder_hidden_states[:1])
        if getattr(attn, "norm_q", None) is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        bias = None
        if attention_mask is not None:
            batch, length = hidden_states.shape[0], key.shape[1]
            mask = attn.prepare_attention_mask(attention_mask, length, batch)
            bias = mask.view(batch, attn.heads, -1, length)[:1]
        self.into.add(head_mean_softmax(query, key, attn.heads, bias))
        return out


class PackedCrossAttentionRecorder:
    """ComfyUI_ExtraModels' SANA cross-attention (``MultiHeadCrossAttention``: ``q_linear``, ``kv_linear``,
    ``num_heads``), set as the instance attribute ``forward`` of one such module: runs ``original`` for
    the output and adds batch item 0's softmax weights, averaged over heads, to ``into``.

    That module packs the batch into one sequence: ``x`` [B, N, C] image tokens, ``cond`` [1, ΣL, C] every
    item's text tokens one after another, ``mask`` each item's text length L (a list). Its flash variant
    builds ``q_norm`` / ``k_norm`` (SANA 1.5's cross_norm) but its forward does not run them; the vanilla
    variant does: the norms are applied where the module's own forward reads them.
    """

    def __init__(self, module: torch.nn.Module, original: Callable, into: RecordedAttention) -> None:
        self.module, self.original, self.into = module, original, into
        self.norms = "q_norm" in type(module).forward.__code__.co_names

    def __call__(self, x: Tensor, cond: Tensor, mask=None) -> Tensor:
        out = self.original(x, cond, mask)
        module, channels = self.module, x.shape[-1]
        length = int(mask[0]) if mask is not None else cond.shape[1] // x.shape[0]
        query = module.q_linear(x[:1])
        key = module.kv_linear(cond[:, :length])[..., :channels]  # kv_linear's output is [k, v] along C
        if self.norms:
            query, key = module.q_norm(query), module.k_norm(key)
        self.into.add(head_mean_softmax(query, key, module.num_heads))
        return out


class RecordedAttention:
    """The sum and count of the cross-attention weights :class:`AttentionRecorder` s add."""

    def __init__(self) -> None:
        self.total: Tensor | None = None
        self.count = 0

    def add(self, weights: Tensor) -> None:
        self.total = weights if self.total is None else self.total + weights
        self.count += 1

    def mean(self) -> Tensor:
        """[image tokens, text tokens], averaged over the recorded blocks."""
        if self.total is None:
            raise WordMapError(
                "the model call recorded no cross-attention: this model's blocks do not run their "
                "cross-attention modules; use manual tile prompts instead."
            )
        return self.total / self.count


def cross_attention_modules(transformer: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every block's cross-attention module by its path (``transformer_blocks.{i}.attn2``) in diffusers'
    SanaTransformer2DModel, or a WordMapError for a model without them."""
    blocks = getattr(transformer, "transformer_blocks", None)
    modules = {
        f"transformer_blocks.{i}.attn2": getattr(block, "attn2", None) for i, block in enumerate(blocks or [])
    }
    if not modules or not all(
        all(hasattr(m, name) for name in ("to_q", "to_k", "heads", "processor")) for m in modules.values()
    ):
        raise WordMapError(
            f"automatic tile prompts read SANA's cross-attention (diffusers' SanaTransformer2DModel, blocks' "
            f"attn2, or ExtraModels' SANA, blocks' cross_attn); this model ({type(transformer).__name__}) "
            "has none: use manual tile prompts."
        )
    return modules


def is_packed_cross_attention(module: torch.nn.Module) -> bool:
    """ExtraModels' SANA cross-attention, recognised by interface (:class:`PackedCrossAttentionRecorder`)."""
    return all(hasattr(module, name) for name in ("q_linear", "kv_linear", "num_heads", "forward"))


def needs_prompt_twice(model: torch.nn.Module) -> bool:
    """Whether a recording call on ``model`` must hold the prompt twice in its batch: ExtraModels' SANA
    takes every batch item's text length from the second item (city96's original fails on a batch of
    one). Not with its vanilla cross-attention (SANA-Sprint, Efficient-Large-Model fork only): that one
    fails on a batch of two, and that fork reads a batch of one."""
    blocks = getattr(model, "blocks", None)
    return bool(blocks) and all(
        type(getattr(block, "cross_attn", None)).__name__ == "MultiHeadCrossAttention" for block in blocks
    )


def cross_attention_patches(
    model: torch.nn.Module, record: RecordedAttention, current: Callable[[str], object]
) -> dict[str, object]:
    """Attribute path -> recorder for every block's cross-attention of ``model``: diffusers' SANA
    (``transformer_blocks.{i}.attn2.processor``) or ExtraModels' (``blocks.{i}.cross_attn.forward``), for
    object patches on a model clone. ``current(path)`` is what the model runs at ``path`` now (the
    recorder calls it for the output); a WordMapError for a model with neither."""
    blocks = getattr(model, "blocks", None)
    modules = {
        f"blocks.{i}.cross_attn": getattr(block, "cross_attn", None) for i, block in enumerate(blocks or [])
    }
    if modules and all(m is not None and is_packed_cross_attention(m) for m in modules.values()):
        return {
            f"{path}.forward": PackedCrossAttentionRecorder(module, current(f"{path}.forward"), record)
            for path, module in modules.items()
        }
    return {
        f"{path}.processor": AttentionRecorder(current(f"{path}.processor"), record)
        for path in cross_attention_modules(model)
    }


@contextmanager
def recording_cross_attention(transformer: torch.nn.Module) -> Iterator[RecordedAttention]:
    """Model calls inside add every block's cross-attention weights to the yielded record (a diffusers
    SanaTransformer2DModel; its own processors come back on exit)."""
    record = RecordedAttention()
    modules = list(cross_attention_modules(transformer).values())
    originals = [module.processor for module in modules]
    for module, original in zip(modules, originals, strict=True):
        module.processor = AttentionRecorder(original, record)
    try:
        yield record
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.processor = original


def cross_attention(
    transformer: torch.nn.Module,
    latent: Tensor,
    noise: Tensor,
    sigma: float,
    prompt_embeds: Tensor,
    prompt_mask: Tensor | None = None,
) -> Tensor:
    """The cross-attention weights [image tokens, text tokens] of ``prompt_embeds`` (averaged over heads
    and blocks, batch item 0) in one call of a diffusers SanaTransformer2DModel on ``latent`` noised to
    ``sigma`` with ``noise`` (the cond branch only)."""
    denoiser = CFGDenoiser(transformer, prompt_embeds, None, 1.0, prompt_mask=prompt_mask)
    sigmas = torch.full((latent.shape[0],), sigma, dtype=torch.float32, device=latent.device)
    with recording_cross_attention(transformer) as record:
        denoiser(noise_scaling(sigmas, noise, latent), sigmas)
    return record.mean()


def attention_of_words(
    transformer: torch.nn.Module,
    guide: Tensor,
    prompt_embeds: Tensor,
    token_words: Sequence[int],
    sigma: float = WORD_MAP_SIGMA,
    seed: int = 0,
) -> Tensor:
    """Each word's cross-attention map [W, h, w] over ``guide`` [1, C, h·p, w·p] (p: the model's patch
    size), from one call of the model on the guide noised to ``sigma`` with ``seed``'s noise;
    ``token_words`` as :func:`word_maps`' (W = its largest word + 1)."""
    noise = canvas_noise(seed, tuple(guide.shape)).to(guide)
    attention = cross_attention(transformer, guide, noise, sigma, prompt_embeds)
    p = patch_size(transformer)
    grid = (guide.shape[-2] // p, guide.shape[-1] // p)
    return word_maps(attention, grid, token_words, max(token_words) + 1)


def word_maps(attention: Tensor, grid: tuple[int, int], token_words: Sequence[int], count: int) -> Tensor:
    """Each of ``count`` words' attention [W, h, w] on the token grid ``grid`` (rows, cols), from the
    weights ``attention`` [h·w, L]; ``token_words[l]`` is the word of text token ``l`` (-1: none; tokens
    past the list read none), a word's map the sum of its tokens'."""
    words = torch.full((attention.shape[1],), -1)
    given = torch.as_tensor(list(token_words)[: attention.shape[1]], dtype=torch.long)
    words[: len(given)] = given
    owner = F.one_hot(words.clamp(min=0), max(count, 1))[:, :count].float() * (words >= 0)[:, None]
    return (attention.float() @ owner.to(attention.device)).T.reshape(count, *grid)


def painting_tiles(plan: TilePlan) -> Tensor:
    """The tile that paints each canvas cell anew [H, W] (``Tile.index``): the first in the plan's order
    that covers it; later tiles hold it from that one."""
    painter = torch.full((plan.canvas_height, plan.canvas_width), -1, dtype=torch.long)
    for tile in reversed(plan.tiles):
        painter[tile.slices] = tile.index
    return painter


def tile_words(plan: TilePlan, maps: Tensor, threshold: float, quiet: float = 0.0) -> dict[int, list[int]]:
    """The words (indices into ``maps`` [W, h, w], any grid with the canvas's aspect) each tile keeps
    (the module docstring has the rule), none of the :func:`quiet_words` under ``quiet`` (0: none is). A
    word whose map is flat (zero: no token reads it) has the whole canvas as its region: not placed, it
    stays in every tile."""
    if not len(maps):
        return {tile.index: [] for tile in plan.tiles}
    size = (plan.canvas_height, plan.canvas_width)
    canvas = F.interpolate(maps[None].float(), size=size, mode="bilinear")[0]
    low, peak = canvas.flatten(1).aminmax(dim=1)
    region = canvas >= (low + threshold * (peak - low))[:, None, None]  # [words, H, W]
    painters = painting_tiles(plan)
    painted = torch.bincount(painters.flatten(), minlength=len(plan))  # cells each tile paints
    peak_tile = painters.flatten()[canvas.flatten(1).argmax(1)]  # [words]
    placed = region.flatten(1).sum(1) <= painted[peak_tile]
    keep = ~placed[:, None] | (peak_tile[:, None] == torch.arange(len(plan)))  # [words, tiles]
    keep[quiet_words(maps, quiet)] = False
    return {tile.index: torch.nonzero(keep[:, tile.index])[:, 0].tolist() for tile in plan.tiles}


def quiet_words(maps: Tensor, ratio: float) -> list[int]:
    """The words (indices into ``maps`` [W, h, w]) whose map peaks under ``ratio`` times the average
    word's attention (the mean of every map): no image token attends them much more than it attends an
    average word. Not a word attended at least as much as the average word over the scene (a one-word
    prompt's word, a flat "sky"), nor a map of zeros (no token reads the word: nothing was measured)."""
    flat = maps.flatten(1).float()
    average, peak = flat.mean(), flat.amax(1)
    return torch.nonzero((peak < ratio * average) & (flat.mean(1) < average) & (peak > 0))[:, 0].tolist()


def tile_word_texts(
    kept: Mapping[int, Sequence[int]], words: Sequence[str]
) -> tuple[dict[int, str], str | None]:
    """The prompt of each tile that drops a word: its ``kept`` words (:func:`tile_words`) joined by
    spaces; tiles that keep every word are absent (they hear the run's prompt). And the scene's prompt,
    :func:`scene_words` joined; None when no tile drops a word."""
    texts = {
        index: " ".join(words[w] for w in mine) for index, mine in kept.items() if len(mine) < len(words)
    }
    return texts, " ".join(words[w] for w in scene_words(kept)) if texts else None


def scene_words(kept: Mapping[int, Sequence[int]]) -> list[int]:
    """The words every tile keeps (:func:`tile_words`), in order: those no tile owns alone, what every
    tile hears below the σ gate."""
    return sorted(set.intersection(*(set(mine) for mine in kept.values()))) if kept else []


def automatic_tile_prompts(
    plan: TilePlan, attention: Tensor, grid: tuple[int, int], settings: AutoTilePrompts
) -> tuple[Mapping[int, object], object | None]:
    """Each tile's conditioning (``RunSettings.tile_prompts``) and the scene's (what every tile hears
    below the σ gate, ``RunSettings.tile_scene_prompt``; None when no tile drops a word) from the run's
    prompt's cross-attention ``attention`` [h·w, L] on the whole scene's token grid ``grid``."""
    from .tile_prompts import encode_tile_prompts

    words, owners = prompt_words(settings.tokens)
    maps = word_maps(attention, grid, owners, len(words))
    texts, scene = tile_word_texts(tile_words(plan, maps, settings.threshold, settings.quiet), words)
    if settings.report is not None:
        settings.report(texts)
    return encode_tile_prompts(texts, settings.encode), None if scene is None else settings.encode(scene)
