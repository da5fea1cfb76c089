"""Split images into a plan's tile batch and stitch tile batches back: blending and colour correction in
pixel space, on decoded tiles.

Tile batches are ``[T*B, C, h, w]``, tile-major (index ``t*B + b``), tiles in plan order. Everything
runs batched on the tiles' device; loops go over tiles or pyramid levels, never pixels.

Blenders (all exact on consistent tiles, i.e. tiles cut from one image; ``poisson`` only where
tiles overlap — across a zero-overlap edge no tile holds the gradient, so it takes its neighbours'):
- ``none``: paste in plan order, later tiles win (the baseline).
- ``feather``: per-tile weights ramped (linear or cosine) across each overlap with a neighbour,
  normalised, so the weights are a partition of unity.
- ``laplacian``: Burt–Adelson multi-band blending of the feather masks (kornia's pyramid kernel):
  coarse bands blend over a wide zone (hides colour drift), fine bands over a narrow one.
- ``poisson``: gradient-domain stitch: gradients come from the tiles (feather-weighted where they
  overlap), the image is the screened-Poisson solution anchored to the feather result by a small data
  term, solved with a DCT (FFT-based, Neumann boundary).

Colour correction runs on the tiles before blending:
- ``apt``: per-channel mean/std matching in Lab (Reinhard-style colour transfer), each tile matched to
  what is already placed, in plan order, so drift does not accumulate; then one common offset restores
  the tiles' mean colour (no single tile's cast wins).
- ``reference``: each tile's low frequencies (Gaussian blur) replaced by those of a global
  reference image (e.g. the low-res pass) resized to the canvas.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import kornia
import torch
import torch.nn.functional as F
from kornia.geometry.transform import pyrdown, pyrup
from torch import Tensor

from .errors import UserInputError
from .options import DEFAULT_RAMP, DEFAULT_STITCH
from .plan import TilePlan

METHODS: tuple[str, ...] = ("none", "feather", "laplacian", "poisson")
RAMPS: tuple[str, ...] = ("linear", "cosine")
COLORS: tuple[str, ...] = ("none", "apt", "reference")

STRIP_PX = 8
"""Width of the strips compared across a zero-overlap edge by ``apt`` (the metrics' band width)."""
MIN_MATCH_PX = 64
"""Fewest pixels whose statistics ``apt`` trusts; with fewer a tile is left as it is."""
GAIN_LIMITS = (0.5, 2.0)
"""``apt`` never scales a channel's contrast by more than this (flat overlaps have std ≈ 0)."""

Rect = tuple[int, int, int, int]


class BlendError(UserInputError):
    """Inputs that cannot be split or stitched; the message says what to change."""


# --- geometry --------------------------------------------------------------------------------------
def _scale(plan: TilePlan, scale: int | None) -> int:
    return plan.compression if scale is None else scale


def _rects(plan: TilePlan, scale: int) -> list[Rect]:
    """(y, x, h, w) of every tile in pixels (or latent cells for ``scale=1``), plan order."""
    return [(t.y * scale, t.x * scale, t.height * scale, t.width * scale) for t in plan.tiles]


def _ramp(length: int, kind: str, device: torch.device) -> Tensor:
    """Rising weights over ``length`` px, strictly inside (0, 1) so no pixel ever gets zero weight."""
    u = (torch.arange(length, device=device, dtype=torch.float32) + 0.5) / length
    return u if kind == "linear" else 0.5 - 0.5 * torch.cos(math.pi * u)


def fade_starts(starts: list[int], size: int, overlap: int | None = None) -> list[int]:
    """Where each tile's weight begins along one axis (sorted starts): its start, or with ``overlap``,
    for a tile shifted inward past it (the last one of ``fit="shift"``), ``overlap`` px before the
    previous tile's end."""
    starts = sorted(set(starts))
    if overlap is None:
        return starts
    return [starts[0], *(max(s, before + size - overlap) for before, s in itertools.pairwise(starts))]


def axis_profiles(
    starts: list[int], size: int, kind: str, device: torch.device, overlap: int | None = None
) -> dict[int, Tensor]:
    """1-D feather profile of a tile at each start along one axis: ramps over the overlaps with the
    previous and next tile on that axis (edge tiles shifted inward overlap more, so lengths differ).
    With ``overlap``, a tile fades in only from its :func:`fade_starts` entry (zero weight before):
    every cross-fade spans at most ``overlap`` px, so a streaming consumer waits on no more rows."""
    starts = sorted(set(starts))
    fades = fade_starts(starts, size, overlap)
    profiles = {}
    for i, s in enumerate(starts):
        profile = torch.ones(size, device=device)
        silent = fades[i] - s
        before = starts[i - 1] + size - fades[i] if i > 0 else 0
        after = s + size - fades[i + 1] if i + 1 < len(starts) else 0
        profile[:silent] = 0
        if before > 0:
            profile[silent : silent + before] *= _ramp(before, kind, device)
        if after > 0:
            profile[size - after :] *= _ramp(after, kind, device).flip(0)
        profiles[s] = profile
    return profiles


def feather_weights(
    plan: TilePlan,
    ramp: str = DEFAULT_RAMP,
    *,
    scale: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Normalised feather weights [T, 1, h, w]: summed over the tiles they are 1 at every canvas pixel."""
    s = _scale(plan, scale)
    rects = _rects(plan, s)
    h, w = rects[0][2], rects[0][3]
    rows = axis_profiles([r[0] for r in rects], h, ramp, device)
    cols = axis_profiles([r[1] for r in rects], w, ramp, device)
    weights = torch.stack([rows[y][:, None] * cols[x][None, :] for y, x, _, _ in rects])[:, None]
    total = torch.zeros(plan.canvas_height * s, plan.canvas_width * s, device=device)
    for (y, x, _, _), weight in zip(rects, weights, strict=True):
        total[y : y + h, x : x + w] += weight[0]
    return torch.stack(
        [wt / total[y : y + h, x : x + w] for (y, x, _, _), wt in zip(rects, weights, strict=True)]
    )


# --- split -----------------------------------------------------------------------------------------
def split_tiles(image: Tensor, plan: TilePlan, *, scale: int | None = None) -> Tensor:
    """Cut an image [B, C, H, W] into the plan's tile batch [T*B, C, h, w] (tile-major, plan order).

    ``scale`` is pixels per plan cell: the plan's compression for decoded images (default), 1 for
    latents. An image larger than the plan is cut from its top-left plan-sized area.
    """
    s = _scale(plan, scale)
    _check_image(image, plan, s)
    crops = [image[..., y : y + h, x : x + w] for y, x, h, w in _rects(plan, s)]
    return torch.stack(crops).flatten(0, 1)


# --- stitch ----------------------------------------------------------------------------------------
def stitch(
    tiles: Tensor,
    plan: TilePlan,
    method: str = DEFAULT_STITCH,
    ramp: str = DEFAULT_RAMP,
    color: str = "none",
    reference: Tensor | None = None,
    *,
    scale: int | None = None,
    levels: int = 4,
    data_weight: float = 1e-3,
) -> Tensor:
    """Stitch a tile batch [T*B, C, h, w] into the canvas [B, C, H, W] on the tiles' device.

    ``method``: none | feather | laplacian | poisson; ``ramp``: linear | cosine (feather masks, also
    used by laplacian and poisson); ``color``: none | apt | reference (``reference`` [1 or B, 3, h', w']
    of the canvas' aspect ratio). ``levels``: pyramid levels of ``laplacian`` (fewer if tile positions
    are not divisible enough). ``data_weight``: poisson's pull towards the feather result; colour drift
    is spread over about ``1 / sqrt(data_weight)`` px around each seam.
    """
    for name, value, allowed in (
        ("method", method, METHODS),
        ("ramp", ramp, RAMPS),
        ("color", color, COLORS),
    ):
        if value not in allowed:
            raise BlendError(f"Unknown {name} {value!r}; choose one of {', '.join(allowed)}.")
    s = _scale(plan, scale)
    batch = plan.check_tile_batch(tiles, s)
    work = tiles if tiles.dtype in (torch.float32, torch.float64) else tiles.float()
    if color != "none" and tiles.shape[1] != 3:
        raise BlendError(
            f"color correction needs RGB tiles (3 channels), got {tiles.shape[1]}; use color='none'."
        )
    if color == "apt":
        work = apt_correct(work, plan, scale=s)
    elif color == "reference":
        if reference is None:
            raise BlendError(
                "color='reference' needs a reference image (e.g. the low-res pass); connect one."
            )
        work = reference_correct(work, plan, reference, scale=s)
    grid = work.reshape(len(plan), batch, *work.shape[1:])
    rects = _rects(plan, s)
    canvas = (batch, work.shape[1], plan.canvas_height * s, plan.canvas_width * s)
    if method == "none":
        out = work.new_zeros(canvas)
        for (y, x, h, w), tile in zip(rects, grid, strict=True):
            out[..., y : y + h, x : x + w] = tile
        return out.to(tiles.dtype)
    weights = feather_weights(plan, ramp, scale=s, device=work.device).to(work.dtype)
    out = _feather(grid, rects, weights, canvas)
    if method == "laplacian":
        out = _laplacian(grid, rects, weights, out, _pyramid_depth(rects, canvas, levels))
    elif method == "poisson":
        out = _poisson(grid, rects, weights, out, data_weight)
    return out.to(tiles.dtype)


def _feather(grid: Tensor, rects: list[Rect], weights: Tensor, canvas: tuple[int, ...]) -> Tensor:
    out = grid.new_zeros(canvas)
    for (y, x, h, w), tile, weight in zip(rects, grid, weights, strict=True):
        out[..., y : y + h, x : x + w] += weight * tile
    return out


def _pyramid_depth(rects: list[Rect], canvas: tuple[int, ...], levels: int) -> int:
    """Downsamplings K such that every tile origin/size and the canvas are divisible by 2^K (pyramid
    grids then line up exactly) and the tile is at least as large as the margin it needs."""
    common = 0
    for value in [v for r in rects for v in r] + list(canvas[-2:]):
        common = math.gcd(common, value)
    depth = min(max(levels - 1, 0), (common & -common).bit_length() - 1)
    while depth > 0 and _margin(depth) > min(rects[0][2], rects[0][3]):
        depth -= 1
    return depth


def _margin(depth: int) -> int:
    """Context around a tile so its pyramid equals the canvas pyramid wherever its mask reaches
    (the 5-tap kernels have compact support ≲ 3·2^K px; mask spread and band support both count)."""
    return 8 * 2**depth


def _gaussian_pyramid(x: Tensor, depth: int) -> list[Tensor]:
    levels = [x]
    for _ in range(depth):
        levels.append(pyrdown(levels[-1]))
    return levels


def _laplacian(grid: Tensor, rects: list[Rect], weights: Tensor, base: Tensor, depth: int) -> Tensor:
    """Multi-band blend. Each tile's pyramid is built on the tile plus a margin of the feather result
    (aligned to the coarsest grid), so on consistent tiles every band equals the canvas' own band and
    the collapse is exact. Tiles go through the pyramid in batches (mask as an extra channel)."""
    if depth == 0:
        return base
    batch, channels, height, width = base.shape
    margin = _margin(depth)
    h, w = rects[0][2], rects[0][3]
    rh, rw = min(h + 2 * margin, height), min(w + 2 * margin, width)
    origins = [
        (min(max(y - margin, 0), height - rh), min(max(x - margin, 0), width - rw)) for y, x, _, _ in rects
    ]
    num = [base.new_zeros(batch, channels, height >> k, width >> k) for k in range(depth + 1)]
    den = [base.new_zeros(1, 1, height >> k, width >> k) for k in range(depth + 1)]
    per_chunk = max(1, 2**21 // (batch * (channels + 1) * rh * rw))  # small batches stay in cache: faster
    for first in range(0, len(rects), per_chunk):
        chunk = range(first, min(first + per_chunk, len(rects)))
        stack = base.new_zeros(len(chunk), batch, channels + 1, rh, rw)
        for i, t in enumerate(chunk):
            (y, x, _, _), (ry, rx) = rects[t], origins[t]
            stack[i, :, :channels] = base[..., ry : ry + rh, rx : rx + rw]
            stack[i, :, :channels, y - ry : y - ry + h, x - rx : x - rx + w] = grid[t]
            stack[i, :, channels:, y - ry : y - ry + h, x - rx : x - rx + w] = weights[t]
        gauss = _gaussian_pyramid(stack.flatten(0, 1), depth)
        for k in range(depth + 1):
            level = gauss[k].unflatten(0, (len(chunk), batch))
            mask = level[:, :1, channels:]
            band = level[:, :, :channels]
            if k < depth:
                band = band - pyrup(gauss[k + 1][:, :channels]).unflatten(0, (len(chunk), batch))
            for i, t in enumerate(chunk):
                ry, rx = origins[t]
                place = (..., slice(ry >> k, (ry + rh) >> k), slice(rx >> k, (rx + rw) >> k))
                num[k][place] += mask[i] * band[i]
                den[k][place] += mask[i]
    out = num[depth] / den[depth].clamp_min(1e-12)
    for k in range(depth - 1, -1, -1):
        out = pyrup(out) + num[k] / den[k].clamp_min(1e-12)
    return out


def _fill_missing(g: Tensor, dim: int) -> Tensor:
    """Edges no single tile spans (a zero-overlap seam) get the mean of their neighbours along ``dim``."""
    missing = torch.isnan(g)
    if not missing.any():
        return g
    before = torch.cat(
        [torch.full_like(g.narrow(dim, 0, 1), math.nan), g.narrow(dim, 0, g.shape[dim] - 1)], dim
    )
    after = torch.cat(
        [g.narrow(dim, 1, g.shape[dim] - 1), torch.full_like(g.narrow(dim, 0, 1), math.nan)], dim
    )
    filled = torch.nanmean(torch.stack([before, after]), 0).nan_to_num(0.0)
    return torch.where(missing, filled, g)


def _poisson(grid: Tensor, rects: list[Rect], weights: Tensor, base: Tensor, data_weight: float) -> Tensor:
    """Screened Poisson: argmin_u |∇u - g|² + λ|u - base|², g = feather-weighted tile gradients."""
    gx_num = base.new_zeros(*base.shape[:-1], base.shape[-1] - 1)
    gy_num = base.new_zeros(*base.shape[:-2], base.shape[-2] - 1, base.shape[-1])
    gx_den, gy_den = gx_num.new_zeros(1, 1, *gx_num.shape[-2:]), gy_num.new_zeros(1, 1, *gy_num.shape[-2:])
    for (y, x, h, w), tile, weight in zip(rects, grid, weights, strict=True):
        wx, wy = (weight[..., 1:] + weight[..., :-1]) / 2, (weight[..., 1:, :] + weight[..., :-1, :]) / 2
        gx_num[..., y : y + h, x : x + w - 1] += wx * (tile[..., 1:] - tile[..., :-1])
        gy_num[..., y : y + h - 1, x : x + w] += wy * (tile[..., 1:, :] - tile[..., :-1, :])
        gx_den[..., y : y + h, x : x + w - 1] += wx
        gy_den[..., y : y + h - 1, x : x + w] += wy
    nan = torch.tensor(math.nan, dtype=base.dtype, device=base.device)
    gx = _fill_missing(torch.where(gx_den > 0, gx_num / gx_den.clamp_min(1e-12), nan), -1)
    gy = _fill_missing(torch.where(gy_den > 0, gy_num / gy_den.clamp_min(1e-12), nan), -2)
    # Solve for the correction d = u - base: (λ - Δ) d = div(∇base - g); it is ~0 on consistent tiles.
    rx = F.pad((base[..., 1:] - base[..., :-1]) - gx, (1, 1))
    ry = F.pad((base[..., 1:, :] - base[..., :-1, :]) - gy, (0, 0, 1, 1))
    divergence = (rx[..., 1:] - rx[..., :-1]) + (ry[..., 1:, :] - ry[..., :-1, :])
    return base + screened_poisson(divergence, data_weight)


def _dct(x: Tensor, dim: int) -> Tensor:
    """Unnormalised DCT-II along ``dim`` from one real FFT of the same length (Makhoul 1980)."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    half = torch.fft.rfft(torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], -1))
    spectrum = torch.cat([half, half[..., 1 : n - n // 2].flip(-1).conj()], -1)  # V[n-k] = conj(V[k])
    k = torch.arange(n, device=x.device, dtype=x.dtype)
    return (spectrum * torch.exp(-0.5j * math.pi * k / n)).real.movedim(-1, dim)


def _idct(coefficients: Tensor, dim: int) -> Tensor:
    """Exact inverse of ``_dct``: the spectrum it rebuilds is Hermitian, so one inverse real FFT."""
    c = coefficients.movedim(dim, -1)
    n = c.shape[-1]
    m = n // 2 + 1
    k = torch.arange(m, device=c.device, dtype=c.dtype)
    mirrored = F.pad(c[..., n - m + 1 :].flip(-1), (1, 0))[..., :m]  # X[n - k] for k < m, X[n] = 0
    v = torch.fft.irfft(torch.exp(0.5j * math.pi * k / n) * torch.complex(c[..., :m], -mirrored), n)
    x = torch.empty_like(v)
    x[..., ::2], x[..., 1::2] = v[..., : (n + 1) // 2], v[..., (n + 1) // 2 :].flip(-1)
    return x.movedim(-1, dim)


def screened_poisson(rhs: Tensor, data_weight: float) -> Tensor:
    """Solve (λ - Δ) u = rhs on [..., H, W] with Neumann boundaries: the DCT-II diagonalises the
    Neumann Laplacian (eigenvalues 2 - 2 cos(πk/N) per axis), so the solve is two transforms."""
    height, width = rhs.shape[-2:]
    ky = torch.arange(height, device=rhs.device, dtype=rhs.dtype)
    kx = torch.arange(width, device=rhs.device, dtype=rhs.dtype)
    eigen = (2 - 2 * torch.cos(math.pi * ky / height))[:, None] + (2 - 2 * torch.cos(math.pi * kx / width))[
        None
    ]
    planes = rhs.reshape(-1, 1, height, width)
    solved = [_idct(_idct(_dct(_dct(p, -1), -2) / (eigen + data_weight), -2), -1) for p in planes]
    return torch.cat(solved).reshape(rhs.shape)  # plane by plane: the temporaries stay cache-sized


# --- colour ----------------------------------------------------------------------------------------
def _lab(rgb: Tensor) -> Tensor:
    return kornia.color.rgb_to_lab(rgb.clamp(0, 1))


def _masked_stats(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and std per batch element and channel of x [B, C, h, w] over a [h, w] bool mask."""
    values = x[..., mask]
    return values.mean(-1), values.std(-1, correction=0)


def apt_correct(tiles: Tensor, plan: TilePlan, *, scale: int | None = None) -> Tensor:
    """Match each tile's per-channel Lab mean/std to the already placed canvas, in plan order.

    Statistics come from the tile's overlap with placed pixels; with no overlap (zero-overlap plans)
    from the ``STRIP_PX`` strips on both sides of the shared edges (means only). Chained matching
    would make the first tile's cast everyone's, so at the end all tiles move by one common Lab
    offset that restores the mean colour of the tiles as generated: their casts average out, and a
    common shift leaves every matched seam matched.
    """
    s = _scale(plan, scale)
    batch = plan.check_tile_batch(tiles, s)
    grid = tiles.reshape(len(plan), batch, *tiles.shape[1:])
    height, width = plan.canvas_height * s, plan.canvas_width * s
    placed = tiles.new_zeros(batch, 3, height, width)
    have = torch.zeros(height, width, dtype=torch.bool, device=tiles.device)
    raw_mean, matched = tiles.new_zeros(batch, 3), []
    for (y, x, h, w), tile in zip(_rects(plan, s), grid, strict=True):
        lab = _lab(tile)
        raw_mean += lab.mean((-1, -2)) / len(plan)
        stats = _match_stats(lab, placed, have, (y, x, h, w))
        if stats is not None:
            (mu_s, sd_s), (mu_d, sd_d), same_pixels = stats
            gain = (sd_d / sd_s.clamp_min(1e-3)).clamp(*GAIN_LIMITS) if same_pixels else torch.ones_like(sd_s)
            lab = (lab - mu_s[..., None, None]) * gain[..., None, None] + mu_d[..., None, None]
        area = placed[..., y : y + h, x : x + w]
        known = have[y : y + h, x : x + w]
        area.copy_(torch.where(known, area, lab))
        known.fill_(True)
        matched.append(lab)
    shift = raw_mean - sum(lab.mean((-1, -2)) for lab in matched) / len(plan)
    return torch.stack([kornia.color.lab_to_rgb(lab + shift[..., None, None]) for lab in matched]).flatten(
        0, 1
    )


def _match_stats(lab: Tensor, placed: Tensor, have: Tensor, rect: Rect):
    """((tile mean, std), (placed mean, std), same_pixels) to match, or None when nothing is placed.

    ``same_pixels`` is False for strips across a zero-overlap edge: they hold different pixels, so
    only their means are comparable (matching std there amplifies texture differences)."""
    y, x, h, w = rect
    known = have[y : y + h, x : x + w]
    if int(known.sum()) >= MIN_MATCH_PX:
        return _masked_stats(lab, known), _masked_stats(placed[..., y : y + h, x : x + w], known), True
    # Zero overlap: compare the tile's border strip with the placed strip just across the edge.
    y0, x0 = max(y - STRIP_PX, 0), max(x - STRIP_PX, 0)
    y1, x1 = min(y + h + STRIP_PX, have.shape[0]), min(x + w + STRIP_PX, have.shape[1])
    inside = torch.zeros(y1 - y0, x1 - x0, dtype=torch.bool, device=have.device)
    inside[y - y0 : y - y0 + h, x - x0 : x - x0 + w] = True
    across = have[y0:y1, x0:x1] & ~inside
    if int(across.sum()) < MIN_MATCH_PX:
        return None
    near = F.max_pool2d(across[None, None].float(), 2 * STRIP_PX + 1, stride=1, padding=STRIP_PX)[0, 0] > 0
    strip = (near & inside)[y - y0 : y - y0 + h, x - x0 : x - x0 + w]
    return _masked_stats(lab, strip), _masked_stats(placed[..., y0:y1, x0:x1], across), False


def reference_correct(
    tiles: Tensor, plan: TilePlan, reference: Tensor, *, scale: int | None = None, sigma: float | None = None
) -> Tensor:
    """Replace each tile's low frequencies (Gaussian blur, ``sigma`` px) by the reference's.

    The swap is linear, so it is done on the RGB values directly (no Lab round trip: exact on
    consistent tiles and several times cheaper); it removes casts, gain and illumination drift alike.

    The reference is resized to the canvas; ``sigma`` defaults to twice its upscaling factor (at
    least 4 px): frequencies the reference cannot hold stay the tile's own.
    """
    s = _scale(plan, scale)
    batch = plan.check_tile_batch(tiles, s)
    height, width = plan.canvas_height * s, plan.canvas_width * s
    _check_reference(reference, batch, height, width, cell=s)
    upscale = height / reference.shape[-2]
    sigma = max(4.0, 2.0 * upscale) if sigma is None else sigma
    resized = F.interpolate(reference.to(tiles), size=(height, width), mode="bilinear", antialias=True)
    ref_tiles = split_tiles(resized.expand(batch, -1, -1, -1), plan, scale=s)
    blur = _low_pass(sigma, min(tiles.shape[-2:]))
    return tiles - blur(tiles) + blur(ref_tiles)


def _low_pass(sigma: float, size: int) -> Callable[[Tensor], Tensor]:
    """Gaussian blur of ``sigma`` px; large sigmas run on a 2^n-downsampled copy (same result to
    within the blur's own smoothness, far cheaper than a 100-tap kernel on a full tile)."""
    factor = 1
    while sigma / (factor * 2) >= 2.0 and size // (factor * 2) >= 16:
        factor *= 2
    small_sigma = sigma / factor
    kernel = min(2 * math.ceil(3 * small_sigma) + 1, 2 * (size // factor) - 1)

    def blur(x: Tensor) -> Tensor:
        small = F.avg_pool2d(x, factor) if factor > 1 else x
        small = kornia.filters.gaussian_blur2d(
            small, kernel, (small_sigma, small_sigma), border_type="reflect"
        )
        if factor == 1:
            return small
        return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)

    return blur


# --- input checks ----------------------------------------------------------------------------------
def _check_image(image: Tensor, plan: TilePlan, scale: int) -> None:
    if not isinstance(image, Tensor) or image.ndim != 4:
        raise BlendError(
            f"image must be a [B, C, H, W] tensor, got {getattr(image, 'shape', type(image))!r}."
        )
    height, width = plan.canvas_height * scale, plan.canvas_width * scale
    if image.shape[-2] < height or image.shape[-1] < width:
        raise BlendError(
            f"The image is {image.shape[-1]}×{image.shape[-2]} but the tile plan covers {width}×{height}; "
            "make the plan for this image's size (or resize the image)."
        )
    if image.is_floating_point() and torch.isnan(image).any():
        raise BlendError("The image contains NaN pixels; fix the upstream node before splitting.")


def _check_reference(reference: Tensor, batch: int, height: int, width: int, cell: int) -> None:
    """Refuse a reference that is not an RGB image of the canvas's aspect ratio. A reference rounded to
    whole latent cells (the sampler's whole-scene ``guide``: 19×13 cells for a 48×32-cell canvas) is off
    by up to one ``cell`` px on a side; that, or 1 %, is allowed."""
    if not isinstance(reference, Tensor) or reference.ndim != 4 or reference.shape[1] != 3:
        shape = getattr(reference, "shape", type(reference))
        raise BlendError(f"reference must be a [B, 3, H, W] RGB image, got {shape!r}.")
    if reference.shape[0] not in (1, batch):
        raise BlendError(
            f"reference batch is {reference.shape[0]} but the canvas batch is {batch}; give 1 or {batch}."
        )
    ref_h, ref_w = reference.shape[-2:]
    off_w, off_h = abs(ref_w - ref_h * width / height), abs(ref_h - ref_w * height / width)
    if off_w > max(cell, 0.01 * ref_w) and off_h > max(cell, 0.01 * ref_h):
        raise BlendError(
            f"The reference is {ref_w}×{ref_h} (aspect {ref_w / ref_h:.3f}) but the canvas is "
            f"{width}×{height} (aspect {width / height:.3f}); give a reference of the same aspect ratio."
        )
    if torch.isnan(reference).any():
        raise BlendError("The reference contains NaN pixels; fix the upstream node first.")
