"""Guided's two ways to enlarge the whole-scene pass to the canvas, on an 8× and a 32× autoencoder.

Run from the repository root, one model and canvas per call (each adds its rows to the results and
re-renders the tables):
``python -m bench.bench_guide_upscale --model bench/models/seamlab-sana-f32 --canvas 1024x512``
(the embedded model at 512×256: about 3 min on 2 CPU cores, one torch thread). Writes
``bench/results/guide_upscale.{json,md}``, ``docs/guide_upscale_<model>_<canvas>.png`` and, one tile of
the last prompt at 2×, ``docs/guide_upscale_<model>_<canvas>_zoom.png``.

Protocol: ``bench_guide_first``'s prompts, seeds, plans (``make_plans``: tiles of at least 8 latent
cells), scores and whole-scene pass. Rows: the native one-pass render of the canvas, guided with the
latent enlargement (bilinear on the latent, the default) and guided with the pixel enlargement (decode,
bicubic, encode through the model's own autoencoder). The figure also shows the two enlargements of
the pass decoded as they are, before the tiles refine them: the tiles' starting point.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from bench.bench_guide_first import (
    PROMPTS,
    ROOT,
    bench_model,
    figure,
    make_plans,
    markdown,
    run_all,
    whole_scene,
)
from temporal_tiling.options import EMBEDDED_MODEL
from temporal_tiling.pipeline import GuideFirst, guide_plan, latent_upscale, pixel_upscale

NAMES = ("full", "guided, latent upscale", "guided, pixel upscale")
SHOWN = ("guide", "latent-upscaled pass", "pixel-upscaled pass", "full", *NAMES[1:])
RESULTS = ROOT / "bench" / "results" / "guide_upscale.json"


def canvas_size(text: str) -> tuple[int, int]:
    """``"1024x512"`` -> (1024, 512): width first, like the CLI's ``--width``/``--height``."""
    width, height = (int(n) for n in text.lower().split("x"))
    return width, height


def enlarged_passes(model, plans: dict, upscales: dict, images: dict) -> None:
    """Each prompt's whole-scene pass enlarged to the canvas by each of ``upscales`` and decoded, into
    ``images`` by (seed, "<name>-upscaled pass"): what the tiles start from."""
    plan = plans["tiles"]
    for seed, prompt in enumerate(PROMPTS):
        guide = whole_scene(model, plans, model.encode_prompt(prompt), model.encode_prompt(""), seed)
        for name, upscale in upscales.items():
            images[seed, f"{name}-upscaled pass"] = model.decode(
                upscale(guide, plan.canvas_height, plan.canvas_width)
            )


def zoom(images: dict, plan, path: Path, seed: int = len(PROMPTS) - 1, scale: int = 2) -> None:
    """One tile of ``plan`` (the first row's third, or its last) of prompt ``seed``, every variant of
    :data:`SHOWN` but the pass side by side, ``scale``× with nearest neighbours: where 32 px blocks show."""
    tile = next(t for t in plan.tiles if (t.row, t.col) == (0, min(2, plan.cols - 1)))
    c = plan.compression
    box = (tile.x * c, tile.y * c, (tile.x + tile.width) * c, (tile.y + tile.height) * c)
    size = ((box[2] - box[0]) * scale, (box[3] - box[1]) * scale)
    shown, label = SHOWN[1:], 16
    out = Image.new("RGB", (len(shown) * (size[0] + 6), size[1] + label), "white")
    draw = ImageDraw.Draw(out)
    for i, name in enumerate(shown):
        pixels = (images[seed, name][0].permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()
        crop = Image.fromarray(pixels).crop(box).resize(size, Image.NEAREST)
        out.paste(crop, (i * (size[0] + 6), label))
        draw.text((i * (size[0] + 6) + 2, 2), f"prompt {seed}: {name}, {scale}x", fill="black")
    out.save(path)


def group_title(row: dict) -> str:
    return f"{row['model']} ({row['compression']}× autoencoder), {row['canvas']}"


def mean(rows: list[dict], name: str, key: str) -> float:
    """``key`` of variant ``name`` averaged over the prompts."""
    return sum(r[key] for r in rows if r["method"] == name) / len(PROMPTS)


def summary(rows: list[dict]) -> str:
    """One line per model, canvas and upscale: the numbers the choice of a default rests on."""
    lines = [
        "| model, canvas | tiles (guide px) | upscale | layout PSNR dB | line jump (× native) "
        "| seamless verdicts | objects (more than guide) | s per canvas |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for title in dict.fromkeys(group_title(r) for r in rows):
        group = [r for r in rows if group_title(r) == title]
        native = mean(group, "full", "line_jump")
        for name in NAMES[1:]:
            picked = [r for r in group if r["method"] == name]
            more = sum(r["objects"] > r["guide_objects"] for r in picked)
            jump = mean(group, name, "line_jump")
            lines.append(
                f"| {title} | {group[0]['tiles']} | {name.removeprefix('guided, ')} "
                f"| {mean(group, name, 'guide_psnr'):.1f} | {jump:.2f} ({jump / native:.2f}×) "
                f"| {sum(r['seamless'] for r in picked)}/{len(PROMPTS)} "
                f"| {mean(group, name, 'objects'):.1f} ({more}/{len(PROMPTS)}) "
                f"| {mean(group, name, 'seconds'):.1f} |"
            )
    return "\n".join(lines)


def render(rows: list[dict]) -> str:
    """The results file: the summary, then ``bench_guide_first``'s tables for every model and canvas."""
    parts = [
        "# Guided: latent vs pixel enlargement of the whole-scene pass",
        "",
        "`python -m bench.bench_guide_upscale --model DIR --canvas WxH`. Layout: the canvas downscaled to"
        " the whole-scene pass vs that pass. Line jump: the plan-free detector (worst row/column boundary"
        " over its axis' median), in brackets over the native one-pass render of the same canvas."
        " Objects: the suns or moons the prompt names, and in brackets the prompts where the"
        " canvas has more than the pass. Means over 3 prompts (seed = prompt index), 20 steps, one torch"
        " thread; seconds include the pixel path's decode and encode.",
        "",
        summary(rows),
        "",
    ]
    for title in dict.fromkeys(group_title(r) for r in rows):
        group = [r for r in rows if group_title(r) == title]
        canvas = f"{group[0]['canvas']}, {group[0]['tiles']}"
        table = markdown(group, f"Model `{group[0]['model']}`", NAMES, title, canvas)
        parts.append(table.replace("# ", "## ", 1))
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL, help="a diffusers SANA folder")
    parser.add_argument("--canvas", type=canvas_size, default=(512, 256), metavar="WxH")
    args = parser.parse_args()
    model, _, _ = bench_model(args.model)
    width, height = args.canvas
    plans = make_plans(model.compression, width, height)
    upscales = {
        "latent": latent_upscale,
        "pixel": pixel_upscale(model.decode, model.encode, model.compression),
    }
    variants = {
        "full": ("full", {}),
        **{
            f"guided, {name} upscale": ("guided", {"guide_first": GuideFirst(upscale=upscale)})
            for name, upscale in upscales.items()
        },
    }
    images: dict = {}
    rows = run_all(model, plans, variants, images)
    enlarged_passes(model, plans, upscales, images)
    plan, guide = plans["tiles"], guide_plan(plans["tiles"])
    name = args.model.resolve().name
    tiles = (
        f"{plan.cols}×{plan.rows} tiles of {plan.tile_width_px}×{plan.tile_height_px} px "
        f"(guide {guide.width_px}×{guide.height_px})"
    )
    for row in rows:
        row.update(model=name, compression=model.compression, canvas=f"{width}×{height} px", tiles=tiles)
    kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    kept = [r for r in kept if (r["model"], r["canvas"]) != (name, rows[0]["canvas"])] + rows
    RESULTS.write_text(json.dumps(kept, indent=1) + "\n")
    RESULTS.with_suffix(".md").write_text(render(kept))
    figure(
        images,
        ROOT / "docs" / f"guide_upscale_{name}_{width}x{height}.png",
        SHOWN,
        width=min(width // 2, 384),
    )
    zoom(images, plan, ROOT / "docs" / f"guide_upscale_{name}_{width}x{height}_zoom.png")
    (ROOT / "out").mkdir(exist_ok=True)  # the decoded images, to crop and zoom without rerunning
    torch.save(images, ROOT / "out" / f"guide_upscale_{name}_{width}x{height}.pt")


if __name__ == "__main__":
    main()
