"""Seam lab: procedural scenes full of what breaks tiling, with text prompts and an object counter.

Scenes are parameter sets sampled with a seeded generator and rendered at ANY size (all geometry is
in canvas-relative units), so the very same scene can be a 64 px training crop and a 1024 px benchmark
canvas. Kinds: skies (day/night gradients), linear gradients, metal-like shading with anisotropic
specular bands, repeating textures (stripes / checks / dots). Optional vignette. Countable objects
(one sun, one moon, one tree) have colours reserved for them (no background uses yellow, near-white
or leaf green), so `count_objects` can find them by colour + connected components and the benchmark
can measure how often tiling duplicates them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from temporal_tiling.errors import UserInputError

KINDS = ("sky", "gradient", "metal", "texture")
PATTERNS = ("stripes", "checks", "dots")
OBJECTS = ("sun", "moon", "tree")

# Background palette: deliberately without yellow, near-white and leaf green (reserved for objects).
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.15, 0.15),
    "blue": (0.15, 0.30, 0.85),
    "navy": (0.05, 0.08, 0.30),
    "teal": (0.05, 0.55, 0.55),
    "purple": (0.45, 0.15, 0.65),
    "pink": (0.95, 0.55, 0.70),
    "grey": (0.50, 0.50, 0.52),
    "black": (0.05, 0.05, 0.07),
    "cyan": (0.30, 0.80, 0.90),
    "magenta": (0.80, 0.10, 0.60),
}
COLOR_NAMES = tuple(PALETTE)
_RGB = torch.tensor(list(PALETTE.values()))
_DAY_TOP = ("blue", "navy", "cyan", "purple")
_DAY_BOTTOM = ("cyan", "pink", "red", "magenta", "blue")
_NIGHT_TOP = ("black", "navy")
_NIGHT_BOTTOM = ("purple", "navy", "teal", "blue")

SUN_RGB = (1.00, 0.86, 0.20)
MOON_RGB = (0.92, 0.94, 1.00)
LEAF_RGB = (0.12, 0.45, 0.15)
TRUNK_RGB = (0.40, 0.25, 0.10)
HIGHLIGHT_RGB = (0.97, 0.97, 0.95)


class SceneError(UserInputError):
    """Bad arguments to the scene generator (sizes, counts)."""


@dataclass(frozen=True)
class Scenes:
    """A batch of B scene parameter sets (every field is a tensor with leading dim B)."""

    kind: Tensor  # long, index into KINDS
    night: Tensor  # bool (sky only)
    color1: Tensor  # long palette index (top / start / base / first texture colour)
    color2: Tensor  # long palette index (bottom / end / highlight tint / second texture colour)
    rgb1: Tensor  # [B, 3] jittered colour 1
    rgb2: Tensor  # [B, 3] jittered colour 2
    angle: Tensor  # radians: gradient / band / stripe direction
    pattern: Tensor  # long, index into PATTERNS
    freq: Tensor  # texture cycles per shorter canvas side
    sharp: Tensor  # texture edge sharpness (sigmoid gain), soft enough for an 8x autoencoder
    band_pos: Tensor  # [B, 3] specular band centres (shorter-side units)
    band_width: Tensor  # [B, 3]
    band_amp: Tensor  # [B, 3]
    gamma: Tensor  # sky gradient curvature
    vignette: Tensor  # 0 = none, else darkening strength
    present: Tensor  # [B, 3] bool per OBJECTS
    obj_xy: Tensor  # [B, 3, 2] canvas-relative centre (x, y) per object
    obj_r: Tensor  # [B, 3] radius in shorter-side units

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def __getitem__(self, index: int | slice | Tensor) -> Scenes:
        if isinstance(index, int):
            index = slice(index, index + 1)
        return Scenes(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @property
    def prompts(self) -> list[str]:
        """One short English prompt per scene: colours, kind, objects and their place."""
        return [_prompt(self, i) for i in range(len(self))]

    def expected_counts(self) -> dict[str, Tensor]:
        """How many of each object the scene really contains (0 or 1), for the duplication rate."""
        return {name: self.present[:, j].long() for j, name in enumerate(OBJECTS)}


def _pick(names: tuple[str, ...], n: int, g: torch.Generator) -> Tensor:
    idx = torch.tensor([COLOR_NAMES.index(c) for c in names])
    return idx[torch.randint(len(names), (n,), generator=g)]


def _u(n: int, lo: float, hi: float, g: torch.Generator, *shape: int) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, *shape, generator=g)


def sample_scenes(n: int, seed: int = 0, kinds: tuple[str, ...] | None = None) -> Scenes:
    """Sample `n` scenes deterministically from `seed` (same seed -> same scenes on every machine)."""
    if n < 1:
        raise SceneError(f"need at least one scene, got n={n}")
    kinds = kinds or KINDS
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise SceneError(f"unknown scene kind(s) {bad}; choose from {KINDS}")
    g = torch.Generator().manual_seed(int(seed))
    kind_ids = torch.tensor([KINDS.index(k) for k in kinds])
    kind = kind_ids[torch.randint(len(kinds), (n,), generator=g)]
    is_sky = kind == 0
    night = is_sky & (torch.rand(n, generator=g) < 0.4)

    c1 = torch.randint(len(COLOR_NAMES), (n,), generator=g)
    c2 = (c1 + torch.randint(1, len(COLOR_NAMES), (n,), generator=g)) % len(COLOR_NAMES)
    c1 = torch.where(is_sky, torch.where(night, _pick(_NIGHT_TOP, n, g), _pick(_DAY_TOP, n, g)), c1)
    sky_bottom = torch.where(night, _pick(_NIGHT_BOTTOM, n, g), _pick(_DAY_BOTTOM, n, g))
    sky_bottom = torch.where(sky_bottom == c1, (sky_bottom + 1) % len(COLOR_NAMES), sky_bottom)
    c2 = torch.where(is_sky, sky_bottom, c2)
    jitter = lambda: 0.06 * (torch.rand(n, 3, generator=g) - 0.5)  # noqa: E731
    rgb1 = (_RGB[c1] + jitter()).clamp(0, 1)
    rgb2 = (_RGB[c2] + jitter()).clamp(0, 1)

    # Objects: sun by day, moon by night, trees under skies; rarer on the other kinds.
    p_obj = torch.rand(n, 3, generator=g)
    sun = torch.where(is_sky, ~night & (p_obj[:, 0] < 0.75), (kind == 1) & (p_obj[:, 0] < 0.25))
    moon = torch.where(is_sky, night & (p_obj[:, 1] < 0.75), (kind == 1) & ~sun & (p_obj[:, 1] < 0.15))
    tree = is_sky & (p_obj[:, 2] < 0.4)
    xy_sky = torch.stack([_u(n, 0.15, 0.85, g), _u(n, 0.15, 0.42, g)], -1)
    xy_tree = torch.stack([_u(n, 0.15, 0.85, g), _u(n, 0.58, 0.75, g)], -1)
    obj_xy = torch.stack([xy_sky, xy_sky, xy_tree], 1)
    obj_r = torch.stack([_u(n, 0.08, 0.14, g), _u(n, 0.07, 0.12, g), _u(n, 0.09, 0.14, g)], 1)

    return Scenes(
        kind=kind,
        night=night,
        color1=c1,
        color2=c2,
        rgb1=rgb1,
        rgb2=rgb2,
        angle=_u(n, 0.0, math.pi, g),
        pattern=torch.randint(len(PATTERNS), (n,), generator=g),
        freq=_u(n, 2.0, 7.0, g),
        sharp=_u(n, 2.0, 6.0, g),
        band_pos=_u(n, -0.2, 1.2, g, 3),
        band_width=_u(n, 0.04, 0.25, g, 3),
        band_amp=_u(n, 0.2, 0.8, g, 3),
        gamma=_u(n, 0.6, 1.6, g),
        vignette=torch.where(torch.rand(n, generator=g) < 0.3, _u(n, 0.3, 0.7, g), torch.zeros(n)),
        present=torch.stack([sun, moon, tree], 1),
        obj_xy=obj_xy,
        obj_r=obj_r,
    )


def _grid(height: int, width: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pixel-centre coordinates: canvas-relative (u, v) in [0, 1] and shorter-side units (a, b)."""
    y = (torch.arange(height, dtype=dtype) + 0.5).view(1, height, 1)
    x = (torch.arange(width, dtype=dtype) + 0.5).view(1, 1, width)
    m = float(min(height, width))
    return x / width, y / height, x / m, y / m


def _col(rgb: Tensor) -> Tensor:
    return rgb.view(-1, 3, 1, 1)


def _background(s: Scenes, height: int, width: int) -> Tensor:
    u, v, a, b = _grid(height, width, torch.float32)
    ang = s.angle.view(-1, 1, 1)
    cos, sin = torch.cos(ang), torch.sin(ang)
    c1, c2 = _col(s.rgb1), _col(s.rgb2)

    # Sky: vertical gradient with a curved horizon falloff.
    t_sky = (v.expand(len(s), height, width) ** s.gamma.view(-1, 1, 1)).unsqueeze(1)
    sky = c1 + (c2 - c1) * t_sky
    # Linear gradient across the canvas at any angle (spans exactly 0..1 over the canvas).
    proj = (u - 0.5) * cos + (v - 0.5) * sin
    half = 0.5 * (cos.abs() + sin.abs())
    t_grad = ((proj / half + 1) / 2).clamp(0, 1).unsqueeze(1)
    grad = c1 + (c2 - c1) * t_grad
    # Metal: diffuse ramp across the grain plus anisotropic specular bands along it.
    w = a * cos + b * sin
    across = -a * sin + b * cos
    diffuse = (0.55 + 0.35 * torch.cos(2.2 * across + 3 * ang)).unsqueeze(1)
    bands = (
        s.band_amp.view(-1, 3, 1, 1)
        * torch.exp(
            -(((w.unsqueeze(1) - s.band_pos.view(-1, 3, 1, 1)) / s.band_width.view(-1, 3, 1, 1)) ** 2)
        )
    ).sum(1, keepdim=True)
    spec = bands.clamp(max=1.0)
    tint = 0.7 * torch.tensor(HIGHLIGHT_RGB).view(1, 3, 1, 1) + 0.3 * c2
    metal = c1 * diffuse * (1 - spec) + tint * spec
    # Repeating textures at random frequency, with soft (anti-aliased) edges.
    f = s.freq.view(-1, 1, 1)
    k = s.sharp.view(-1, 1, 1)
    phase_w = 2 * math.pi * f * w
    phase_x = 2 * math.pi * f * across
    stripes = torch.sigmoid(k * torch.sin(phase_w))
    checks = torch.sigmoid(k * torch.sin(phase_w) * torch.sin(phase_x) * 2)
    fw, fx = torch.frac(f * w) - 0.5, torch.frac(f * across) - 0.5
    dots = torch.sigmoid(k * 4 * (0.3 - torch.sqrt(fw**2 + fx**2)))
    pat = torch.stack([stripes, checks, dots], 1)  # [B, 3, H, W]
    t_tex = pat.gather(1, s.pattern.view(-1, 1, 1, 1).expand(-1, 1, height, width))
    texture = c1 + (c2 - c1) * t_tex

    layers = torch.stack([sky, grad, metal, texture], 1)  # [B, K, 3, H, W]
    return layers.gather(1, s.kind.view(-1, 1, 1, 1, 1).expand(-1, 1, 3, height, width)).squeeze(1)


def _disc(
    s: Scenes, j: int, a: Tensor, b: Tensor, height: int, width: int, soft: float
) -> tuple[Tensor, Tensor]:
    """Soft disc alpha [B,1,H,W] of object j; centre canvas-relative, radius in shorter-side units."""
    m = float(min(height, width))
    cx = (s.obj_xy[:, j, 0] * width / m).view(-1, 1, 1)
    cy = (s.obj_xy[:, j, 1] * height / m).view(-1, 1, 1)
    d = torch.sqrt((a - cx) ** 2 + (b - cy) ** 2)
    r = s.obj_r[:, j].view(-1, 1, 1)
    return torch.sigmoid((r - d) / soft).unsqueeze(1), (d - r).clamp(min=0).unsqueeze(1) / r.unsqueeze(1)


def render(scenes: Scenes, height: int, width: int) -> Tensor:
    """Render scenes as images [B, 3, height, width] in [0, 1]; any size, same scene geometry."""
    if height < 8 or width < 8:
        raise SceneError(f"render size must be at least 8x8 px, got {width}x{height}")
    img = _background(scenes, height, width)
    _, _, a, b = _grid(height, width, torch.float32)
    soft = 0.6 / min(height, width) + 0.004  # about one pixel of anti-aliasing at any size
    pres = scenes.present.float().view(-1, 3, 1, 1, 1)

    sun, sun_out = _disc(scenes, 0, a, b, height, width, soft)
    glow = 0.45 * torch.exp(-((sun_out / 0.7) ** 2)) * (sun_out > 0)
    img = torch.lerp(img, _col(torch.tensor(SUN_RGB)), (torch.maximum(sun, glow) * pres[:, 0]))
    moon, _ = _disc(scenes, 1, a, b, height, width, soft)
    img = torch.lerp(img, _col(torch.tensor(MOON_RGB)), moon * pres[:, 1])

    canopy, _ = _disc(scenes, 2, a, b, height, width, soft)
    m = float(min(height, width))
    cx = (scenes.obj_xy[:, 2, 0] * width / m).view(-1, 1, 1)
    cy = (scenes.obj_xy[:, 2, 1] * height / m).view(-1, 1, 1)
    half = 0.18 * scenes.obj_r[:, 2].view(-1, 1, 1)
    trunk = (torch.sigmoid((half - (a - cx).abs()) / soft) * torch.sigmoid((b - cy) / soft)).unsqueeze(1)
    img = torch.lerp(img, _col(torch.tensor(TRUNK_RGB)), trunk * pres[:, 2])
    img = torch.lerp(img, _col(torch.tensor(LEAF_RGB)), canopy * pres[:, 2])

    u, v, _, _ = _grid(height, width, torch.float32)
    r2 = ((u - 0.5) ** 2 + (v - 0.5) ** 2) * 2  # 1.0 in the corners
    img = img * (1 - scenes.vignette.view(-1, 1, 1, 1) * r2.unsqueeze(1))
    return img.clamp(0, 1)


def random_crops(images: Tensor, size: int, g: torch.Generator) -> Tensor:
    """One random size x size crop per image (tile-like views of a larger scene)."""
    _, _, h, w = images.shape
    if size > min(h, w):
        raise SceneError(f"crop {size} px is larger than the image {w}x{h}")
    ys = torch.randint(h - size + 1, (len(images),), generator=g).tolist()
    xs = torch.randint(w - size + 1, (len(images),), generator=g).tolist()
    return torch.stack([im[:, y : y + size, x : x + size] for im, y, x in zip(images, ys, xs, strict=True)])


def _place(xy: Tensor) -> str:
    col = ("left", "center", "right")[min(int(xy[0] * 3), 2)]
    row = ("top", "middle", "bottom")[min(int(xy[1] * 3), 2)]
    if row == "middle":
        return "in the center" if col == "center" else f"at the {col}"
    return f"at {row} {col}" if col != "center" else f"at the {row}"


def _direction(angle: float) -> str:
    deg = math.degrees(angle) % 180
    if deg < 22.5 or deg >= 157.5:
        return "horizontal"
    if 67.5 <= deg < 112.5:
        return "vertical"
    return "diagonal"


def _prompt(s: Scenes, i: int) -> str:
    n1, n2 = COLOR_NAMES[int(s.color1[i])], COLOR_NAMES[int(s.color2[i])]
    kind = KINDS[int(s.kind[i])]
    # angle is the direction the value CHANGES along; stripes/bands run across it.
    across = _direction(float(s.angle[i]) + math.pi / 2)
    if kind == "sky":
        text = f"a {n1} to {n2} {'night ' if bool(s.night[i]) else ''}sky"
    elif kind == "gradient":
        text = f"a {_direction(float(s.angle[i]))} gradient from {n1} to {n2}"
    elif kind == "metal":
        text = f"{n1} brushed metal with {across} highlights"
    else:
        pattern = PATTERNS[int(s.pattern[i])]
        size = "fine" if float(s.freq[i]) > 4.5 else "wide"
        text = f"{size} {n1} and {n2} {pattern}"
        if pattern == "stripes":
            text = f"{size} {across} {n1} and {n2} stripes"
    objs = [f"one {name} {_place(s.obj_xy[i, j])}" for j, name in enumerate(OBJECTS) if bool(s.present[i, j])]
    if objs:
        text += " with " + " and ".join(objs)
    if float(s.vignette[i]) > 0:
        text += ", dark vignette"
    return text


def prompt_vocabulary() -> list[str]:
    """Every word the prompt generator can emit (for the word-level tokenizer)."""
    words = set(COLOR_NAMES) | set(KINDS) | set(PATTERNS) | set(OBJECTS)
    words |= set(
        [
            "a",
            "to",
            "night",
            "from",
            "brushed",
            "with",
            "highlights",
            "fine",
            "wide",
            "and",
            "one",
            "at",
            "the",
            "in",
            "top",
            "middle",
            "bottom",
            "left",
            "center",
            "right",
            "horizontal",
            "vertical",
            "diagonal",
            "dark",
            "vignette",
            ",",
            "sky",
            "gradient",
            "metal",
        ]
    )
    return sorted(words)


# ----------------------------------------------------------------------------- object counting
# Sizes relative to the image's shorter side, so a 64 px crop and a 512×256 canvas are judged alike.
_BLUR = 0.008  # Gaussian sigma of the second, softened look at the colours (speckled objects)
_CLOSE = 0.025  # closing kernel: joins an object's fragments and fills its speckle holes
_MIN_DIAMETER = 0.02  # the smallest object counted: a disc this wide (and 12 px)
_MIN_FILL, _MAX_ELONGATION = 0.6, 4.0  # of the ellipse with the component's second moments
_MIN_EDGE = 4.0  # CIELAB change per pixel across the outline: a glow that fades into the sky is no object


def object_masks(images: Tensor) -> dict[str, Tensor]:
    """Colour masks [B,1,H,W] of the reserved object colours (HSV thresholds, hue in radians)."""
    hsv = kornia.color.rgb_to_hsv(images.clamp(0, 1))
    h, s, v = hsv[:, 0:1] * 180 / math.pi, hsv[:, 1:2], hsv[:, 2:3]
    return {
        "sun": (h > 36) & (h < 66) & (s > 0.45) & (v > 0.7),
        "moon": (s < 0.2) & (v > 0.82),
        "tree": (h > 90) & (h < 155) & (s > 0.4) & (v > 0.2) & (v < 0.7),
    }


def connected_labels(mask: Tensor) -> Tensor:
    """8-connected component labels [B,1,H,W] (0 = background) by max-label propagation.

    Same algorithm as kornia.contrib.connected_components, but it stops as soon as the labels stop
    changing instead of running a fixed iteration count: discs converge in ~diameter iterations.
    """
    h, w = mask.shape[-2:]
    m = mask.float()
    labels = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w) * m
    while True:
        grown = F.max_pool2d(labels, 3, stride=1, padding=1) * m
        if torch.equal(grown, labels):
            return labels
        labels = grown


def _odd(pixels: float) -> int:
    return 2 * max(1, round(pixels / 2)) + 1


def _object_candidates(images: Tensor) -> dict[str, Tensor]:
    """Per object kind, the reserved colour seen sharp or softened, its fragments joined (closing)."""
    short = min(images.shape[-2:])
    sigma = max(_BLUR * short, 0.3)
    size = _odd(5 * sigma)
    soft = kornia.filters.gaussian_blur2d(images, (size, size), (sigma, sigma), border_type="replicate")
    sharp_masks, soft_masks = object_masks(images), object_masks(soft)
    kernel = torch.ones(_odd(_CLOSE * short), _odd(_CLOSE * short))
    return {
        name: kornia.morphology.closing((sharp_masks[name] | soft_masks[name]).float(), kernel) > 0.5
        for name in sharp_masks
    }


def _count_components(mask: Tensor, edges: Tensor) -> Tensor:
    """Count the blob-like components of a [B,1,H,W] bool mask that have an outline.

    Shape from second moments (rotation-free): a component is a blob when it is no more elongated than
    _MAX_ELONGATION and fills at least _MIN_FILL of the ellipse with its moments (a sun cut in half by the
    image edge is still a blob, a stripe or a ring is not). Its outline is the mean of `edges`
    [B,1,H,W] within 2 px of its border.
    """
    b, _, h, w = mask.shape
    min_area = max(12.0, math.pi * (_MIN_DIAMETER * min(h, w) / 2) ** 2)
    labels = connected_labels(mask)
    ys = torch.arange(h, dtype=torch.float64).view(h, 1).expand(h, w).reshape(-1)
    xs = torch.arange(w, dtype=torch.float64).view(1, w).expand(h, w).reshape(-1)
    counts = []
    for lab_image, edge in zip(labels.view(b, -1), edges, strict=True):  # loop over images, not pixels
        ids, inv, area = torch.unique(lab_image, return_inverse=True, return_counts=True)
        sums = torch.zeros(len(ids), 5, dtype=torch.float64).index_add_(
            0, inv, torch.stack([xs, ys, xs * xs, ys * ys, xs * ys], 1)
        ) / area.unsqueeze(1)
        mx, my, mxx, myy, mxy = sums.unbind(1)
        covariance = torch.stack([mxx - mx * mx, mxy - mx * my, mxy - mx * my, myy - my * my], 1)
        minor, major = torch.linalg.eigvalsh(covariance.view(-1, 2, 2) + torch.eye(2) / 12).unbind(1)
        elongation = (major / minor).sqrt()
        fill = area / (4 * math.pi * (major * minor).sqrt())
        blob = (ids > 0) & (area >= min_area) & (fill >= _MIN_FILL) & (elongation <= _MAX_ELONGATION)
        if not blob.any():
            counts.append(0)
            continue
        inside = (lab_image.view(1, 1, h, w) == ids[blob].view(-1, 1, 1, 1)).float()
        outline = F.max_pool2d(inside, 5, stride=1, padding=2) + F.max_pool2d(-inside, 5, stride=1, padding=2)
        sharpness = (outline * edge).sum((-2, -1)) / outline.sum((-2, -1))
        counts.append(int((sharpness >= _MIN_EDGE).sum()))
    return torch.tensor(counts)


def count_objects(images: Tensor) -> dict[str, Tensor]:
    """Count suns, moons and tree canopies per image [B,3,H,W] in [0,1], as a person would.

    An object is a blob of its reserved colour (seen sharp or slightly blurred, so a speckled moon is
    one moon) at least 2 % of the shorter side across, blob-like (at most 4 times longer than wide and
    filling 60 % of its moment ellipse, at any angle, so a smeared sun counts and specular bands,
    stripes and rings do not), with an outline: the colour changes by at least 4
    CIELAB units per pixel across it (a warm glow fading into a pink sky is not a sun).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise SceneError(f"count_objects expects images [B,3,H,W], got {tuple(images.shape)}")
    images = images.float().clamp(0, 1)
    gradient = kornia.filters.spatial_gradient(kornia.color.rgb_to_lab(images), normalized=True)
    edges = gradient.square().sum((1, 2)).sqrt().unsqueeze(1)  # CIELAB change per pixel
    return {name: _count_components(m, edges) for name, m in _object_candidates(images).items()}


def duplicated_object_rate(images: Tensor, scenes: Scenes) -> float:
    """Fraction of (image, object) pairs where the prompt says "one X" but more than one X is found."""
    counts = count_objects(images)
    expected = scenes.expected_counts()
    dup = torch.stack([(expected[k] == 1) & (counts[k] > 1) for k in OBJECTS])
    wanted = torch.stack([expected[k] == 1 for k in OBJECTS])
    return float(dup.sum()) / max(int(wanted.sum()), 1)
