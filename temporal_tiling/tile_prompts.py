"""Tile prompts: each tile (or each rectangle of the canvas) gets its own words.

A prompt that names one object ("one sun") paints that object in every tile that hears it: each tile
is sampled as an image of its own. Tile prompts give the words to the tiles they belong to. A user
names tiles by their number, the one the Tile Planner's preview shows on each tile (its place in the
generation order, 1 = the first; the engine's ``Tile.index`` + 1), or rectangles of the canvas in
pixels; a rectangle's words go to every tile whose cells it touches, whatever the compression.

How a tile's words meet the run's prompt (``combine``):

* ``append`` (default): the tile hears ``"<prompt>, <tile words>"``. The global prompt keeps the
  scene's style and setting in every tile; the tile's words add what only it shows. The run's prompt
  should then name only what all tiles share.
* ``replace``: the tile hears its words alone (the global prompt is dropped for that tile).

The text is combined before encoding, so any text encoder (the embedded model's, Gemma in ComfyUI)
sees one ordinary prompt per tile; the engine then runs each tile with that tile's embeddings
(``RunSettings.tile_prompts``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .errors import UserInputError
from .plan import TilePlan

COMBINE_MODES = ("append", "replace")
"""How a tile's words meet the run's prompt (see the module docstring)."""
TILE_PROMPT_METHODS = ("causal", "guided", "independent")
"""The run path's methods whose model calls each belong to one tile, so a tile can hear its own prompt."""
AUTOMATIC = "auto"
"""``--tile-prompts auto``: automatic tile prompts (:mod:`word_maps`) instead of a file."""

Encoded = TypeVar("Encoded")


class TilePromptError(UserInputError):
    """A tile prompt that does not fit the plan or cannot be read; the message says what to change."""

    flag = "--tile-prompts"
    """The command-line flag these errors are about (the CLI names it before the message)."""


@dataclass(frozen=True)
class Region:
    """A rectangle of the canvas in pixels: left ``x``, top ``y``, width ``w``, height ``h``."""

    x: int
    y: int
    w: int
    h: int

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.w},{self.h}"


@dataclass(frozen=True)
class TilePrompts:
    """Words per tile number (1 = the first tile generated) and per canvas rectangle, and how they meet
    the run's prompt."""

    tiles: Mapping[int, str] = field(default_factory=dict)
    regions: tuple[tuple[Region, str], ...] = ()
    combine: str = "append"

    def __post_init__(self) -> None:
        if self.combine not in COMBINE_MODES:
            raise TilePromptError(
                f"tile prompt combine must be one of {', '.join(COMBINE_MODES)}, got {self.combine!r}."
            )


def region_cells(plan: TilePlan, region: Region) -> tuple[slice, slice]:
    """(rows, cols) of the latent cells ``region`` touches (a partly covered cell counts)."""
    c = plan.compression
    if region.w <= 0 or region.h <= 0 or region.x < 0 or region.y < 0:
        raise TilePromptError(
            f"tile prompt rectangle {region} (x,y,w,h px) needs x, y ≥ 0 and w, h > 0; fix the rectangle."
        )
    if region.x + region.w > plan.width_px or region.y + region.h > plan.height_px:
        raise TilePromptError(
            f"tile prompt rectangle {region} (x,y,w,h px) reaches past the {plan.width_px}×{plan.height_px} "
            "px canvas; keep it inside the canvas."
        )
    top, left = region.y // c, region.x // c
    bottom, right = -(-(region.y + region.h) // c), -(-(region.x + region.w) // c)
    return slice(top, bottom), slice(left, right)


def tiles_covering(plan: TilePlan, region: Region) -> list[int]:
    """Indices of the tiles whose cells ``region`` touches, in plan order."""
    rows, cols = region_cells(plan, region)
    return [
        tile.index
        for tile in plan.tiles
        if tile.y < rows.stop and rows.start < tile.y + tile.height
        if tile.x < cols.stop and cols.start < tile.x + tile.width
    ]


def tile_texts(plan: TilePlan, prompts: TilePrompts, prompt: str) -> dict[int, str]:
    """The prompt each tile with words of its own hears, by ``Tile.index`` (tiles absent here hear
    ``prompt``): its number's words, then every rectangle's that touches it, combined with ``prompt`` by
    ``prompts.combine``."""
    words: dict[int, list[str]] = {}
    for number, text in prompts.tiles.items():
        if not 1 <= number <= len(plan):
            raise TilePromptError(
                f"tile prompt for tile {number}: the plan has tiles 1 to {len(plan)}; "
                "use a number the Tile Planner's preview shows."
            )
        if text.strip():
            words.setdefault(number - 1, []).append(text.strip())
    for region, text in prompts.regions:
        for index in tiles_covering(plan, region):
            if text.strip():
                words.setdefault(index, []).append(text.strip())
    base = [prompt.strip()] if prompts.combine == "append" and prompt.strip() else []
    return {index: ", ".join(base + parts) for index, parts in sorted(words.items())}


def whole_scene_text(prompts: TilePrompts, prompt: str) -> str:
    """What a whole-scene pass (``guided``'s guide) hears: ``prompt`` and every tile's and rectangle's
    words once, so the guide's layout holds the objects the tiles then refine."""
    words = [text.strip() for text in (*prompts.tiles.values(), *(t for _, t in prompts.regions))]
    return ", ".join(dict.fromkeys(w for w in (prompt.strip(), *words) if w))


def encode_tile_prompts(texts: Mapping[int, str], encode: Callable[[str], Encoded]) -> dict[int, Encoded]:
    """Each tile's text encoded once per distinct text (tiles under one rectangle share it)."""
    encoded: dict[str, Encoded] = {}
    for text in texts.values():
        if text not in encoded:
            encoded[text] = encode(text)
    return {index: encoded[text] for index, text in texts.items()}


def check_method(method: str) -> None:
    """A TilePromptError unless ``method`` samples tile by tile, so a tile can hear its own prompt."""
    if method not in TILE_PROMPT_METHODS:
        raise TilePromptError(
            f"tile prompts need --method {', '.join(TILE_PROMPT_METHODS)} (tile by tile), not {method}"
        )


def read_tile_prompts(path: Path, method: str) -> TilePrompts:
    """A tile-prompts JSON file (``--tile-prompts``) for a run of ``method``, read and checked before
    any model loads."""
    check_method(method)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise TilePromptError(f"cannot read '{path}': {error}") from None
    return parse_json(text, f"'{path}'")


def parse_json(text: str, source: str = "tile prompts") -> TilePrompts:
    """A JSON object: ``{"tiles": {"1": "a sun"}, "regions": [{"x": 0, "y": 0, "w": 256, "h": 128,
    "prompt": "a sun"}], "combine": "append"}``; each key optional."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise TilePromptError(f"{source} is not valid JSON ({error}); fix the file.") from None
    if not isinstance(data, dict) or set(data) - {"tiles", "regions", "combine"}:
        raise TilePromptError(
            f'{source} must be a JSON object with "tiles", "regions" and/or "combine"; '
            f"got {type(data).__name__ if not isinstance(data, dict) else sorted(data)}."
        )
    tiles = data.get("tiles", {})
    if not isinstance(tiles, dict) or not all(
        re.fullmatch(r"\d+", str(k)) and isinstance(v, str) for k, v in tiles.items()
    ):
        raise TilePromptError(f'{source}: "tiles" must map tile numbers ("1", "2", ...) to prompt strings.')
    regions = data.get("regions", [])
    if not isinstance(regions, list):
        raise TilePromptError(f'{source}: "regions" must be a list of {{"x","y","w","h","prompt"}} objects.')
    parsed = []
    for number, entry in enumerate(regions):
        keys = {"x", "y", "w", "h", "prompt"}
        if (
            not isinstance(entry, dict)
            or set(entry) != keys
            or not isinstance(entry["prompt"], str)
            or not all(isinstance(entry[k], int) and not isinstance(entry[k], bool) for k in "xywh")
        ):
            raise TilePromptError(
                f'{source}: region {number} must be {{"x": int, "y": int, "w": int, "h": int, '
                f'"prompt": str}} (pixels), got {json.dumps(entry)}.'
            )
        parsed.append((Region(entry["x"], entry["y"], entry["w"], entry["h"]), entry["prompt"]))
    combine = data.get("combine", "append")
    return TilePrompts({int(k): v for k, v in tiles.items()}, tuple(parsed), str(combine))


_REGION_LINE = re.compile(r"\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*:(.*)")
_TILE_LINE = re.compile(r"\s*(\d+)\s*:(.*)")


def parse_lines(text: str, combine: str = "append") -> TilePrompts:
    """One prompt per line: ``x,y,w,h: words`` for a rectangle in pixels, ``N: words`` for tile N, and
    any other line for the tile of its line number (the first line is tile 1; an empty line skips one)."""
    tiles: dict[int, str] = {}
    regions = []
    for number, line in enumerate(text.splitlines()):
        if match := _REGION_LINE.fullmatch(line):
            x, y, w, h = (int(v) for v in match.groups()[:4])
            regions.append((Region(x, y, w, h), match.group(5)))
        elif match := _TILE_LINE.fullmatch(line):
            tiles[int(match.group(1))] = match.group(2)
        elif line.strip():
            tiles[number + 1] = line
    return TilePrompts(tiles, tuple(regions), combine)
