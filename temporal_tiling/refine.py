"""Refine an image: a photo (or any picture) enlarged and repainted by the run path, at any size.

The user gives an image and a scale; every size the model needs is made here: the canvas is the
output rounded up to whole latent cells and tokens (the padding mirrors the image and is cut off
again), tiles and overlaps are rounded the same way. The enlarged image is the guide: encoded to the
canvas latent, it is what ``guided`` refines (its statistics seed the BCLA cache and pull every tile
toward it), or the img2img start of the other methods.

Memory holds at 16K: the image never goes through the autoencoder at once. Encoding reads the
enlarged image one autoencoder tile at a time straight from the input (bicubic per tile, so the
enlarged image never exists whole either) and blends the tiles' latents over their overlap; decoding
runs one tile at a time, cross-fades it with its neighbours over the overlap and hands every finished
block of pixels to the output, so the working set is one tile, the overlap rows the next tile row
still adds to, and the canvas latent, which the refine hands over in bands that the decode drops as it
passes them (the output fills as the latent goes).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .blend import axis_profiles, fade_starts, reference_correct
from .errors import UserInputError
from .memory import return_freed_memory
from .plan import TilePlan, make_plan

PixelSource = Callable[[int, int, int, int], Tensor]
"""``(top, bottom, left, right)`` px of the canvas -> that region [1, 3, h, w] in [0, 1]."""
BlockWriter = Callable[[int, int, Tensor], None]
"""``(top, left, pixels [B, 3, h, w])``: a finished block of the canvas, px; the blocks cover the canvas
once, tile row by tile row, left to right."""


class RefineError(UserInputError):
    """An image or setting the refine cannot use; the message says what to change."""


@dataclass(frozen=True)
class Autoencoder:
    """The model's autoencoder as the refine drives it, one tile at a time."""

    encode: Callable[[Tensor], Tensor]
    """[1, 3, H, W] in [0, 1] -> latent [1, C, H / compression, W / compression] (the model's space)."""
    decode: Callable[[Tensor], Tensor]
    """latent [B, C, h, w] -> [B, 3, h × compression, w × compression] in [0, 1] (tiled decoding itself
    takes any range, e.g. DC-AE's own [-1, 1]; colour correction against a reference needs [0, 1])."""
    compression: int
    tile_px: int = 512
    """Pixels per autoencoder tile side (its activations are the working memory): 512 px is 64 cells
    of an 8× autoencoder and 16 of SANA's 32× DC-AE."""
    overlap_px: int = 64
    """Pixels neighbouring autoencoder tiles share and cross-fade over, so no seam comes from the
    autoencoder's own tiling."""


REFINE_FIT = "shift"
"""The refine's tile fit: every tile the size asked for, the last of a row or column shifted inward."""


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) px of the refined image: exactly round(scale × side)."""
    if not (math.isfinite(scale) and scale >= 1.0):
        raise RefineError(f"scale must be 1 or more (1 refines at the input's size), got {scale}.")
    return max(1, round(scale * height)), max(1, round(scale * width))


def refine_plan_sizes(
    height: int, width: int, tile: int, overlap: int, compression: int, patch: int = 1
) -> dict[str, int]:
    """The :func:`plan.make_plan` sizes (px) of an output of ``height`` × ``width`` px: the canvas rounded
    up to whole tokens (``compression × patch`` px), the tile (px, at most the canvas) and the overlap
    rounded to tokens (the overlap at most the tile less one token), so any image size and tile works."""
    token = compression * patch
    canvas_h, canvas_w = round_up(height, token), round_up(width, token)
    tile_h, tile_w = (min(canvas, max(token, round(tile / token) * token)) for canvas in (canvas_h, canvas_w))
    return {
        "width_px": canvas_w,
        "height_px": canvas_h,
        "tile_width_px": tile_w,
        "tile_height_px": tile_h,
        "overlap_px": min(round(overlap / token) * token, min(tile_h, tile_w) - token),
        "compression": compression,
    }


def refine_plan(
    height: int,
    width: int,
    tile: int,
    overlap: int,
    compression: int,
    patch: int = 1,
    *,
    seed: int = 0,
    max_tiles: int | None = None,
) -> TilePlan:
    """The tile plan of an output of ``height`` × ``width`` px (:func:`refine_plan_sizes`); edge tiles
    shift inward."""
    limit = {} if max_tiles is None else {"max_tiles": max_tiles}
    sizes = refine_plan_sizes(height, width, tile, overlap, compression, patch)
    return make_plan(**sizes, seed=seed, fit=REFINE_FIT, **limit)


def enlarged(image: np.ndarray, height: int, width: int) -> PixelSource:
    """The input ``image`` [h, w, 3] (uint8 or uint16) enlarged bicubically to ``height`` × ``width``
    px, read region by region; regions beyond it (the canvas's padding) mirror the image."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise RefineError(f"The image must be RGB [h, w, 3], got shape {image.shape}.")
    peak = float(np.iinfo(image.dtype).max) if image.dtype.kind == "u" else 1.0
    rows, cols = image.shape[:2]

    def axis(start: int, stop: int, size: int, source: int) -> tuple[Tensor, int, int]:
        """Source coordinates of output pixels [start, stop), mirrored at the output's end, and the
        source range (with the bicubic kernel's reach) they read."""
        index = torch.arange(start, stop, dtype=torch.float64)
        index = torch.where(index < size, index, 2 * size - 1 - index).clamp(0, size - 1)
        coords = (index + 0.5) * (source / size) - 0.5
        low = max(0, math.floor(float(coords.min())) - 2)
        high = min(source, math.ceil(float(coords.max())) + 3)
        return coords - low, low, high

    def region(top: int, bottom: int, left: int, right: int) -> Tensor:
        ys, y0, y1 = axis(top, bottom, height, rows)
        xs, x0, x1 = axis(left, right, width, cols)
        crop = torch.from_numpy(image[y0:y1, x0:x1].astype(np.float32) / peak).permute(2, 0, 1)[None]
        # grid_sample's normalised coordinates (align_corners=False): -1 and 1 are the crop's outer edges
        grid_y = (ys + 0.5) / (y1 - y0) * 2 - 1
        grid_x = (xs + 0.5) / (x1 - x0) * 2 - 1
        grid = torch.stack(torch.meshgrid(grid_x, grid_y, indexing="xy"), dim=-1)[None].float()
        out = F.grid_sample(crop, grid, mode="bicubic", padding_mode="border", align_corners=False)
        return out.clamp(0, 1)

    return region


def _tiling(height: int, width: int, autoencoder: Autoencoder) -> TilePlan:
    """The autoencoder's own tiles over a canvas of ``height`` × ``width`` latent cells (raster order)."""
    c = autoencoder.compression
    tile = max(1, autoencoder.tile_px // c)
    tile_h, tile_w = min(tile, height), min(tile, width)
    overlap = max(0, min(autoencoder.overlap_px // c, tile_h - 1, tile_w - 1))
    return make_plan(
        width_px=width * c,
        height_px=height * c,
        tile_width_px=tile_w * c,
        tile_height_px=tile_h * c,
        overlap_px=overlap * c,
        compression=c,
        fit="shift",
        max_tiles=10**9,
    )


def encode_tiled(autoencoder: Autoencoder, pixels: PixelSource, plan: TilePlan) -> Tensor:
    """The canvas latent [1, C, H, W] of ``plan``, encoded one autoencoder tile at a time, the tiles'
    latents cross-faded over their overlap."""
    tiling, c = _tiling(plan.canvas_height, plan.canvas_width, autoencoder), autoencoder.compression
    rows = axis_profiles([t.y for t in tiling.tiles], tiling.tile_height, "linear", None)
    cols = axis_profiles([t.x for t in tiling.tiles], tiling.tile_width, "linear", None)
    canvas: Tensor | None = None
    total = torch.zeros(1, 1, plan.canvas_height, plan.canvas_width)
    for tile in tiling.tiles:
        (y0, y1), (x0, x1) = ((s.start, s.stop) for s in tile.slices)
        latent = autoencoder.encode(pixels(y0 * c, y1 * c, x0 * c, x1 * c)).float().cpu()
        if canvas is None:
            canvas = latent.new_zeros(1, latent.shape[1], plan.canvas_height, plan.canvas_width)
        weight = rows[tile.y][:, None] * cols[tile.x][None, :]
        canvas[..., y0:y1, x0:x1] += latent * weight
        total[..., y0:y1, x0:x1] += weight
    return canvas.div_(total)  # in place: no second canvas-sized latent


class LatentRows:
    """The canvas latent [B, C, H, W] as :func:`decode_tiled` reads it: a tensor, or a list of its
    horizontal bands (top to bottom) handed over to the decode, which drops each band from that list
    once no later tile row reads it, so the latent's memory goes back while the output fills."""

    def __init__(self, latent: Tensor | list[Tensor]) -> None:
        self.bands: list[Tensor | None] = latent if isinstance(latent, list) else [latent]
        self.starts = list(itertools.accumulate((band.shape[-2] for band in self.bands), initial=0))
        first = self.bands[0]
        self.shape = (*first.shape[:-2], self.starts[-1], first.shape[-1])

    def read(self, top: int, bottom: int, left: int, right: int) -> Tensor:
        """Cells [top, bottom) × [left, right): a view of one band, or a copy joining two."""
        parts = [
            band[..., max(top, start) - start : min(bottom, stop) - start, left:right]
            for band, (start, stop) in zip(self.bands, itertools.pairwise(self.starts), strict=True)
            if start < bottom and stop > top
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)

    def drop_above(self, row: int) -> bool:
        """Drops the bands that end at or above cell row ``row``; whether any was still held."""
        ended = [index for index, stop in enumerate(self.starts[1:]) if stop <= row]
        held = [index for index in ended if self.bands[index] is not None]
        for index in held:
            self.bands[index] = None
        return bool(held)


def decode_tiled(
    autoencoder: Autoencoder,
    latent: Tensor | list[Tensor],
    write: BlockWriter,
    reference: PixelSource | None = None,
    sigma: float = 4.0,
) -> None:
    """Decode the canvas ``latent`` [B, C, H, W] one autoencoder tile at a time, cross-faded over the
    overlaps, and ``write`` every block of pixels as soon as no later tile reaches it. A list of the
    latent's horizontal bands instead is consumed (:class:`LatentRows`): each band is dropped from it,
    and its memory returned, once the decode has passed it. With a
    ``reference``, every decoded tile's low frequencies (Gaussian, ``sigma`` px) are replaced by the
    reference's (:func:`blend.reference_correct`): colour correction against the input.

    The working set is one tile, the unfinished columns of the tile to its left, and the overlap rows
    that the tile row below still adds to (overlap × canvas width): nothing holds a whole row of tiles.
    """
    c = autoencoder.compression
    latent = LatentRows(latent)
    batch = latent.shape[0]
    height, width = latent.shape[-2] * c, latent.shape[-1] * c
    tiling = _tiling(*latent.shape[-2:], autoencoder)
    tile_h, tile_w = tiling.tile_height * c, tiling.tile_width * c
    tops = sorted({t.y * c for t in tiling.tiles})
    lefts = sorted({t.x * c for t in tiling.tiles})
    # a tile shifted inward (the last of a row or column) fades in over the overlap only: no row of
    # it waits on the next tile row for more than the overlap
    overlap = tiling.overlap * c
    rows = axis_profiles(tops, tile_h, "linear", None, overlap)
    cols = axis_profiles(lefts, tile_w, "linear", None, overlap)
    row_fades = [*fade_starts(tops, tile_h, overlap), height]
    col_fades = [*fade_starts(lefts, tile_w, overlap), width]
    one_tile = make_plan(
        width_px=tile_w,
        height_px=tile_h,
        tile_width_px=tile_w,
        tile_height_px=tile_h,
        overlap_px=0,
        compression=c,
    )
    # [B, 4, rows, W]: weighted RGB and weight of the rows the next tile row still adds to
    below: Tensor | None = None
    for top, (fade, next_fade) in zip(tops, itertools.pairwise(row_fades), strict=True):
        if latent.drop_above(top // c):
            return_freed_memory()
        above, below = below, None
        right: Tensor | None = None  # [B, 4, tile_h, cols]: the columns the next tile still adds to
        for left, (col_fade, next_col_fade) in zip(lefts, itertools.pairwise(col_fades), strict=True):
            cells = latent.read(top // c, (top + tile_h) // c, left // c, (left + tile_w) // c)
            image = autoencoder.decode(cells).float()
            if reference is not None:
                region = reference(top, top + tile_h, left, left + tile_w).to(image)
                image = reference_correct(image, one_tile, region, sigma=sigma).clamp(0, 1)
            weight = (rows[top][:, None] * cols[left][None, :]).to(image)
            block = torch.cat([image * weight, weight.expand(batch, 1, -1, -1)], dim=1)
            if right is not None:
                block[..., col_fade - left : col_fade - left + right.shape[-1]] += right
            done = block[..., col_fade - left : next_col_fade - left]
            right = block[..., next_col_fade - left :]
            if above is not None:
                done[:, :, fade - top : fade - top + above.shape[-2]] += above[..., col_fade:next_col_fade]
            if next_fade < height:
                if below is None:  # the rows above are read column by column before they are overwritten
                    carried = top + tile_h - next_fade
                    reuse = above is not None and above.shape[-2] == carried
                    below = above if reuse else done.new_empty(batch, 4, carried, width)
                below[..., col_fade:next_col_fade] = done[:, :, next_fade - top :]
            finished = done[:, :, fade - top : next_fade - top]
            write(fade, col_fade, finished[:, :3] / finished[:, 3:])


def refine_image(
    image: np.ndarray,
    size: tuple[int, int],
    plan: TilePlan,
    autoencoder: Autoencoder,
    sample: Callable[[Tensor], Tensor],
    *,
    color_correct: bool = True,
) -> np.ndarray:
    """``image`` [h, w, 3] (uint8 or uint16) refined at ``size`` = (height, width) px, same dtype.

    The image enlarged to ``size`` is encoded in tiles to ``plan``'s canvas (padding mirrored);
    ``sample`` turns that latent into the refined canvas latent (the run path: ``guided`` refines it
    as its guide and pulls every tile toward it, other methods start from it and may paint the canvas
    over it: ``run(canvas_only=True)``); the canvas is decoded in tiles, colour-corrected
    against the enlarged input unless ``color_correct`` is False, and cut to ``size``.
    """
    height, width = size
    if plan.height_px < height or plan.width_px < width:
        raise RefineError(f"The plan ({plan.width_px}×{plan.height_px} px) is smaller than the output.")
    pixels = enlarged(image, height, width)
    # the canvas in bands of the decode's tile-row stride, handed over to the decode (LatentRows)
    tiling = _tiling(plan.canvas_height, plan.canvas_width, autoencoder)
    stride = tiling.tile_height - tiling.overlap
    bands = [band.clone() for band in sample(encode_tiled(autoencoder, pixels, plan)).split(stride, dim=-2)]
    return_freed_memory()  # the sampler's noise and buffers, before the decode's peak
    peak = float(np.iinfo(image.dtype).max)
    out = np.empty((height, width, 3), image.dtype)

    def write(top: int, left: int, block: Tensor) -> None:
        kept = block[0, :, : max(0, height - top), : max(0, width - left)]
        values = (kept.permute(1, 2, 0).clamp(0, 1) * peak).round().cpu().numpy()
        out[top : top + kept.shape[1], left : left + kept.shape[2]] = values.astype(image.dtype)

    # the enlarged input carries no detail finer than about the enlargement: only that band is corrected
    sigma = max(4.0, 2.0 * height / image.shape[0])
    decode_tiled(autoencoder, bands, write, pixels if color_correct else None, sigma)
    return out
