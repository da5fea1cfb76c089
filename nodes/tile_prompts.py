"""Tile Prompts node: words per tile or per canvas rectangle, encoded for the Causal SANA Sampler.

The text is combined with the scene prompt before encoding (``temporal_tiling.tile_prompts``), so the
text encoder sees one ordinary prompt per tile; the node gives the scene prompt's conditioning (the
sampler's positive) and each tile's own (its tile_conditioning), both from the same CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from ..temporal_tiling.plan import TilePlan
from ..temporal_tiling.tile_prompts import (
    COMBINE_MODES,
    encode_tile_prompts,
    parse_lines,
    tile_texts,
    whole_scene_text,
)
from .common import CATEGORY, TilePlanSocket, cross_check

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


def encode(clip, text: str) -> list:
    """CLIPTextEncode's conditioning of ``text``."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


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
    def validate_inputs(cls, combine: str | None = None) -> bool:
        """Only the combo: ComfyUI 0.3.64 does not check a schema node's choices; the lines are read
        (and refused with their line number) at run."""
        return cross_check(cls, locals())

    @classmethod
    def execute(
        cls, clip, tile_plan: TilePlan, prompt: str, tile_prompts: str, combine: str
    ) -> io.NodeOutput:
        spec = parse_lines(tile_prompts, combine)
        texts = tile_texts(tile_plan, spec, prompt)
        by_tile = encode_tile_prompts(texts, lambda text: encode(clip, text))
        scene = encode(clip, whole_scene_text(spec, prompt))
        shown = [f"tile {index + 1}: {text}" for index, text in texts.items()] or ["no tile prompts"]
        return io.NodeOutput(
            encode(clip, prompt),
            TileConditioning(tile_plan, by_tile, texts, scene),
            ui={"text": ["\n".join(shown)]},
        )


NODES = [SanaTilePrompts]
