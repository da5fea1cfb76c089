"""Tile prompts against the whole prompt in every tile, on the embedded model, through the run path.

Run from the repository root: ``python -m bench.bench_tile_prompts`` (about 10 min on 2 CPU cores,
one torch thread; ``--model DIR`` for another SANA folder). Writes ``bench/results/tile_prompts[_<model>]``
``.json`` and ``.md`` and ``docs/tile_prompts[_<model>].jpg``; its stdout is ``tile_prompts.log``.
``--variants`` runs a subset of :data:`VARIANTS`, ``--prompts`` adds the held-out prompts
(:data:`HELD_OUT`), ``--timed-with`` the variant whose overhead is timed, ``--tag`` names the result files
(``tile_prompts_<tag>[_<model>]``).

Protocol. The quick start's canvas (512×256 px, 4×2 tiles, 32 px overlap, raster order: tile 1 is
top left, tile 4 top right, tile 5 bottom left), 20 steps, cfg 4.5, four prompts that ask for one object
at one place, seed = prompt index. "without": every tile hears the whole prompt (today's behaviour).
"tile prompts": the run's prompt is the scene alone (the sky) and only the tile where the prompt puts
the object hears its words (``combine = append``: "<scene>, <object words>"; ``replace``: the words
alone); guided's whole-scene pass hears "<scene>, <object words>". "σ ≥ s": the told tile hears its
words only at noise levels σ ≥ s (where the layout is placed) and the scene prompt below (the detail
steps), so it paints the sky it shares with its neighbours from the same words. "scene prompt": the
control, every tile hears the scene alone and no tile has words of its own: a seam that it shares
with "tile prompts" comes from the scene prompt, not from tiles hearing different words. "pull": causal
with guided's pull of each tile toward the guide (the global context's held low-band skip residual and
per-tile statistics, at guided's default strengths) on top of its BCLA seed. "automatic t"
(AccDiffusion): the whole prompt, and each tile keeps the words ``word_maps.tile_words`` gives it at
threshold t from the cross-attention on the run's guide (one model call at σ = 0.5), through the run
path's ``auto_tile_prompts`` as the CLI and the nodes use it; the tiles' texts go to the log; heard at
every step, or with ", σ ≥ s" the tile that paints an object hears its words at σ ≥ s and every tile the
words all tiles keep below s (``AutoTilePrompts.sigma``; the rows without it: 0); with ", quiet q" no
tile keeps a word whose map peaks under q times the average word's attention (``AutoTilePrompts.quiet``;
the rows without it: 0). Objects:
the suns / moons / trees the prompt names, counted by ``seamlab.count_objects`` on the canvas and on
the run's guide (causal: the whole-scene pass of the whole prompt that seeds its BCLA cache; guided: its
own whole-scene pass). Seams: the Quality Metrics verdict; layout: the canvas
downscaled to the guide vs the guide (PSNR); time: CPU seconds per canvas.

Time overhead (:func:`overhead`): in the same process, each method runs without and with tile prompts
in turn (the order alternating), ``--repeats`` times per prompt; the overhead is the median of the
pairs' ratios of CPU time (``time.process_time``, which another user's load on a shared machine barely
moves) and of wall time, each run timed from its text encodings to its finished latent. The model calls
of each run are counted, and the text encodings timed on their own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from bench.bench_guide_first import bench_model, count_named_objects, make_plans, scores, whole_scene
from temporal_tiling.bcla import BCLAConfig
from temporal_tiling.context import ContextSettings
from temporal_tiling.metrics import ciede2000, to_lab
from temporal_tiling.options import (
    DEFAULT_GUIDE_SKIP_POWER,
    DEFAULT_GUIDE_SKIP_RESIDUAL,
    DEFAULT_GUIDE_STATS,
    DEFAULT_WORD_SIGMA,
    EMBEDDED_MODEL,
)
from temporal_tiling.pipeline import GuideFirst, generate
from temporal_tiling.tile_prompts import TilePrompts, encode_tile_prompts, tile_texts, whole_scene_text
from temporal_tiling.word_maps import AutoTilePrompts

ROOT = Path(__file__).resolve().parents[1]
SCENES = (
    # (whole prompt, scene prompt, tile number, the object's words)
    ("a blue to pink sky with one sun at top left", "a blue to pink sky", 1, "one sun at top left"),
    ("a navy blue night sky with one moon at top right", "a navy blue night sky", 4, "one moon at top right"),
    ("a purple to red sky with one sun at top right", "a purple to red sky", 4, "one sun at top right"),
    ("a blue to cyan sky with one tree at bottom left", "a blue to cyan sky", 5, "one tree at bottom left"),
)
HELD_OUT = (
    (
        "a black to navy night sky with one moon at bottom left",
        "a black to navy night sky",
        5,
        "one moon at bottom left",
    ),
    (
        "a magenta to purple sky with one sun at top right",
        "a magenta to purple sky",
        4,
        "one sun at top right",
    ),
    ("a grey to blue sky with one sun at bottom right", "a grey to blue sky", 8, "one sun at bottom right"),
)
"""``--prompts all``: prompts the automatic tile prompts' rule was not looked at on (seed = index)."""
GUIDE_DENOISES = (0.3, 0.5, 0.7)
THRESHOLDS = (0.5, 0.7)
"""Automatic tile prompts' thresholds (a word's region: its map above this share of the way from its
lowest value to its peak)."""
PROMPT_SIGMAS = (0.5, 0.7)
"""``σ ≥ s`` rows: the told tile hears its words at noise levels σ ≥ s and the scene prompt below."""
AUTO_SIGMAS = (0.3, 0.5, 0.7, 0.9, 1.0)
"""Automatic ``σ ≥ s`` rows: the tile that paints an object hears its words at σ ≥ s, every tile the words
all tiles keep below (``AutoTilePrompts.sigma``)."""
QUIET_RATIOS = (1.0, 1.2, 1.4)
"""``quiet q`` rows: no tile keeps a word whose map peaks under q times the average word's attention
(``AutoTilePrompts.quiet``); the automatic rows without it: 0, every word counts (the rule before)."""
VARIANTS = (
    "causal",
    "causal + tile prompts",
    "causal + tile prompts (replace)",
    "causal (scene prompt)",
    "causal + pull",
    *(f"causal + tile prompts, σ ≥ {s}" for s in PROMPT_SIGMAS),
    "causal + pull + tile prompts",
    f"causal + pull + tile prompts, σ ≥ {PROMPT_SIGMAS[0]}",
    *(f"causal + automatic {t}" for t in THRESHOLDS),
    *(f"guided {d}{extra}" for d in GUIDE_DENOISES for extra in ("", " + tile prompts")),
    f"guided 0.7 + tile prompts, σ ≥ {PROMPT_SIGMAS[0]}",
    *(f"guided 0.7 + automatic {t}" for t in THRESHOLDS),
    *(
        f"{method} + automatic {THRESHOLDS[0]}, σ ≥ {s}"
        for method in ("causal", "guided 0.7")
        for s in AUTO_SIGMAS
    ),
    *(
        f"{method} + automatic {THRESHOLDS[0]}, σ ≥ {DEFAULT_WORD_SIGMA}, quiet {q}"
        for method in ("causal", "guided 0.7")
        for q in QUIET_RATIOS
    ),
)
SHOWN = (
    "guide",
    "causal",
    "causal + tile prompts",
    f"causal + tile prompts, σ ≥ {PROMPT_SIGMAS[0]}",
    "causal (scene prompt)",
    "causal + pull + tile prompts",
    "guided 0.7",
    "guided 0.7 + tile prompts",
    "guided 0.7 + automatic {THRESHOLDS[0]}",
)
GUIDE_PULL = dict(
    skip_residual=DEFAULT_GUIDE_SKIP_RESIDUAL, skip_power=DEFAULT_GUIDE_SKIP_POWER, stats=DEFAULT_GUIDE_STATS
)
"""The "pull" rows' global context: guided's own pull of every tile toward the guide (held low band,
per-tile statistics)."""
TIMED = ("causal", "guided 0.3", "guided 0.7")
"""The methods whose tile-prompt overhead :func:`overhead` measures (without and with, in turn)."""
TIMED_WITH = "tile prompts"
"""What :func:`overhead` adds to each timed method by default ("<method> + <this>" is a variant)."""


def run_variant(name: str, model, plan, scene: tuple, seed: int, guide: torch.Tensor):
    """``name`` of :data:`VARIANTS` on ``plan``: its result and the guide its objects are held against."""
    whole, scene_prompt, number, words = scene
    tiled = "tile prompts" in name
    combine = "replace" if "replace" in name else "append"
    prompts = TilePrompts({number: words}, combine=combine)
    positive = model.encode_prompt(scene_prompt if tiled or "scene prompt" in name else whole)
    options: dict = dict(steps=20, cfg=4.5, shift=model.flow_shift, seed=seed, cache_config=BCLAConfig())
    if tiled:
        options["tile_prompts"] = encode_tile_prompts(
            tile_texts(plan, prompts, scene_prompt), model.encode_prompt
        )
    # the other rows: tile prompts at every step (0), as measured before the σ ≥ s rows
    options["tile_prompt_sigma"] = float(name.split("σ ≥ ")[1].split(",")[0]) if "σ ≥" in name else 0.0
    if "automatic" in name:  # the whole prompt; each tile drops the words the guide puts elsewhere
        positive = model.encode_prompt(whole)
        options["auto_tile_prompts"] = AutoTilePrompts(
            model.prompt_tokens(whole),
            model.encode_prompt,
            threshold_of(name),
            report_texts,
            sigma=options["tile_prompt_sigma"],  # their own gate: σ ≥ s, or every step (0)
            quiet=float(name.split("quiet ")[1]) if "quiet" in name else 0.0,  # 0: the rule before it
        )
    if name.startswith("causal"):
        pull = GUIDE_PULL if "pull" in name else {}
        options |= dict(method="causal", context=ContextSettings(guide, bcla_seed=1.0, seed=seed, **pull))
    else:
        denoise = float(name.split()[1])
        options |= dict(method="guided", guide_first=GuideFirst(denoise=denoise))
        if tiled:
            options["guide_prompt"] = model.encode_prompt(whole_scene_text(prompts, scene_prompt))
    result = generate(plan, model.transformer, positive, model.encode_prompt(""), **options)
    return result, guide if result.guide is None else result.guide


def threshold_of(name: str) -> float:
    """The threshold t of an "automatic t" variant (before its ", σ ≥ s" if any)."""
    return float(name.split("automatic ")[1].split(",")[0])


def report_texts(texts: dict[int, str]) -> None:
    """Logs the tiles' texts of automatic tile prompts (tiles that keep every word are absent)."""
    print(json.dumps({"tile_texts": texts}), flush=True)


def object_cells(runs: list[dict]) -> str:
    """The table cells every tile-prompt table shares: objects (guide) per prompt, runs with more objects
    than their guide, seamless verdicts, mean layout PSNR and mean line jump."""
    n = len(runs)
    objects = ", ".join(f"{r['objects']} ({r['guide_objects']})" for r in runs)
    return (
        f"{objects} | {sum(r['objects'] > r['guide_objects'] for r in runs)}/{n} "
        f"| {sum(r['seamless'] for r in runs)}/{n} | {sum(r['guide_psnr'] for r in runs) / n:.1f} "
        f"| {sum(r['line_jump'] for r in runs) / n:.2f}"
    )


def run_all(model, plan, images: dict, scenes: tuple = SCENES, variants: tuple = VARIANTS) -> list[dict]:
    rows = []
    for seed, scene in enumerate(scenes):
        whole = scene[0]
        empty = model.encode_prompt("")
        guide = whole_scene(model, {"tiles": plan}, model.encode_prompt(whole), empty, seed)
        images[seed, "guide"] = model.decode(guide)
        for name in variants:
            start, cpu = time.perf_counter(), time.process_time()
            result, run_guide = run_variant(name, model, plan, scene, seed, guide)
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
            image, tiles = model.decode(result.canvas), model.decode(result.tiles)
            guide_image = model.decode(run_guide)
            images[seed, name] = image
            row = {
                "prompt": whole,
                "seed": seed,
                "variant": name,
                "seconds": seconds,
                "cpu_seconds": cpu_seconds,
                **scores(image, tiles, plan, guide_image),
                "objects": count_named_objects(image, whole),
                "guide_objects": count_named_objects(guide_image, whole),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def overhead(
    model, plan, repeats: int, timed_with: str = TIMED_WITH, methods: tuple[str, ...] = TIMED
) -> list[dict]:
    """Each of ``methods`` without and with ``timed_with`` (tile prompts), in turn (the order
    alternating), on every prompt of :data:`SCENES`, ``repeats`` times: one row per pair with both runs'
    CPU and wall seconds and model calls."""
    calls = [0]
    counter = model.transformer.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    rows = []
    try:
        for seed, scene in enumerate(SCENES):
            guide = whole_scene(
                model, {"tiles": plan}, model.encode_prompt(scene[0]), model.encode_prompt(""), seed
            )
            for repeat in range(repeats):
                for method in methods:
                    pair = (method, f"{method} + {timed_with}")
                    timed = {}
                    for name in pair if repeat % 2 == 0 else pair[::-1]:
                        calls[0] = 0
                        start, cpu = time.perf_counter(), time.process_time()
                        run_variant(name, model, plan, scene, seed, guide)
                        timed[name] = (time.process_time() - cpu, time.perf_counter() - start, calls[0])
                    (cpu_without, wall_without, calls_without), (cpu_with, wall_with, calls_with) = (
                        timed[name] for name in pair
                    )
                    row = {
                        "seed": seed, "method": method, "with": timed_with, "repeat": repeat,
                        "cpu_without": cpu_without, "cpu_with": cpu_with,
                        "wall_without": wall_without, "wall_with": wall_with,
                        "calls_without": calls_without, "calls_with": calls_with,
                    }  # fmt: skip
                    rows.append(row)
                    print(json.dumps({"overhead": row}), flush=True)
    finally:
        counter.remove()
    return rows


def encode_seconds(model, plan, repeats: int = 20) -> dict[str, float]:
    """CPU seconds of one text encoding of a scene prompt and of the told tile's text (the median of
    ``repeats``)."""
    _, scene, number, words = SCENES[0]
    texts = {"scene": scene, "tile": tile_texts(plan, TilePrompts({number: words}), scene)[number - 1]}
    seconds = {}
    for key, text in texts.items():
        times = []
        for _ in range(repeats):
            cpu = time.process_time()
            model.encode_prompt(text)
            times.append(time.process_time() - cpu)
        seconds[key] = statistics.median(times)
    return seconds


def where_words_act(images: dict, plan) -> list[dict]:
    """Per prompt, the mean CIEDE2000 between "causal + tile prompts" and its control "causal (scene
    prompt)" (the same run but for the told tile's words) inside each tile, by tile number: where the
    words changed the canvas."""
    c = plan.compression
    found = []
    for seed, (_, _, number, _) in enumerate(SCENES):
        lab = [to_lab(images[seed, name]) for name in ("causal + tile prompts", "causal (scene prompt)")]
        difference = ciede2000(*lab).reshape(lab[0].shape[-2:])
        per_tile = {}
        for tile in plan.tiles:
            rows, cols = tile.slices
            pixels = difference[rows.start * c : rows.stop * c, cols.start * c : cols.stop * c]
            per_tile[tile.index + 1] = float(pixels.mean())
        found.append({"seed": seed, "told_tile": number, "delta_e_per_tile": per_tile})
        print(json.dumps({"where_words_act": found[-1]}), flush=True)
    return found


def where_table(where: list[dict]) -> list[str]:
    """:func:`where_words_act` as a table: the told tile against the others."""
    lines = [
        "",
        'Where the tile\'s words act (causal): mean ΔE between "causal + tile prompts" and the control '
        '"causal (scene prompt)" inside each tile:',
        "",
        "| prompt | told tile | ΔE in the told tile | ΔE in the other tiles, mean (largest) |",
        "| --- | --- | --- | --- |",
    ]
    for row in where:
        per_tile = row["delta_e_per_tile"]
        told = per_tile[row["told_tile"]]
        others = [v for k, v in per_tile.items() if k != row["told_tile"]]
        lines.append(
            f"| {row['seed']} | {row['told_tile']} | {told:.2f} | {sum(others) / len(others):.2f} "
            f"({max(others):.2f}) |"
        )
    return lines


def markdown(
    rows: list[dict],
    timing: list[dict],
    encodes: dict[str, float],
    where: list[dict],
    model_name: str,
    variants: tuple[str, ...] = VARIANTS,
    prompts: int = len(SCENES),
) -> str:
    lines = [
        "# Tile prompts (`python -m bench.bench_tile_prompts`)",
        "",
        f"{model_name}, 512×256 px, 4×2 tiles, 20 steps, cfg 4.5, BCLA, today's defaults (guided: halo 4, "
        f"held low-band pull), {prompts} prompts (seed = prompt index), one torch thread on a shared "
        "2-core machine. Objects: the suns / moons / trees the prompt names (it asks for one) on the canvas, "
        f"the run's guide in brackets; prompts {len(SCENES)}–{len(SCENES) + len(HELD_OUT) - 1} are held "
        "out (not looked at while choosing); extra objects: canvas over guide, summed. Layout: the canvas "
        "downscaled to the guide vs the guide. "
        '"scene prompt": the control, no tile prompts, every tile hears the scene prompt that the '
        "tile-prompt rows give the tiles without words.",
        "",
        "| variant | objects (guide) per prompt | more than the guide | seamless verdicts | layout PSNR dB "
        "| line jump | CPU s per canvas | extra objects, tuning · held out | held out: more than the guide |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in variants:
        mine = [r for r in rows if r["variant"] == name]
        cpu = sum(r["cpu_seconds"] for r in mine) / len(mine)
        held = [r for r in mine if r["seed"] >= len(SCENES)]
        extra = [sum(max(0, r["objects"] - r["guide_objects"]) for r in part) for part in (mine, held)]
        more = f"{sum(r['objects'] > r['guide_objects'] for r in held)}/{len(held)}" if held else "–"
        lines.append(
            f"| {name} | {object_cells(mine)} | {cpu:.1f} | {extra[0] - extra[1]} · {extra[1]} | {more} |"
        )
    lines += where_table(where) if where else []
    lines += overhead_table(timing, encodes) if timing else []
    lines += ["", "Verdicts:", "", "| prompt | variant | verdict |", "| --- | --- | --- |"]
    lines += [f"| {r['seed']} | {r['variant']} | {r['verdict']} |" for r in rows]
    return "\n".join(lines) + "\n"


def overhead_table(timing: list[dict], encodes: dict[str, float]) -> list[str]:
    """The time overhead of tile prompts per method: medians of the pairs' ratios (:func:`overhead`)."""
    repeats = max(r["repeat"] for r in timing) + 1
    timed_with = timing[0].get("with", TIMED_WITH)
    lines = [
        "",
        f"Time overhead of {timed_with} (same process, without and with in turn, order alternating, "
        f"{repeats} pairs per prompt, {len(SCENES)} prompts; median and range of the pairs' ratios):",
        "",
        "| method | CPU s without | CPU s with | CPU overhead, median (range) | wall overhead, median "
        "| model calls without / with |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method in dict.fromkeys(r["method"] for r in timing):
        mine = [r for r in timing if r["method"] == method]
        cpu = [r["cpu_with"] / r["cpu_without"] - 1 for r in mine]
        wall = [r["wall_with"] / r["wall_without"] - 1 for r in mine]
        calls = sorted({(r["calls_without"], r["calls_with"]) for r in mine})
        lines.append(
            f"| {method} | {statistics.median(r['cpu_without'] for r in mine):.2f} "
            f"| {statistics.median(r['cpu_with'] for r in mine):.2f} "
            f"| {statistics.median(cpu):+.1%} ({min(cpu):+.1%} to {max(cpu):+.1%}) "
            f"| {statistics.median(wall):+.1%} | {', '.join(f'{a} / {b}' for a, b in calls)} |"
        )
    lines += [
        "",
        f"One text encoding: {encodes['scene'] * 1000:.1f} ms CPU (scene prompt), "
        f"{encodes['tile'] * 1000:.1f} ms (a tile's text); a tile-prompt run encodes one more text per "
        "distinct tile text (guided: and the whole-scene text).",
    ]
    return lines


FIGURE_LABEL_PX = 16
"""Height of the label strip above each canvas in :func:`figure`."""


def figure(images: dict, path: Path, width: int = 256, shown: tuple[str, ...] = SHOWN) -> None:
    """``shown`` side by side, one row per prompt, each ``width`` px wide (2:1)."""
    height, label = width // 2, FIGURE_LABEL_PX
    prompts = len({seed for seed, _ in images})
    out = Image.new("RGB", (len(shown) * (width + 6), prompts * (height + label)), "white")
    draw = ImageDraw.Draw(out)
    for seed in range(prompts):
        for i, name in enumerate(shown):
            pixels = (images[seed, name][0].permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()
            x, y = i * (width + 6), seed * (height + label)
            out.paste(Image.fromarray(pixels).resize((width, height), Image.BICUBIC), (x, y + label))
            text = name.replace("σ ≥", "sigma >=")  # PIL's default font has no σ nor ≥
            draw.text((x + 2, y + 2), f"prompt {seed}: {text}", fill="black")
    out.save(path, quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL, help="a diffusers SANA folder")
    parser.add_argument(
        "--repeats", type=int, default=2, help="timed without/with pairs per prompt (0: none)"
    )
    parser.add_argument(
        "--variants",
        help='a subset of the variants, separated by semicolons (default: all; "": none, the overhead only)',
    )
    parser.add_argument(
        "--prompts", choices=("measured", "all"), default="measured", help="all: and HELD_OUT"
    )
    parser.add_argument(
        "--timed-with", default=TIMED_WITH, help='what the overhead adds, e.g. "automatic 0.5"'
    )
    parser.add_argument("--timed", default=",".join(TIMED), help="comma-separated methods the overhead times")
    parser.add_argument("--tag", default="", help="result files tile_prompts_<tag>[_<model>]")
    args = parser.parse_args()
    variants = (
        VARIANTS if args.variants is None else tuple(v.strip() for v in args.variants.split(";") if v.strip())
    )
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown variants {unknown}; choose from: {', '.join(VARIANTS)}")
    scenes = SCENES + HELD_OUT if args.prompts == "all" else SCENES
    model, suffix, model_name = bench_model(args.model)
    stem = f"tile_prompts_{args.tag}" if args.tag else "tile_prompts"
    plan = make_plans(model.compression)["tiles"]
    told = max(number for *_, number, _ in SCENES)
    if len(plan) < told:
        parser.error(
            f"the prompts tell tiles up to {told}; {args.model} gives a {len(plan)}-tile plan on the "
            f"512×256 px canvas ({model.compression}× compression): use an 8× model"
        )
    images: dict = {}
    compared = {"causal + tile prompts", "causal (scene prompt)"}
    with torch.no_grad():
        rows = run_all(model, plan, images, scenes, variants)
        where = where_words_act(images, plan) if compared <= set(variants) else []
        timed = tuple(m.strip() for m in args.timed.split(","))
        timing = overhead(model, plan, args.repeats, args.timed_with, timed) if args.repeats else []
        encodes = encode_seconds(model, plan)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"rows": rows, "where_words_act": where, "overhead": timing, "encode_seconds": encodes}
    (args.out / f"{stem}{suffix}.json").write_text(json.dumps(result, indent=1) + "\n")
    text = markdown(rows, timing, encodes, where, model_name, variants, len(scenes))
    (args.out / f"{stem}{suffix}.md").write_text(text)
    shown = SHOWN if variants == VARIANTS else ("guide", *variants)
    figure(images, ROOT / "docs" / f"{stem}{suffix}.jpg", shown=shown)


if __name__ == "__main__":
    main()
