"""Tile plans: where each tile of a canvas sits, in which order tiles are generated, what they share.

All geometry is kept in latent cells; the compression factor (pixels per cell, read from the
VAE) converts to pixels. Every tile has the same size so a tile batch is a valid LATENT/IMAGE
batch: tiles at the right/bottom edge shift inward instead of shrinking.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np
import torch

from .errors import UserInputError
from .options import DEFAULT_FIT, FITS, MAX_TILES, ORDERS

Order = Literal["raster", "serpentine", "spiral", "center_out", "random"]


class PlanError(UserInputError):
    """An impossible tile plan; the message says which setting to change."""


@dataclass(frozen=True)
class Tile:
    """One tile. ``index`` is its place in generation order; geometry is in latent cells."""

    index: int
    row: int
    col: int
    y: int
    x: int
    height: int
    width: int
    neighbors: tuple[int, ...]
    """Indices of grid-adjacent tiles (8-neighbourhood) generated before this one."""

    @classmethod
    def whole(cls, height: int, width: int) -> Tile:
        """A whole canvas of ``height`` × ``width`` cells as one tile (a one-pass or MultiDiffusion run)."""
        return cls(0, 0, 0, 0, 0, height, width, ())

    @property
    def slices(self) -> tuple[slice, slice]:
        """(rows, cols) slices of this tile in a latent canvas."""
        return slice(self.y, self.y + self.height), slice(self.x, self.x + self.width)

    def slices_in(self, window: Tile) -> tuple[slice, slice]:
        """(rows, cols) slices of this tile inside ``window`` (a larger region that contains it)."""
        top, left = self.y - window.y, self.x - window.x
        return slice(top, top + self.height), slice(left, left + self.width)

    def pixel_slices(self, compression: int) -> tuple[slice, slice]:
        """(rows, cols) slices of this tile in the decoded image."""
        c = compression
        return slice(self.y * c, (self.y + self.height) * c), slice(self.x * c, (self.x + self.width) * c)


@dataclass(frozen=True)
class Seam:
    """The boundary between two grid-adjacent tiles, in pixels.

    ``axis`` is the orientation of the seam line: ``vertical`` for left/right neighbours (the line
    runs down the image at column ``position``), ``horizontal`` for top/bottom neighbours.
    ``position`` is the centre line of the overlap (the shared edge when there is no overlap): the
    boundary between pixel ``position - 1`` and pixel ``position``. ``start``/``stop`` bound the
    line along its length, ``overlap_start``/``overlap_stop`` bound the overlap across it.
    """

    first: int
    second: int
    axis: Literal["vertical", "horizontal"]
    position: int
    start: int
    stop: int
    overlap_start: int
    overlap_stop: int


def _axis_starts(canvas: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: fixed stride, the last tile shifted inward to end on the edge."""
    if tile >= canvas:
        return [0]
    stride = tile - overlap
    count = math.ceil((canvas - tile) / stride) + 1
    return [min(i * stride, canvas - tile) for i in range(count)]


def _fitted_tile(canvas: int, tile: int, overlap: int) -> int:
    """Smallest uniform tile that covers ``canvas`` with the overlap-free tile count and ``overlap``."""
    count = math.ceil(canvas / tile)
    if count == 1:
        return tile
    return min(canvas, math.ceil((canvas + (count - 1) * overlap) / count))


def _axis(canvas: int, tile: int, overlap: int, fit: str) -> tuple[int, list[int]]:
    """(tile size, tile origins) along one axis, in latent cells, for a ``fit`` of ``FITS``."""
    if fit == "grow":
        tile = _fitted_tile(canvas, tile, overlap)
    return tile, _axis_starts(canvas, tile, overlap)


def _grid_order(rows: int, cols: int, order: str, seed: int) -> list[tuple[int, int]]:
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    if order == "raster":
        return cells
    if order == "serpentine":
        return [(r, c if r % 2 == 0 else cols - 1 - c) for r in range(rows) for c in range(cols)]
    if order == "spiral":
        return _spiral(rows, cols)
    if order == "center_out":
        cy, cx = (rows - 1) / 2, (cols - 1) / 2
        return sorted(cells, key=lambda rc: ((rc[0] - cy) ** 2 + (rc[1] - cx) ** 2, rc))
    if order == "random":
        permutation = np.random.default_rng(seed).permutation(len(cells))
        return [cells[i] for i in permutation]
    raise PlanError(f"Unknown tile order {order!r}; choose one of {', '.join(ORDERS)}.")


def _spiral(rows: int, cols: int) -> list[tuple[int, int]]:
    """Clockwise from the top-left corner, ring by ring towards the centre."""
    top, bottom, left, right = 0, rows - 1, 0, cols - 1
    out: list[tuple[int, int]] = []
    while top <= bottom and left <= right:
        out += [(top, c) for c in range(left, right + 1)]
        out += [(r, right) for r in range(top + 1, bottom + 1)]
        if top < bottom:
            out += [(bottom, c) for c in range(right - 1, left - 1, -1)]
        if left < right:
            out += [(r, left) for r in range(bottom - 1, top, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return out


@dataclass(frozen=True)
class TilePlan:
    """A canvas cut into equal tiles, listed in generation order."""

    canvas_height: int
    canvas_width: int
    tile_height: int
    tile_width: int
    overlap: int
    compression: int
    order: str
    seed: int
    fit: str
    rows: int
    cols: int
    tiles: tuple[Tile, ...]

    # --- sizes -------------------------------------------------------------------------------
    @property
    def width_px(self) -> int:
        return self.canvas_width * self.compression

    @property
    def height_px(self) -> int:
        return self.canvas_height * self.compression

    @property
    def tile_width_px(self) -> int:
        return self.tile_width * self.compression

    @property
    def tile_height_px(self) -> int:
        return self.tile_height * self.compression

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def token_amplification(self) -> float:
        """Latent cells denoised per canvas cell (1.0 = every cell once)."""
        tiled = len(self.tiles) * self.tile_height * self.tile_width
        return tiled / (self.canvas_height * self.canvas_width)

    @property
    def whole_canvas(self) -> Tile:
        """The canvas as one tile: what a full pass or a MultiDiffusion sampler runs over."""
        return Tile.whole(self.canvas_height, self.canvas_width)

    def crops(self, canvas: torch.Tensor) -> torch.Tensor:
        """The tiles' crops of a latent canvas [B,C,H,W] as one tile batch [T*B,C,h,w], tile-major."""
        return torch.cat([canvas[..., tile.slices[0], tile.slices[1]] for tile in self.tiles])

    # --- masks -------------------------------------------------------------------------------
    def coverage(self) -> torch.Tensor:
        """How many tiles cover each latent cell, shape [H, W] (float32)."""
        count = torch.zeros(self.canvas_height, self.canvas_width)
        for tile in self.tiles:
            count[tile.slices] += 1
        return count

    def window(self, tile: Tile, halo: int) -> Tile:
        """``tile`` grown by ``halo`` cells on every side, clamped to the canvas (same index, row and
        column): the window a tile is sampled on when it should see a ring of its neighbours' cells,
        so that its own border is not the model's image border."""
        if halo < 0:
            raise PlanError(f"halo must be ≥ 0 latent cells (0 = the tile alone), got {halo}.")
        top, left = max(tile.y - halo, 0), max(tile.x - halo, 0)
        bottom = min(tile.y + tile.height + halo, self.canvas_height)
        right = min(tile.x + tile.width + halo, self.canvas_width)
        window = replace(tile, y=top, x=left, height=bottom - top, width=right - left)
        return tile if window == tile else window  # the tile itself: hosts may recognise it by identity

    def known_mask(self, index: int, margin: int = 0, window: Tile | None = None) -> torch.Tensor:
        """Cells of tile ``index`` (or of ``window``) already produced by tiles earlier in the order,
        shape [h, w] bool.

        ``margin`` leaves out each earlier tile's outermost ``margin`` cells on every side that is
        not the canvas border: a tile paints its window edge as an image edge, so that band is not
        content worth keeping.
        """
        if margin < 0:
            raise PlanError(f"margin must be ≥ 0 latent cells, got {margin}.")
        done = torch.zeros(self.canvas_height, self.canvas_width, dtype=torch.bool)
        for tile in self.tiles[:index]:
            bottom, right = tile.y + tile.height, tile.x + tile.width
            top = tile.y + margin if tile.y > 0 else 0
            left = tile.x + margin if tile.x > 0 else 0
            bottom -= margin if bottom < self.canvas_height else 0
            right -= margin if right < self.canvas_width else 0
            done[top : max(top, bottom), left : max(left, right)] = True
        return done[(window or self.tiles[index]).slices]

    def seams(self) -> list[Seam]:
        """Every pair of grid-adjacent tiles (left/right and top/bottom), in pixels."""
        by_cell = {(t.row, t.col): t for t in self.tiles}
        c = self.compression
        seams: list[Seam] = []
        for (row, col), a in sorted(by_cell.items()):
            right, below = by_cell.get((row, col + 1)), by_cell.get((row + 1, col))
            if right is not None:
                lo, hi = right.x * c, (a.x + a.width) * c
                first, second = sorted((a.index, right.index))
                seams.append(
                    Seam(first, second, "vertical", (lo + hi) // 2, a.y * c, (a.y + a.height) * c, lo, hi)
                )
            if below is not None:
                lo, hi = below.y * c, (a.y + a.height) * c
                first, second = sorted((a.index, below.index))
                seams.append(
                    Seam(first, second, "horizontal", (lo + hi) // 2, a.x * c, (a.x + a.width) * c, lo, hi)
                )
        return seams

    def check_tile_batch(self, tiles: torch.Tensor, scale: int | None = None) -> int:
        """Canvas batch size B of a tile batch [T*B, C, h, w] made for this plan (``scale`` = pixels
        per latent cell: the compression for images, 1 for latents); PlanError naming the mismatch."""
        scale = self.compression if scale is None else scale
        if not isinstance(tiles, torch.Tensor) or tiles.ndim != 4:
            raise PlanError(
                f"tiles must be a [T*B, C, h, w] tensor, got {getattr(tiles, 'shape', type(tiles))!r}."
            )
        if tiles.shape[0] == 0 or tiles.shape[0] % len(self):
            raise PlanError(
                f"The tile batch holds {tiles.shape[0]} images but the plan has {len(self)} tiles; "
                f"give T*B images (a multiple of {len(self)}) in plan order, e.g. from Split Into Tiles."
            )
        expected = (self.tile_height * scale, self.tile_width * scale)
        if tuple(tiles.shape[-2:]) != expected:
            raise PlanError(
                f"Tiles are {tiles.shape[-1]}×{tiles.shape[-2]} but the plan's tiles are "
                f"{expected[1]}×{expected[0]}; use the plan the tiles were made with."
            )
        if tiles.is_floating_point() and torch.isnan(tiles).any():
            raise PlanError("The tiles contain NaN pixels; fix the upstream node (decode/sampler) first.")
        return tiles.shape[0] // len(self)

    # --- serialisation -----------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TilePlan:
        """Rebuild a plan and check it still covers its canvas (hand-edited JSON included)."""
        try:
            data = json.loads(text)
            tiles = tuple(Tile(**{**t, "neighbors": tuple(t["neighbors"])}) for t in data.pop("tiles"))
            plan = cls(**data, tiles=tiles)
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise PlanError(f"Not a tile plan JSON ({error}); make it with make_plan().to_json().") from error
        _check_covered(plan)
        return plan


def _check_covered(plan: TilePlan) -> None:
    for tile in plan.tiles:
        if tile.y < 0 or tile.x < 0 or tile.y + tile.height > plan.canvas_height:
            raise PlanError(f"Tile {tile.index} lies outside the canvas; rebuild the plan.")
        if tile.x + tile.width > plan.canvas_width:
            raise PlanError(f"Tile {tile.index} lies outside the canvas; rebuild the plan.")
    uncovered = int((plan.coverage() == 0).sum())
    if uncovered:
        raise PlanError(
            f"The plan leaves {uncovered} latent cells of the canvas uncovered; "
            "use more tiles, larger tiles or a larger overlap."
        )


def _check_px(name: str, value: int, compression: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise PlanError(f"{name} must be a positive whole number of pixels, got {value!r}.")
    if value % compression:
        lower = max(compression, value // compression * compression)
        raise PlanError(
            f"{name} = {value} px is not a multiple of the VAE's compression factor {compression}; "
            f"use {lower} or {lower + compression}."
        )


def check_plan(
    *,
    width_px: int,
    height_px: int,
    tile_width_px: int,
    tile_height_px: int,
    overlap_px: int,
    compression: int,
    order: str = "raster",
    fit: str = DEFAULT_FIT,
    max_tiles: int = MAX_TILES,
) -> tuple[int, int]:
    """(rows, cols) of the plan ``make_plan`` would build, or a PlanError naming the setting to change.

    Counts the grid without building tiles, so a canvas cut into tens of thousands of tiles is refused
    in microseconds instead of being planned first.
    """
    if not isinstance(compression, int) or compression <= 0:
        raise PlanError(
            f"compression must be a positive integer (pixels per latent cell), got {compression!r}."
        )
    sizes = (
        ("width", width_px),
        ("height", height_px),
        ("tile_width", tile_width_px),
        ("tile_height", tile_height_px),
    )
    for name, value in sizes:
        _check_px(name, value, compression)
    overlap, c = overlap_px, compression
    if not isinstance(overlap, int) or overlap < 0:
        raise PlanError(f"overlap must be zero or a positive number of pixels, got {overlap!r}.")
    if overlap % c:
        raise PlanError(
            f"overlap = {overlap} px is not a multiple of the VAE's compression factor {c}; "
            f"use {overlap // c * c} or {(overlap // c + 1) * c}."
        )
    tile_size = f"{tile_width_px}×{tile_height_px} px"
    if tile_width_px > width_px or tile_height_px > height_px:
        raise PlanError(
            f"The tile ({tile_size}) is larger than the canvas ({width_px}×{height_px} px); "
            "make the tile smaller or the canvas larger."
        )
    if overlap >= min(tile_width_px, tile_height_px):
        raise PlanError(
            f"overlap = {overlap} px must be smaller than the tile ({tile_size}); "
            "a quarter of the tile is a good start."
        )
    if order not in ORDERS:
        raise PlanError(f"Unknown tile order {order!r}; choose one of {', '.join(ORDERS)}.")
    if fit not in FITS:
        raise PlanError(f"Unknown tile fit {fit!r}; choose one of {', '.join(FITS)}.")

    rows, cols = (
        len(_axis(canvas // c, tile // c, overlap // c, fit)[1])
        for canvas, tile in ((height_px, tile_height_px), (width_px, tile_width_px))
    )
    if rows * cols > max_tiles:
        raise PlanError(
            f"The plan has {rows * cols} tiles ({cols}×{rows}), more than the ceiling of {max_tiles} "
            f"(max_tiles): every tile is a full sampling run. Use larger tiles or a smaller canvas, or "
            f"raise max_tiles if you mean it."
        )
    return rows, cols


def make_plan(
    *,
    width_px: int,
    height_px: int,
    tile_width_px: int,
    tile_height_px: int,
    overlap_px: int,
    compression: int,
    order: str = "raster",
    seed: int = 0,
    fit: str = DEFAULT_FIT,
    max_tiles: int = MAX_TILES,
) -> TilePlan:
    """Plan a ``width_px`` × ``height_px`` canvas in tiles of ``tile_width_px`` × ``tile_height_px``.

    Sizes come in pixels, by keyword only (``*_px``), and the plan keeps them in latent cells
    (``TilePlan.tile_width`` ...; ``TilePlan.tile_width_px`` ... in pixels): a cell count passed where
    pixels are meant cannot slip through by position. ``overlap_px`` is the least overlap between
    neighbouring tiles. With ``fit="shift"`` edge tiles shift inward and overlap more; with
    ``fit="grow"`` tiles grow (see ``FITS``). All sizes must be multiples of ``compression`` (pixels per
    latent cell). More than ``max_tiles`` tiles are refused before any tile is built (see ``MAX_TILES``).
    """
    check_plan(
        width_px=width_px,
        height_px=height_px,
        tile_width_px=tile_width_px,
        tile_height_px=tile_height_px,
        overlap_px=overlap_px,
        compression=compression,
        order=order,
        fit=fit,
        max_tiles=max_tiles,
    )
    c = compression
    tile_h, ys = _axis(height_px // c, tile_height_px // c, overlap_px // c, fit)
    tile_w, xs = _axis(width_px // c, tile_width_px // c, overlap_px // c, fit)
    sequence = _grid_order(len(ys), len(xs), order, seed)
    position = {cell: i for i, cell in enumerate(sequence)}
    tiles = tuple(
        Tile(
            index=i,
            row=r,
            col=col,
            y=ys[r],
            x=xs[col],
            height=tile_h,
            width=tile_w,
            neighbors=tuple(
                sorted(
                    position[(r + dr, col + dc)]
                    for dr in (-1, 0, 1)
                    for dc in (-1, 0, 1)
                    if (dr, dc) != (0, 0) and position.get((r + dr, col + dc), len(sequence)) < i
                )
            ),
        )
        for i, (r, col) in enumerate(sequence)
    )
    plan = TilePlan(
        canvas_height=height_px // c,
        canvas_width=width_px // c,
        tile_height=tile_h,
        tile_width=tile_w,
        overlap=overlap_px // c,
        compression=c,
        order=order,
        seed=seed,
        fit=fit,
        rows=len(ys),
        cols=len(xs),
        tiles=tiles,
    )
    _check_covered(plan)
    return plan
