"""Tile prompts against the whole prompt in every tile, on the embedded model, through the run path.

Run from the repository root: ``python -m bench.bench_tile_prompts`` (about 10 min on 2 free CPU cores,
one torch thread). Writes ``bench/results/tile_prompts.json``, ``bench/results/tile_prompts.md`` and
``docs/tile_prompts.png``.

Protocol. The quick start's canvas (512×256 px, 4×2 tiles, 32 px overlap, raster order: tile 1 is
top left, tile 4 top right), 20 steps, cfg 4.5, two prompts that ask for one object at one place,
seed = prompt index. "without": every tile hears the whole prompt (today's behaviour). "tile prompts":
the run's prompt is the scene alone (the sky) and only the tile where the prompt puts the object hears
its words (``combine = append``: "<scene>, <object words>"; ``replace``: the words alone); guided's
whole-scene pass hears "<scene>, <object words>". "automatic t" (AccDiffusion): the whole prompt, and
each tile drops the words whose cross-attention on the guide (one model call at σ = 0.5,
``word_attention``) stays below t × the word's peak in all of its cells; the tiles' texts go to the
log. Objects: the suns / moons the prompt names, counted
by ``seamlab.count_objects`` on the canvas and on the run's guide (causal: the whole-scene pass of the
whole prompt that seeds its BCLA cache; guided: its own whole-scene pass). Seams: the Quality Metrics
verdict; layout: the canvas downscaled to the guide vs the guide (PSNR); time: seconds per canvas
(a shared machine: compare within a row pair, not across runs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from bench.bench_guide_first import bench_model, count_named_objects, make_plans, scores, whole_scene
from temporal_tiling.bcla import BCLAConfig
from temporal_tiling.context import ContextSettings
from temporal_tiling.options import EMBEDDED_MODEL
from temporal_tiling.pipeline import GuideFirst, generate
from temporal_tiling.tile_prompts import TilePrompts, encode_tile_prompts, tile_texts, whole_scene_text
from temporal_tiling.word_maps import attention_of_words, tile_words

ROOT = Path(__file__).resolve().parents[1]
SCENES = (
    # (whole prompt, scene prompt, tile number, the object's words)
    ("a blue to pink sky with one sun at top left", "a blue to pink sky", 1, "one sun at top left"),
    ("a navy blue night sky with one moon at top right", "a navy blue night sky", 4, "one moon at top right"),
)
GUIDE_DENOISES = (0.3, 0.5, 0.7)
THRESHOLDS = (0.5, 0.7, 0.9)
"""Automatic tile prompts: a tile keeps a word whose guide attention reaches this share of its peak."""
VARIANTS = (
    "causal",
    "causal + tile prompts",
    "causal + tile prompts (replace)",
    *(f"guided {d}{extra}" for d in GUIDE_DENOISES for extra in ("", " + tile prompts")),
    *(f"guided 0.7 + automatic {t}" for t in THRESHOLDS),
)
SHOWN = (
    "guide",
    "causal",
    "causal + tile prompts",
    "guided 0.7",
    "guided 0.7 + tile prompts",
    "guided 0.7 + automatic 0.9",
)


def run_variant(name: str, model, plan, scene: tuple, seed: int, guide: torch.Tensor):
    """``name`` of :data:`VARIANTS` on ``plan``: its result and the guide its objects are held against."""
    whole, scene_prompt, number, words = scene
    tiled = "tile prompts" in name
    combine = "replace" if "replace" in name else "append"
    prompts = TilePrompts({number: words}, combine=combine)
    positive = model.encode_prompt(scene_prompt if tiled else whole)
    options: dict = dict(steps=20, cfg=4.5, shift=model.flow_shift, seed=seed, cache_config=BCLAConfig())
    if tiled:
        options["tile_prompts"] = encode_tile_prompts(
            tile_texts(plan, prompts, scene_prompt), model.encode_prompt
        )
    if "automatic" in name:  # the whole prompt; each tile drops the words the guide puts elsewhere
        positive = model.encode_prompt(whole)
        texts = automatic_texts(model, plan, whole, guide, float(name.split()[-1]), seed)
        options["tile_prompts"] = encode_tile_prompts(texts, model.encode_prompt)
        denoise = float(name.split()[1])
        options |= dict(method="guided", guide_first=GuideFirst(denoise=denoise), latent=guide)
    elif name.startswith("causal"):
        options |= dict(method="causal", context=ContextSettings(guide, bcla_seed=1.0, seed=seed))
    else:
        denoise = float(name.split()[1])
        options |= dict(method="guided", guide_first=GuideFirst(denoise=denoise))
        if tiled:
            options["guide_prompt"] = model.encode_prompt(whole_scene_text(prompts, scene_prompt))
    result = generate(plan, model.transformer, positive, model.encode_prompt(""), **options)
    return result, guide if result.guide is None else result.guide


def automatic_texts(
    model, plan, prompt: str, guide: torch.Tensor, threshold: float, seed: int
) -> dict[int, str]:
    """Each tile's words of ``prompt`` whose cross-attention on ``guide`` reaches it (tiles that keep
    every word are absent). The embedded model's tokenizer is word-level: text token 0 is the start
    token, token i the prompt's word i - 1."""
    words = prompt.lower().split()
    embeds = model.encode_prompt(prompt)
    assert embeds.shape[1] == len(words) + 1, "a word-level tokenizer (the embedded model) is assumed"
    maps = attention_of_words(model.transformer, guide, embeds, [-1, *range(len(words))], seed=seed)
    kept = tile_words(plan, maps, threshold)
    texts = {i: " ".join(words[w] for w in ws) for i, ws in kept.items() if len(ws) < len(words)}
    print(json.dumps({"threshold": threshold, "tile_texts": texts}), flush=True)
    return texts


def run_all(model, plan, images: dict) -> list[dict]:
    rows = []
    for seed, scene in enumerate(SCENES):
        whole = scene[0]
        empty = model.encode_prompt("")
        guide = whole_scene(model, {"tiles": plan}, model.encode_prompt(whole), empty, seed)
        images[seed, "guide"] = model.decode(guide)
        for name in VARIANTS:
            start = time.perf_counter()
            result, run_guide = run_variant(name, model, plan, scene, seed, guide)
            seconds = time.perf_counter() - start
            image, tiles = model.decode(result.canvas), model.decode(result.tiles)
            guide_image = model.decode(run_guide)
            images[seed, name] = image
            row = {
                "prompt": whole,
                "seed": seed,
                "variant": name,
                "seconds": seconds,
                **scores(image, tiles, plan, guide_image),
                "objects": count_named_objects(image, whole),
                "guide_objects": count_named_objects(guide_image, whole),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Tile prompts (`python -m bench.bench_tile_prompts`)",
        "",
        "Embedded model, 512×256 px, 4×2 tiles, 20 steps, cfg 4.5, BCLA, 2 prompts (seed = prompt index), "
        "one torch thread on a shared 2-core machine. Objects: the suns / moons the prompt names (it asks "
        "for one) on the canvas, the run's guide in brackets. Layout: the canvas downscaled to the guide "
        "vs the guide. Time overhead: against the row without tile prompts of the same method.",
        "",
        "| variant | objects (guide) per prompt | more than the guide | seamless verdicts | layout PSNR dB "
        "| line jump | s per canvas | time vs without |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    seconds = {name: sum(r["seconds"] for r in rows if r["variant"] == name) for name in VARIANTS}
    for name in VARIANTS:
        mine = [r for r in rows if r["variant"] == name]
        base = name.split(" + ")[0]
        overhead = f"{seconds[name] / seconds[base] - 1:+.0%}" if base != name else "—"
        count = len(mine)
        objects = ", ".join(f"{r['objects']} ({r['guide_objects']})" for r in mine)
        lines.append(
            f"| {name} | {objects} "
            f"| {sum(r['objects'] > r['guide_objects'] for r in mine)}/{count} "
            f"| {sum(r['seamless'] for r in mine)}/{count} "
            f"| {sum(r['guide_psnr'] for r in mine) / count:.1f} "
            f"| {sum(r['line_jump'] for r in mine) / count:.2f} "
            f"| {seconds[name] / count:.1f} | {overhead} |"
        )
    lines += ["", "Verdicts:", "", "| prompt | variant | verdict |", "| --- | --- | --- |"]
    lines += [f"| {r['seed']} | {r['variant']} | {r['verdict']} |" for r in rows]
    return "\n".join(lines) + "\n"


def figure(images: dict, path: Path, width: int = 256) -> None:
    """:data:`SHOWN` side by side, one row per prompt, each ``width`` px wide (2:1)."""
    height, label = width // 2, 16
    out = Image.new("RGB", (len(SHOWN) * (width + 6), len(SCENES) * (height + label)), "white")
    draw = ImageDraw.Draw(out)
    for seed in range(len(SCENES)):
        for i, name in enumerate(SHOWN):
            pixels = (images[seed, name][0].permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()
            x, y = i * (width + 6), seed * (height + label)
            out.paste(Image.fromarray(pixels).resize((width, height), Image.BICUBIC), (x, y + label))
            draw.text((x + 2, y + 2), f"prompt {seed}: {name}", fill="black")
    out.save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    model, _, _ = bench_model(EMBEDDED_MODEL)
    plan = make_plans(model.compression)["tiles"]
    images: dict = {}
    with torch.no_grad():
        rows = run_all(model, plan, images)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tile_prompts.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "tile_prompts.md").write_text(markdown(rows))
    figure(images, ROOT / "docs" / "tile_prompts.png")


if __name__ == "__main__":
    main()
