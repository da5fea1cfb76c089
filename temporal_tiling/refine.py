"""Refine an image: a photo (or any picture) enlarged and repainted by the run path, at any size.

The user gives an image and a scale; every size the model needs is made here: the canvas is the
output rounded up to whole latent cells and tokens (the padding mirrors the image and is cut off
again), tiles and overlaps are rounded the same way. The enlarged image is the guide: encoded to the
canvas latent, it is what ``guided`` refines (its statistics seed the BCLA cache and pull every tile
toward it), or the img2img start of the other methods.

Memory holds at 16K: the image never goes through the autoencoder at once. Encoding reads the
enlarged image one autoencoder tile at a time straight from the input (bicubic per tile, so the
enlarged image never exists whole either) and blends the tiles' latents over their overlap; decoding
runs one row of tiles at a time, blends it with the row above over the overlap and hands every
finished pixel row to the output, so the working set is one row of tiles plus the canvas latent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .blend import axis_profiles, reference_correct
from .errors import UserInputError
from .plan import TilePlan, make_plan

PixelSource = Callable[[int, int, int, int], Tensor]
"""``(top, bottom, left, right)`` px of the canvas -> that region [1, 3, h, w] in [0, 1]."""
RowWriter = Callable[[int, Tensor], None]
"""``(top, rows [3, h, W] in [0, 1])``: finished pixel rows of the canvas, top to bottom."""
ROWS_PER_WRITE = 64
"""Finished rows are normalised and handed over this many at a time: the temporaries of the output's
conversion stay a few MiB even 16K wide."""


class RefineError(UserInputError):
    """An image or setting the refine cannot use; the message says what to change."""


@dataclass(frozen=True)
class Autoencoder:
    """The model's autoencoder as the refine drives it, one tile at a time."""

    encode: Callable[[Tensor], Tensor]
    """[1, 3, H, W] in [0, 1] -> latent [1, C, H / compression, W / compression] (the model's space)."""
    decode: Callable[[Tensor], Tensor]
    """latent -> [1, 3, H, W] in [0, 1]."""
    compression: int
    tile_px: int = 512
    """Pixels per autoencoder tile side (its activations are the working memory): 512 px is 64 cells
    of an 8× autoencoder and 16 of SANA's 32× DC-AE."""
    overlap_px: int = 64
    """Pixels neighbouring autoencoder tiles share and cross-fade over, so no seam comes from the
    autoencoder's own tiling."""


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def output_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """(height, width) px of the refined image: exactly round(scale × side)."""
    if not (math.isfinite(scale) and scale >= 1.0):
        raise RefineError(f"scale must be 1 or more (1 refines at the input's size), got {scale}.")
    return max(1, round(scale * height)), max(1, round(scale * width))


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
    """The tile plan of an output of ``height`` × ``width`` px: the canvas rounded up to whole tokens
    (``compression × patch`` px), the tile (px, at most the canvas) and the overlap rounded to tokens
    (the overlap at most the tile less one token), so any image size and tile works."""
    token = compression * patch
    canvas_h, canvas_w = round_up(height, token), round_up(width, token)
    tile_h, tile_w = (min(canvas, max(token, round(tile / token) * token)) for canvas in (canvas_h, canvas_w))
    overlap = min(round(overlap / token) * token, min(tile_h, tile_w) - token)
    limit = {} if max_tiles is None else {"max_tiles": max_tiles}
    return make_plan(
        width_px=canvas_w,
        height_px=canvas_h,
        tile_width_px=tile_w,
        tile_height_px=tile_h,
        overlap_px=overlap,
        compression=compression,
        seed=seed,
        fit="shift",
        **limit,
    )


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


def _tiling(plan: TilePlan, autoencoder: Autoencoder) -> TilePlan:
    """The autoencoder's own tiles over ``plan``'s canvas, in latent cells (raster order)."""
    c = autoencoder.compression
    height, width = plan.canvas_height, plan.canvas_width
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
    tiling, c = _tiling(plan, autoencoder), autoencoder.compression
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
    return canvas / total


def decode_tiled(
    autoencoder: Autoencoder,
    latent: Tensor,
    write: RowWriter,
    reference: PixelSource | None = None,
    sigma: float = 4.0,
) -> None:
    """Decode the canvas ``latent`` [1, C, H, W] one row of autoencoder tiles at a time, cross-faded
    over the overlaps, and ``write`` each band of finished pixel rows. With a ``reference``, every
    decoded tile's low frequencies (Gaussian, ``sigma`` px) are replaced by the reference's
    (:func:`blend.reference_correct`): colour correction against the input."""
    c = autoencoder.compression
    height, width = latent.shape[-2:]
    whole = make_plan(
        width_px=width,
        height_px=height,
        tile_width_px=width,
        tile_height_px=height,
        overlap_px=0,
        compression=1,
    )
    tiling = _tiling(whole, autoencoder)
    tile_h, tile_w = tiling.tile_height * c, tiling.tile_width * c
    rows = axis_profiles([t.y * c for t in tiling.tiles], tile_h, "linear", None)
    cols = axis_profiles([t.x * c for t in tiling.tiles], tile_w, "linear", None)
    one_tile = make_plan(
        width_px=tile_w,
        height_px=tile_h,
        tile_width_px=tile_w,
        tile_height_px=tile_h,
        overlap_px=0,
        compression=c,
    )
    pending: tuple[int, Tensor] | None = None  # (top px, [4, rows, W]: weighted RGB and weight)
    for top in sorted({t.y for t in tiling.tiles}):
        band = torch.zeros(4, tile_h, width * c)
        for tile in (t for t in tiling.tiles if t.y == top):
            (y0, y1), (x0, x1) = ((s.start, s.stop) for s in tile.slices)
            image = autoencoder.decode(latent[..., y0:y1, x0:x1]).float().cpu()
            if reference is not None:
                region = reference(y0 * c, y1 * c, x0 * c, x1 * c)
                image = reference_correct(image, one_tile, region, sigma=sigma).clamp(0, 1)
            weight = rows[y0 * c][:, None] * cols[x0 * c][None, :]
            band[:3, :, x0 * c : x1 * c] += image[0] * weight
            band[3, :, x0 * c : x1 * c] += weight
        if pending is not None:
            above_top, above = pending
            shared = above_top + above.shape[1] - top * c
            band[:, :shared] += above[:, above.shape[1] - shared :]
            _emit(write, above_top, above[:, : above.shape[1] - shared])
        pending = (top * c, band)
    if pending is not None:
        _emit(write, *pending)


def _emit(write: RowWriter, top: int, rows: Tensor) -> None:
    """Weighted RGB + weight rows [4, h, W] normalised and written, :data:`ROWS_PER_WRITE` at a time."""
    for start in range(0, rows.shape[1], ROWS_PER_WRITE):
        chunk = rows[:, start : start + ROWS_PER_WRITE]
        write(top + start, chunk[:3] / chunk[3:])


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
    as its guide, other methods start from it); the canvas is decoded in tiles, colour-corrected
    against the enlarged input unless ``color_correct`` is False, and cut to ``size``.
    """
    height, width = size
    if plan.height_px < height or plan.width_px < width:
        raise RefineError(f"The plan ({plan.width_px}×{plan.height_px} px) is smaller than the output.")
    pixels = enlarged(image, height, width)
    canvas = sample(encode_tiled(autoencoder, pixels, plan))
    peak = float(np.iinfo(image.dtype).max)
    out = np.empty((height, width, 3), image.dtype)

    def write(top: int, rows: Tensor) -> None:
        kept = rows[:, : max(0, height - top), :width]
        values = (kept.permute(1, 2, 0).clamp(0, 1) * peak).round().numpy()
        out[top : top + kept.shape[1]] = values.astype(image.dtype)

    # the enlarged input carries no detail finer than about the enlargement: only that band is corrected
    sigma = max(4.0, 2.0 * height / image.shape[0])
    decode_tiled(autoencoder, canvas, write, pixels if color_correct else None, sigma)
    return out
