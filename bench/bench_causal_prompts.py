"""Causal mode with tile prompts: which pull of the global context meets the tile-prompt goals.

Run from the repository root: ``python -m bench.bench_causal_prompts`` (about 20 min per model on a shared
2-core machine, one torch thread; ``--model DIR`` for another SANA folder). Writes
``bench/results/causal_prompts[_<model>].json`` and ``.md`` and ``docs/causal_prompts[_<model>].jpg`` (and its
tile-row zoom ``..._zoom.jpg``); its stdout is ``causal_prompts[_<model>].log``.

Protocol: ``bench_tile_prompts``'s (512×256 px, 4×2 tiles, 20 steps, cfg 4.5, BCLA, its four prompts,
seed = prompt index) plus four held-out prompts (:data:`HELD_OUT`, seeds 4-7) that were not looked at
while the default was chosen. Every row is causal with a global context whose guide is the whole-scene
pass of the whole prompt and whose BCLA seed is 1; the rows differ in the context's pull toward that guide
(:data:`PULLS`) and in whether the tile the prompt puts the object in hears the object's words ("tile
prompts": the run's prompt is the scene alone, the told tile hears "<scene>, <object words>" at σ ≥ 0.5,
the default) or every tile hears the whole prompt. Objects: suns / moons / trees counted by
``seamlab.count_objects`` on the canvas and on the guide; seams: the Quality Metrics verdict; layout:
the canvas downscaled to the guide vs the guide (PSNR); detail: mean |L* − its 2 px Gaussian blur| (the
high band the pull leaves to the tile), against the run without pull.

Time (:func:`timed_pairs`): per prompt, in the same process and in turn (order alternating with the
seed), the pairs "held pull" without/with tile prompts (the tile prompts' overhead) and "no pull"/"held
pull" without tile prompts (what the held pull costs every causal run), CPU seconds (``process_time``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import kornia
import torch
from PIL import Image

from bench.bench_guide_first import bench_model, count_named_objects, make_plans, scores, whole_scene
from bench.bench_tile_prompts import FIGURE_LABEL_PX, SCENES, figure, object_cells
from temporal_tiling.bcla import BCLAConfig
from temporal_tiling.context import ContextSettings
from temporal_tiling.metrics import to_lab
from temporal_tiling.options import EMBEDDED_MODEL
from temporal_tiling.pipeline import generate
from temporal_tiling.tile_prompts import TilePrompts, encode_tile_prompts, tile_texts

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = (
    # (whole prompt, scene prompt, tile number, the object's words): chosen before any run, not tuned on
    ("a navy to magenta sky with one sun at top left", "a navy to magenta sky", 1, "one sun at top left"),
    ("a black to teal night sky with one moon at top left", "a black to teal night sky", 1,
     "one moon at top left"),
    ("a cyan to blue sky with one sun at bottom right", "a cyan to blue sky", 8, "one sun at bottom right"),
    ("a black to purple night sky with one moon at bottom left", "a black to purple night sky", 5,
     "one moon at bottom left"),
)  # fmt: skip
PROMPT_SETS = {"bench": SCENES, "held-out": HELD_OUT}
PULLS = {
    "no pull": dict(skip_residual=0.0, stats=0.0, skip_power=3.0),
    "decaying pull": dict(skip_residual=1.0, stats=0.5, skip_power=3.0),
    "held skip only": dict(skip_residual=1.0, stats=0.0, skip_power=0.0),
    "held pull": dict(skip_residual=1.0, stats=0.5, skip_power=0.0),
}
"""The global context's pull toward the guide: none (the former default), DemoFusion's decaying skip
residual (power 3) with statistics, the held skip residual alone, and guided's held pull (skip residual 1
held to the last step, statistics 0.5)."""
VARIANTS = (
    "no pull",
    "no pull + tile prompts",
    "decaying pull + tile prompts",
    "held skip only + tile prompts",
    "held pull",
    "held pull + tile prompts",
    "held pull + tile prompts, σ ≥ 0.7",
)
SHOWN = ("guide", "no pull", "no pull + tile prompts", "held pull", "held pull + tile prompts")


def run_variant(name: str, model, plan, scene: tuple, seed: int, guide: torch.Tensor):
    """Causal ``name`` (a :data:`PULLS` key, `` + tile prompts`` for the told tile's words, ``, σ ≥ s`` for
    another tile-prompt σ than the default) on ``plan``."""
    whole, scene_prompt, number, words = scene
    options: dict = dict(steps=20, cfg=4.5, shift=model.flow_shift, seed=seed, cache_config=BCLAConfig())
    pull, tiled, sigma = name.partition(" + tile prompts")
    if sigma:
        options["tile_prompt_sigma"] = float(sigma.split()[-1])
    if tiled:
        texts = tile_texts(plan, TilePrompts({number: words}), scene_prompt)
        options["tile_prompts"] = encode_tile_prompts(texts, model.encode_prompt)
    context = ContextSettings(guide, bcla_seed=1.0, seed=seed, **PULLS[pull])
    positive = model.encode_prompt(scene_prompt if tiled else whole)
    return generate(
        plan,
        model.transformer,
        positive,
        model.encode_prompt(""),
        method="causal",
        context=context,
        **options,
    )


def detail(image: torch.Tensor) -> float:
    """Mean |L* − L* blurred by a 2 px Gaussian|: the fine band a low-band pull leaves to the tile."""
    lightness = to_lab(image)[:, :1]
    return float((lightness - kornia.filters.gaussian_blur2d(lightness, (13, 13), (2.0, 2.0))).abs().mean())


def guide_of(model, plan, prompt: str, seed: int) -> torch.Tensor:
    """The whole-scene pass of ``prompt`` (the context's guide and the objects' reference)."""
    return whole_scene(model, {"tiles": plan}, model.encode_prompt(prompt), model.encode_prompt(""), seed)


def run_all(model, plan, images: dict) -> list[dict]:
    rows = []
    for prompt_set, scenes in PROMPT_SETS.items():
        for offset, scene in enumerate(scenes):
            seed = offset + (len(SCENES) if prompt_set == "held-out" else 0)
            whole = scene[0]
            guide = whole_scene(
                model, {"tiles": plan}, model.encode_prompt(whole), model.encode_prompt(""), seed
            )
            images[seed, "guide"] = guide_image = model.decode(guide)
            for name in VARIANTS:
                cpu = time.process_time()
                result = run_variant(name, model, plan, scene, seed, guide)
                cpu_seconds = time.process_time() - cpu
                image = images[seed, name] = model.decode(result.canvas)
                row = {
                    "set": prompt_set, "prompt": whole, "seed": seed, "variant": name,
                    "cpu_seconds": cpu_seconds, "detail": detail(image),
                    **scores(image, model.decode(result.tiles), plan, guide_image),
                    "objects": count_named_objects(image, whole),
                    "guide_objects": count_named_objects(guide_image, whole),
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


TIMED_PAIRS = (("held pull", "held pull + tile prompts"), ("no pull", "held pull"))


def timed_pairs(model, plan) -> list[dict]:
    """Each of :data:`TIMED_PAIRS` on every prompt, in turn (order alternating with the seed): CPU s."""
    rows = []
    scenes = [*SCENES, *HELD_OUT]
    for seed, scene in enumerate(scenes):
        guide = whole_scene(
            model, {"tiles": plan}, model.encode_prompt(scene[0]), model.encode_prompt(""), seed
        )
        for pair in TIMED_PAIRS:
            cpu = {}
            for name in pair if seed % 2 == 0 else pair[::-1]:
                start = time.process_time()
                run_variant(name, model, plan, scene, seed, guide)
                cpu[name] = time.process_time() - start
            rows.append({"seed": seed, "without": pair[0], "with": pair[1], **{k: cpu[v] for k, v in
                         zip(("cpu_without", "cpu_with"), pair, strict=True)}})  # fmt: skip
            print(json.dumps({"timed": rows[-1]}), flush=True)
    return rows


def markdown(rows: list[dict], timing: list[dict], model_name: str) -> str:
    lines = [
        "# Causal mode with tile prompts (`python -m bench.bench_causal_prompts`)",
        "",
        f"{model_name}, 512×256 px, 4×2 tiles, 20 steps, cfg 4.5, BCLA seeded by the whole-scene pass of the "
        "whole prompt (the guide); tile prompts at σ ≥ 0.5. Objects: the suns / moons / trees on the canvas, "
        "the guide's in brackets. Detail: mean |L* − blur| (fine band), relative to `no pull` of the same "
        "prompt. One torch thread on a shared 2-core machine.",
    ]
    for prompt_set in PROMPT_SETS:
        lines += [
            "",
            f"**{prompt_set} prompts**",
            "",
            "| variant | objects (guide) per prompt | more than the guide | seamless verdicts "
            "| layout PSNR dB | line jump | detail vs no pull | CPU s per canvas |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        mine = [r for r in rows if r["set"] == prompt_set]
        base = {r["seed"]: r["detail"] for r in mine if r["variant"] == "no pull"}
        for name in VARIANTS:
            runs = [r for r in mine if r["variant"] == name]
            detail = statistics.mean(r["detail"] / base[r["seed"]] for r in runs)
            cpu = sum(r["cpu_seconds"] for r in runs) / len(runs)
            lines.append(f"| {name} | {object_cells(runs)} | {detail:.2f}× | {cpu:.1f} |")
    lines += [
        "",
        f"Time, CPU s (pairs in one process, order alternating, {len(timing) // len(TIMED_PAIRS)} prompts; "
        "median and range of the pairs' ratios):",
        "",
        "| without → with | CPU s without | CPU s with | overhead, median (range) |",
        "| --- | --- | --- | --- |",
    ]
    for without, with_ in TIMED_PAIRS:
        pairs = [t for t in timing if t["without"] == without and t["with"] == with_]
        ratio = [t["cpu_with"] / t["cpu_without"] - 1 for t in pairs]
        lines.append(
            f"| {without} → {with_} | {statistics.median(t['cpu_without'] for t in pairs):.2f} "
            f"| {statistics.median(t['cpu_with'] for t in pairs):.2f} "
            f"| {statistics.median(ratio):+.1%} ({min(ratio):+.1%} to {max(ratio):+.1%}) |"
        )
    lines += ["", "Verdicts:", "", "| set | prompt | variant | verdict |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['set']} | {r['seed']} | {r['variant']} | {r['verdict']} |" for r in rows]
    return "\n".join(lines) + "\n"


def zoom(path: Path, seeds: int, width: int = 256, scale: int = 3) -> Path:
    """The tile-row seam of every canvas in ``bench_tile_prompts.figure``'s picture at ``path``, enlarged
    ``scale``×: rows 44-84 of each 128 px high canvas (the canvas's 88-168 px, around the tile rows'
    overlap at 112-144 px). Written beside it as ``<name>_zoom.jpg``."""
    height, label, band = width // 2, FIGURE_LABEL_PX, (44, 84)
    picture = Image.open(path)
    out = Image.new("RGB", (picture.width * scale, seeds * (band[1] - band[0]) * scale), "white")
    for seed in range(seeds):
        top = seed * (height + label) + label
        strip = picture.crop((0, top + band[0], picture.width, top + band[1]))
        enlarged = strip.resize((strip.width * scale, strip.height * scale), Image.NEAREST)
        out.paste(enlarged, (0, seed * enlarged.height))
    target = path.with_name(f"{path.stem}_zoom.jpg")
    out.save(target, quality=90)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL, help="a diffusers SANA folder")
    args = parser.parse_args()
    model, suffix, model_name = bench_model(args.model)
    plan = make_plans(model.compression)["tiles"]
    images: dict = {}
    with torch.no_grad():
        rows = run_all(model, plan, images)
        timing = timed_pairs(model, plan)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "timing": timing}
    (args.out / f"causal_prompts{suffix}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"causal_prompts{suffix}.md").write_text(markdown(rows, timing, model_name))
    picture = ROOT / "docs" / f"causal_prompts{suffix}.jpg"
    figure(images, picture, shown=SHOWN)
    zoom(picture, len(SCENES) + len(HELD_OUT))


if __name__ == "__main__":
    main()
