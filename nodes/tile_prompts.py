"""Tile Prompts node: words per tile or per canvas rectangle, encoded for the Causal SANA Sampler.

The text is combined with the scene prompt before encoding (``temporal_tiling.tile_prompts``), so the
text encoder sees one ordinary prompt per tile; the node gives the scene prompt's conditioning (the
sampler's positive) and each tile's own (its tile_conditioning), both from the same CLIP.

``automatic`` leaves the choice to the sampler (``temporal_tiling.word_maps``): it reads where each word of
the prompt acts on the whole scene (the guide) and each tile drops the words that act elsewhere (every
tile those that act nowhere). The node gives it the prompt, where each of its tokens sits in the text
(from this pack's SANA text encoder) and how to encode a tile's text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from comfy_api.latest import io

from ..temporal_tiling.options import DEFAULT_TILE_PROMPT_SIGMA, DEFAULT_WORD_SIGMA, DEFAULT_WORD_THRESHOLD
from ..temporal_tiling.plan import TilePlan
from ..temporal_tiling.tile_prompts import (
    COMBINE_MODES,
    TilePromptError,
    encode_tile_prompts,
    parse_lines,
    tile_texts,
    whole_scene_text,
)
from ..temporal_tiling.word_maps import AutoTilePrompts, PromptTokens
from .common import CATEGORY, TilePlanSocket, cross_check
from .sana_model import LOADER_DISPLAY_NAME, SanaTokenizer

TileConditioningSocket = io.Custom("TILE_CONDITIONING")
"""A :class:`TileConditioning`: the CONDITIONING of each tile with words of its own."""


@dataclass(frozen=True)
class TileConditioning:
    """Each tile's positive CONDITIONING by ``Tile.index``, for the plan it was made for."""

    plan: TilePlan
    by_tile: dict[int, list]
    texts: dict[int, str]
    """What each of those tiles hears, for the node's display."""
    scene: list
    """What mode = guided's whole-scene pass hears: the scene prompt and every tile's words."""
    automatic: AutoTilePrompts | None = None
    """Automatic tile prompts for the sampler to compute from the whole scene (then ``by_tile`` is empty)."""
    prompt_sigma: float = DEFAULT_TILE_PROMPT_SIGMA
    """The tiles hear their own words at noise levels σ ≥ this, the sampler's positive below (0: always);
    automatic tile prompts use their own gate (``automatic.sigma``)."""


def encode(clip, text: str) -> list:
    """CLIPTextEncode's conditioning of ``text``."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def automatic(clip, prompt: str, threshold: float, sigma: float) -> AutoTilePrompts:
    """The sampler's automatic tile prompts for ``prompt``; the pack's SANA text encoder places its tokens."""
    tokenizer = getattr(clip, "tokenizer", None)
    if not isinstance(tokenizer, SanaTokenizer):
        raise TilePromptError(
            f"automatic tile prompts place each word with this pack's SANA text encoder; this CLIP "
            f"({type(tokenizer).__name__}) is another. Load it with '{LOADER_DISPLAY_NAME}' or turn "
            "automatic off."
        )
    text, spans = tokenizer.encoder.token_spans(prompt)

    def report(texts: dict[int, str]) -> None:
        for index, words in texts.items():
            logging.info("SANA automatic tile prompts: tile %d hears '%s'", index + 1, words)

    conditioning = encode(clip, prompt)
    return AutoTilePrompts(
        PromptTokens(text, tuple(spans)),
        lambda words: encode(clip, words),
        threshold,
        report,
        conditioning,
        sigma,
    )


class SanaTilePrompts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTemporalTilePrompts",
            display_name="Tile Prompts",
            category=CATEGORY,
            description=(
                "Gives tiles their own words, so an object named once is painted once: each tile (numbered "
                "as the Tile Planner's preview shows) or each rectangle of the canvas gets a prompt, "
                "combined with the scene prompt; mode = guided's whole-scene pass hears the scene prompt "
                "and every tile's words. Connect positive and tile_conditioning to the Causal SANA Sampler "
                "(modes causal, guided, independent)."
            ),
            inputs=[
                io.Clip.Input("clip", tooltip="The text encoder, as for CLIPTextEncode."),
                TilePlanSocket.Input(
                    "tile_plan", tooltip="The plan the sampler runs (tile numbers and size)."
                ),
                io.String.Input(
                    "prompt",
                    multiline=True,
                    default="",
                    tooltip="The scene prompt every tile hears: what all tiles share (style, setting). "
                    "Name an object that should appear once in the tile prompts instead.",
                ),
                io.String.Input(
                    "tile_prompts",
                    multiline=True,
                    default="",
                    tooltip="One line per tile: line 1 is tile 1 (an empty line skips a tile), or "
                    "'N: words' for tile N, or 'x,y,w,h: words' for a rectangle of the canvas in pixels "
                    "(every tile it touches hears the words).",
                ),
                io.Combo.Input(
                    "combine",
                    options=list(COMBINE_MODES),
                    default=COMBINE_MODES[0],
                    tooltip="append: a tile hears 'prompt, its words'; replace: its words alone.",
                ),
                io.Boolean.Input(
                    "automatic",
                    default=False,
                    tooltip="Leave tile_prompts empty and let the sampler choose each tile's words: it reads "
                    "where each word of prompt acts on the whole scene (the guide) and each tile drops the "
                    "words that act elsewhere, every tile those that act nowhere (an object the guide did "
                    "not draw) (AccDiffusion). Needs this pack's SANA loader.",
                ),
                io.Float.Input(
                    "word_threshold",
                    default=DEFAULT_WORD_THRESHOLD,
                    min=0.05,
                    max=1.0,
                    step=0.05,
                    tooltip="automatic: a word's region is where its attention rises this share of the way "
                    "from its lowest to its peak; a word whose region fits in one tile goes to the tile that "
                    "paints its peak only, the others stay in every tile (higher drops more words).",
                ),
                io.Float.Input(
                    "tile_prompt_sigma",
                    default=DEFAULT_TILE_PROMPT_SIGMA,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="A tile hears its own words while the noise level σ is at least this (the early "
                    "steps, which place objects) and the scene prompt below it (the detail steps), so "
                    "neighbouring tiles paint what they share from the same words. 0: its words at every "
                    "step. Not read with automatic: word_sigma is its gate.",
                ),
                io.Float.Input(
                    "word_sigma",
                    default=DEFAULT_WORD_SIGMA,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="automatic: the tile that paints an object hears its words while the noise level "
                    "σ is at least this (the steps that place it) and every tile the words all tiles keep "
                    "below it, so the object's tile paints no small copies around it. 0: at every step.",
                ),
            ],
            outputs=[
                io.Conditioning.Output(
                    display_name="positive", tooltip="The scene prompt: the sampler's positive."
                ),
                TileConditioningSocket.Output(
                    display_name="tile_conditioning",
                    tooltip="Each tile's own prompt: the sampler's tile_conditioning input.",
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        combine: str | None = None,
        word_threshold: float | None = None,
        tile_prompt_sigma: float | None = None,
        word_sigma: float | None = None,
    ) -> bool:
        """The combo and the floats: ComfyUI 0.3.64 does not check a schema node's choices and lets NaN
        through a float's range; the lines are read (and refused with their line number) at run."""
        return cross_check(cls, locals())

    @classmethod
    def execute(
        cls,
        clip,
        tile_plan: TilePlan,
        prompt: str,
        tile_prompts: str,
        combine: str,
        automatic: bool = False,
        word_threshold: float = DEFAULT_WORD_THRESHOLD,
        tile_prompt_sigma: float = DEFAULT_TILE_PROMPT_SIGMA,
        word_sigma: float = DEFAULT_WORD_SIGMA,
    ) -> io.NodeOutput:
        if automatic:
            return cls.automatic(clip, tile_plan, prompt, tile_prompts, word_threshold, word_sigma)
        spec = parse_lines(tile_prompts, combine)
        texts = tile_texts(tile_plan, spec, prompt)
        by_tile = encode_tile_prompts(texts, lambda text: encode(clip, text))
        scene = encode(clip, whole_scene_text(spec, prompt))
        shown = [f"tile {index + 1}: {text}" for index, text in texts.items()] or ["no tile prompts"]
        return io.NodeOutput(
            encode(clip, prompt),
            TileConditioning(tile_plan, by_tile, texts, scene, prompt_sigma=tile_prompt_sigma),
            ui={"text": ["\n".join(shown)]},
        )

    @classmethod
    def automatic(
        cls, clip, tile_plan: TilePlan, prompt: str, tile_prompts: str, threshold: float, sigma: float
    ) -> io.NodeOutput:
        if tile_prompts.strip():
            raise TilePromptError(
                "automatic chooses each tile's words itself: clear tile_prompts or turn automatic off."
            )
        settings = automatic(clip, prompt, threshold, sigma)
        shown = (
            f"automatic: the sampler picks each tile's words of the prompt (threshold {threshold}, "
            f"an object's words heard at σ ≥ {sigma:g})"
        )
        return io.NodeOutput(
            settings.prompt,
            TileConditioning(tile_plan, {}, {}, settings.prompt, settings),  # its gate: settings.sigma
            ui={"text": [shown]},
        )


NODES = [SanaTilePrompts]
