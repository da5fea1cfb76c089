"""Guide-first text to image against the other methods, on the embedded model, through the run path.

Run from the repository root: ``python -m bench.bench_guide_first`` (about 5 min on 2 CPU cores, one
torch thread). Writes ``bench/results/guide_first.json``, ``bench/results/guide_first.md`` and
``docs/guide_first_comparison.png``; ``--model DIR`` runs another SANA folder (e.g. the position-embedding
model in ``bench/models/``) and adds ``_<folder name>`` to those three names.

Protocol. The quick start's canvas (512×256 px, 4×2 tiles of 152×144 px, 32 px overlap, 20 steps,
cfg 4.5), three prompts, seed = prompt index. The guided settings (denoise 0.3, statistics 0.5) were
chosen by looking at prompt 0 only; prompts 1 and 2 are the check. For every method the whole-scene
pass of the same seed (the guide ``guided`` starts from) is the layout reference: the canvas is
area-downscaled to its size and compared (PSNR, and each tile's mean colour, CIEDE2000); the objects the
prompt names (sun, moon) are counted on the canvas and on that pass (``seamlab.count_objects``). Line jump:
the plan-free detector (worst row/column boundary over its axis' median). Verdict: the Quality Metrics
verdict (seams against the image's own floor). MultiDiffusion 50 % runs 128 px windows every 64 px (7×3).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from lab import seamlab
from temporal_tiling import cli
from temporal_tiling.bcla import BCLAConfig
from temporal_tiling.context import ContextSettings
from temporal_tiling.metrics import guide_fidelity, line_jump, seam_report
from temporal_tiling.options import EMBEDDED_MODEL
from temporal_tiling.pipeline import GuideFirst, generate, guide_plan
from temporal_tiling.plan import make_plan

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = (
    "a blue to pink sky with one sun at top left",
    "a navy blue night sky with one moon at top right",
    "one red sun in the middle of a wide teal sky",
)
METHODS = ("full", "multidiffusion 50 %", "independent", "causal", "guided", "guided, no statistics")
SHOWN = ("guide", "full", "causal", "multidiffusion 50 %", "guided")


def count_named_objects(image: torch.Tensor, prompt: str) -> int:
    """Suns, moons and trees in ``image``, of the kinds ``prompt`` names."""
    return sum(int(n) for kind, n in seamlab.count_objects(image).items() if kind in prompt)


def make_plans(compression: int, width: int = 512, height: int = 256) -> dict:
    """The quick start's plan ("tiles": 128 px tiles, 32 px overlap) and MultiDiffusion 50 %'s (128 px
    windows every 64 px). Tiles are at least 8 latent cells and overlaps 2 (256 and 64 px at 32×
    compression, where 128 px would be 4 cells, under the smallest size a 32× model is trained on)."""
    tile, overlap = max(128, 8 * compression), max(32, 2 * compression)
    return {
        "tiles": make_plan(
            width_px=width,
            height_px=height,
            tile_width_px=tile,
            tile_height_px=tile,
            overlap_px=overlap,
            compression=compression,
            fit="grow",
        ),
        "multidiffusion": make_plan(
            width_px=width,
            height_px=height,
            tile_width_px=tile,
            tile_height_px=tile,
            overlap_px=tile // 2,
            compression=compression,
            fit="shift",
        ),
    }


def whole_scene(model, plans: dict, emb, neg, seed: int):
    """The whole-scene pass of ``seed`` at the tile's size: the layout reference (and causal's guide)."""
    return generate(guide_plan(plans["tiles"]), model.transformer, emb, neg, method="full",
                    steps=20, cfg=4.5, shift=model.flow_shift, seed=seed).canvas  # fmt: skip


def run_method(name: str, model, plans: dict, emb, neg, guide, seed: int, **settings):
    """``name`` of :data:`METHODS` on its plan; ``settings``: more RunSettings fields (a ``guide_first``
    replaces the guided rows' own)."""
    guide_first = settings.pop("guide_first", None)
    common = dict(steps=20, cfg=4.5, shift=model.flow_shift, seed=seed, **settings)
    plan = method_plan(name, plans)
    if name == "causal":  # the former default: BCLA seeded by the same whole-scene pass
        options = dict(
            method="causal",
            cache_config=BCLAConfig(),
            context=ContextSettings(guide, bcla_seed=1.0, seed=seed),
        )
    elif name.startswith("guided"):
        guide_first = guide_first or (GuideFirst(stats=0.0) if "no statistics" in name else GuideFirst())
        options = dict(method="guided", cache_config=BCLAConfig(), guide_first=guide_first)
    else:
        options = dict(method="multidiffusion" if plan is plans["multidiffusion"] else name)
    return plan, generate(plan, model.transformer, emb, neg, **options, **common)


def method_plan(name: str, plans: dict):
    """The plan ``name`` of :data:`METHODS` runs on (MultiDiffusion 50 %: its own windows)."""
    return plans["multidiffusion"] if name.startswith("multidiffusion") else plans["tiles"]


def measure(model, plan, result, guide_image) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The decoded canvas, its decoded tiles and their :func:`scores`."""
    image, tiles = model.decode(result.canvas), model.decode(result.tiles)
    return image, tiles, scores(image, tiles, plan, guide_image)


def scores(image: torch.Tensor, tiles: torch.Tensor, plan, guide_image: torch.Tensor) -> dict:
    """Plan-free line jump, Quality Metrics verdict and seam gradient ratio over the image's own floor,
    layout against the whole-scene pass."""
    report = seam_report(image, plan, tiles=tiles)
    fidelity = guide_fidelity(image, guide_image, plan)
    jump = line_jump(image)
    return {
        "line_jump": jump.value, "line_axis": jump.axis, "line_at_px": jump.position,
        "seamless": report.meets_targets(), "verdict": report.verdict(),
        "seam_ratio_over_floor": report.excess()["gradient_ratio"],
        "guide_psnr": fidelity["guide_psnr"], "guide_delta_e": fidelity["guide_delta_e_mean"],
    }  # fmt: skip


def run_all(model, plans: dict, variants: dict[str, tuple[str, dict]], images: dict) -> list[dict]:
    """Every variant (name -> (a :data:`METHODS` name, more RunSettings fields)) on every prompt: one
    score row each; the decoded canvases go into ``images`` by (seed, name), their tiles by (seed, name,
    "tiles"), each prompt's whole-scene pass by (seed, "guide")."""
    rows = []
    for seed, prompt in enumerate(PROMPTS):
        emb, neg = model.encode_prompt(prompt), model.encode_prompt("")
        guide = whole_scene(model, plans, emb, neg, seed)
        images[seed, "guide"] = guide_image = model.decode(guide)
        guide_objects = count_named_objects(guide_image, prompt)
        for name, (method, settings) in variants.items():
            start = time.perf_counter()
            plan, result = run_method(method, model, plans, emb, neg, guide, seed, **settings)
            seconds = time.perf_counter() - start
            images[seed, name], images[seed, name, "tiles"], row = measure(model, plan, result, guide_image)
            objects = {
                "objects": count_named_objects(images[seed, name], prompt),
                "guide_objects": guide_objects,
            }
            rows.append(
                {"prompt": prompt, "seed": seed, "method": name, "seconds": seconds, **row, **objects}
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_model(folder: Path = EMBEDDED_MODEL) -> tuple[cli.LoadedModel, str, str]:
    """A diffusers SANA folder on CPU, one torch thread (the protocol); with the suffix of its result
    files ("" for the embedded model, else ``_<folder>``) and its name in the tables."""
    torch.set_num_threads(1)
    if folder.resolve() == EMBEDDED_MODEL.resolve():
        suffix, name = "", "Embedded model"
    else:
        suffix, name = f"_{folder.resolve().name}", f"Model `{folder}` (the defaults were not tuned on it)"
    return cli.load_sana_folder(folder, torch.device("cpu")), suffix, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL, help="a diffusers SANA folder")
    args = parser.parse_args()
    model, suffix, model_name = bench_model(args.model)
    images: dict = {}
    rows = run_all(model, make_plans(model.compression), {name: (name, {}) for name in METHODS}, images)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"guide_first{suffix}.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / f"guide_first{suffix}.md").write_text(markdown(rows, model_name))
    figure(images, ROOT / "docs" / f"guide_first_comparison{suffix}.png")


def markdown(
    rows: list[dict],
    model_name: str = "Embedded model",
    names: tuple[str, ...] = METHODS,
    title: str = "Guide-first text to image (`python -m bench.bench_guide_first`)",
    canvas: str = "512×256 px, 4×2 tiles",
) -> str:
    """The tables of ``rows`` (:func:`run_all`), one summary row per variant of ``names``."""
    lines = [
        f"# {title}",
        "",
        f"{model_name}, {canvas}, 20 steps, 3 prompts (seed = prompt index), one torch thread."
        " Layout: the canvas downscaled to the whole-scene pass vs that pass. Means over the prompts."
        " Objects: the suns or moons the prompt names (it asks for one), counted on the canvas; in brackets"
        " the prompts where the canvas has more than the whole-scene pass.",
        "",
        "| method | line jump (native = 1.00×) | seamless verdicts | layout PSNR dB "
        f"| tile colour ΔE vs guide | objects (guide: {mean_guide_objects(rows):.1f}) | s per canvas |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    mean = lambda name, key: sum(r[key] for r in rows if r["method"] == name) / len(PROMPTS)  # noqa: E731
    native = mean("full", "line_jump")
    for name in names:
        seamless = sum(r["seamless"] for r in rows if r["method"] == name)
        more = sum(r["objects"] > r["guide_objects"] for r in rows if r["method"] == name)
        jump = mean(name, "line_jump")
        lines.append(
            f"| {name} | {jump:.2f} ({jump / native:.2f}×) | {seamless}/{len(PROMPTS)} | "
            f"{mean(name, 'guide_psnr'):.1f} | {mean(name, 'guide_delta_e'):.2f} | "
            f"{mean(name, 'objects'):.1f} ({more}/{len(PROMPTS)} more) | {mean(name, 'seconds'):.1f} |"
        )
    lines += [
        "",
        "Per prompt:",
        "",
        "| prompt | method | line jump | verdict | layout PSNR dB | objects (guide) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['seed']} | {r['method']} | {r['line_jump']:.2f} | {r['verdict']} | {r['guide_psnr']:.1f} "
        f"| {r['objects']} ({r['guide_objects']}) |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def mean_guide_objects(rows: list[dict]) -> float:
    """The whole-scene pass's object count, averaged over the prompts (one pass per prompt)."""
    return sum(r["guide_objects"] for r in rows if r["method"] == METHODS[0]) / len(PROMPTS)


def figure(images: dict, path: Path, shown: tuple[str, ...] = SHOWN, width: int = 256) -> None:
    """``shown`` variants side by side, one row per prompt, each ``width`` px wide (2:1)."""
    height, label = width // 2, 16
    out = Image.new("RGB", (len(shown) * (width + 6), len(PROMPTS) * (height + label)), "white")
    draw = ImageDraw.Draw(out)
    for seed in range(len(PROMPTS)):
        for i, name in enumerate(shown):
            pixels = (images[seed, name][0].permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()
            x, y = i * (width + 6), seed * (height + label)
            out.paste(Image.fromarray(pixels).resize((width, height), Image.BICUBIC), (x, y + label))
            draw.text((x + 2, y + 2), f"prompt {seed}: {name}", fill="black")
    out.save(path)


if __name__ == "__main__":
    main()
