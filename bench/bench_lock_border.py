"""Closing the lock border: lock margin, lock ramp, lock release, context halo, seam refine and border
resampling, for the causal tiles and the baselines, on the embedded model, through the run path.

Run from the repository root: ``python -m bench.bench_lock_border`` (about 30 min on 2 CPU cores, one
torch thread). Writes ``bench/results/lock_border.json``, ``bench/results/lock_border.md`` and
``docs/lock_border_comparison.png``; ``--model DIR`` runs another SANA folder and adds ``_<folder name>``
to those names. ``--images FILE`` also saves the decoded canvases and tiles; ``--rescore --images FILE``
scores them again with the current ``temporal_tiling/metrics/`` and rewrites the tables and figure
without running the model (the seconds stay those of the run).

Protocol: bench_guide_first's (the quick start's canvas, 512×256 px, 4×2 tiles of 152×144 px, 32 px
overlap, 20 steps, cfg 4.5, its three prompts, seed = prompt index; MultiDiffusion 50 %: 128 px windows
every 64 px) and its scores: plan-free line jump (and its ratio to the native full pass of the same
prompt), Quality Metrics verdict and seam gradient ratio over the image's own floor, layout PSNR against
the whole-scene pass. Causal runs with the pack's lock defaults (margin 1, feather 2, no release), a
BCLA cache seeded by the whole-scene pass; each variant changes one setting. The halo is 4 cells (one
overlap), the seam refine ``SeamRefine()`` (denoise 0.25, 4 cells of context each side, steps × denoise
steps per band), the border resample ``BorderResample()`` (at σ ≤ 0.5 every model call of a tile with a
lock edge predicts, composites the known cells, re-noises to the same σ with fresh seeded noise and
predicts again, twice, within 4 cells of the edge: RePaint's resampling inside one model call). The
figure shows each canvas cut around the crossing of the first tile row's bottom border and the first
column border, zoomed 2× (nearest), ticks at the border lines.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from bench.bench_guide_first import PROMPTS, bench_model, make_plans, method_plan, run_all, scores
from temporal_tiling.border_resample import BorderResample
from temporal_tiling.flow import flow_sigmas
from temporal_tiling.options import DEFAULT_LOCK_MARGIN, EMBEDDED_MODEL
from temporal_tiling.pipeline import GuideFirst, guide_plan
from temporal_tiling.sampling import LockRelease
from temporal_tiling.seam_refine import SeamRefine, refine_bands

ROOT = Path(__file__).resolve().parents[1]
HALO = 4
"""Cells of context ring: one overlap of the quick start's plan."""
VARIANTS: dict[str, tuple[str, dict]] = {  # row -> (bench_guide_first method, RunSettings changes)
    "native full pass": ("full", {}),
    "causal (lock defaults)": ("causal", {}),
    "causal, margin 0": ("causal", {"lock_margin": 0}),
    "causal, margin 2": ("causal", {"lock_margin": 2}),
    "causal, feather 0": ("causal", {"lock_feather": 0}),
    "causal, feather 4": ("causal", {"lock_feather": 4}),
    "causal, feather 6": ("causal", {"lock_feather": 6}),
    "causal, lock release 0.5": ("causal", {"lock_release": LockRelease(0.5)}),
    "causal + halo": ("causal", {"halo": HALO}),
    "causal + seam refine": ("causal", {"seam_refine": SeamRefine()}),
    "causal + border resample": ("causal", {"border_resample": BorderResample()}),
    "independent": ("independent", {}),
    "independent + halo": ("independent", {"halo": HALO}),
    "independent + seam refine": ("independent", {"seam_refine": SeamRefine()}),
    "multidiffusion 50 %": ("multidiffusion 50 %", {}),
    "multidiffusion 50 % + seam refine": ("multidiffusion 50 %", {"seam_refine": SeamRefine()}),
    "guided": ("guided", {}),
    "guided + seam refine": ("guided", {"seam_refine": SeamRefine()}),
    "guided + border resample": ("guided", {"border_resample": BorderResample()}),
}
CROP = (80, 88, 96)
"""(top, left, size) px of the figure's crop: around y = 112–144 (the first row's bottom overlap) and
x = 120–152 (the first column overlap)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--rows", nargs="*", choices=VARIANTS, default=list(VARIANTS), help="rows to run")
    parser.add_argument("--images", type=Path, default=None, help="also save the decoded canvases here")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="score the canvases and tiles an earlier run saved with --images again (after a change to "
        "temporal_tiling/metrics/) and rewrite its tables and figure, without running the model",
    )
    parser.add_argument("--model", type=Path, default=EMBEDDED_MODEL, help="a diffusers SANA folder")
    args = parser.parse_args()
    if args.rescore and args.images is None:
        parser.error("--rescore needs --images FILE, saved by an earlier run")
    model, suffix, model_name = bench_model(args.model)
    plans = make_plans(model.compression)
    results = args.out / f"lock_border{suffix}.json"
    if args.rescore:
        images = torch.load(args.images)
        rows = rescore(json.loads(results.read_text()), images, plans)
    else:
        images = {}
        rows = run_all(model, plans, {name: VARIANTS[name] for name in args.rows}, images)
        if args.images is not None:  # to redraw the figure or score again without rerunning
            torch.save(images, args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / f"lock_border{suffix}.md").write_text(markdown(rows, plans, model_name))
    names = list(dict.fromkeys(row["method"] for row in rows))
    figure(images, names, ROOT / "docs" / f"lock_border_comparison{suffix}.png")


def rescore(rows: list[dict], images: dict, plans: dict) -> list[dict]:
    """``rows`` of an earlier run, scored again from the canvases and tiles it saved (its seconds and
    object counts stay)."""
    for row in rows:
        seed, name = row["seed"], row["method"]
        plan = method_plan(VARIANTS[name][0], plans)
        row.update(scores(images[seed, name], images[seed, name, "tiles"], plan, images[seed, "guide"]))
    return rows


def model_cells(name: str, plans: dict, steps: int = 20) -> int:
    """Latent cells × sampler steps the model denoises for row ``name`` (CFG doubles every row alike;
    the BCLA seed passes, under 5 %, are left out): a cost that does not depend on the machine's load."""
    method, settings = VARIANTS[name]
    plan = method_plan(method, plans)
    if method == "full":
        cost = plan.canvas_height * plan.canvas_width * steps
    else:
        windows = [plan.window(tile, settings.get("halo", 0)) for tile in plan.tiles]
        tile_steps = GuideFirst().steps_per_tile(steps) if method == "guided" else steps
        cost = tile_steps * sum(window.height * window.width for window in windows)
        if (resample := settings.get("border_resample")) is not None:
            levels = flow_sigmas(tile_steps, denoise=GuideFirst().denoise if method == "guided" else 1.0)
            late = int(((levels > 0) & (levels <= resample.below_sigma)).sum())
            known = [plan.known_mask(tile.index, DEFAULT_LOCK_MARGIN).any() for tile in plan.tiles]
            locked = [window for window, has_known in zip(windows, known, strict=True) if has_known]
            cost += resample.repeats * late * sum(window.height * window.width for window in locked)
        if method == "guided":
            small = guide_plan(plan)
            cost += small.canvas_height * small.canvas_width * steps
    if (refine := settings.get("seam_refine")) is not None:
        cost += refine.steps_per_band(steps) * sum(
            band.mask.numel() for band in refine_bands(plan, refine.pad)
        )
    return cost


def markdown(rows: list[dict], plans: dict, model_name: str = "Embedded model") -> str:
    native = {r["seed"]: r["line_jump"] for r in rows if r["method"] == "native full pass"}
    names = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        "# Closing the lock border (`python -m bench.bench_lock_border`)",
        "",
        f"{model_name}, 512×256 px, 4×2 tiles, 20 steps, 3 prompts (seed = prompt index), one torch thread."
        " Means over the prompts; line jump ratio: each prompt's jump over the native pass's, then the mean."
        " Seam ratio × floor: seam gradient ratio over the image's own (the verdict wants < 1.2)."
        " Model cost: latent cells × steps the model denoised, over the native pass's (load-free);"
        " seconds were measured on a 2-core machine shared with other jobs and vary ±50 % from run to run.",
        "",
        "| row | line jump | × native | seamless verdicts | seam ratio × floor | layout PSNR dB "
        "| model cost × native | s per canvas |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for name in names:
        mine = [r for r in rows if r["method"] == name]

        def mean(key: str, mine: list[dict] = mine) -> float:
            return sum(r[key] for r in mine) / len(mine)

        ratio = sum(r["line_jump"] / native[r["seed"]] for r in mine) / len(mine) if native else float("nan")
        cost = model_cells(name, plans) / model_cells("native full pass", plans)
        lines.append(
            f"| {name} | {mean('line_jump'):.2f} | {ratio:.2f}× | {sum(r['seamless'] for r in mine)}/"
            f"{len(mine)} | {mean('seam_ratio_over_floor'):.2f} | {mean('guide_psnr'):.1f} | "
            f"{cost:.2f} | {mean('seconds'):.1f} |"
        )
    lines += [
        "",
        "Per prompt:",
        "",
        "| prompt | row | line jump (at) | seam ratio × floor | verdict | layout PSNR dB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r['seed']} | {r['method']} | {r['line_jump']:.2f} ({r['line_axis']} {r['line_at_px']} px) | "
        f"{r['seam_ratio_over_floor']:.2f} | {r['verdict']} | {r['guide_psnr']:.1f} |"
        for r in rows
    ]
    return "\n".join(lines) + "\n"


def figure(images: dict, names: list[str], path: Path) -> None:
    """Rows: ``names`` in two halves side by side; columns: prompts; each cell the :data:`CROP` zoomed 2×
    (nearest), red ticks at the overlap's edges (left: y = 112, 144; below: x = 120, 152)."""
    top, left, size = CROP
    zoom, label, gap, tick = 2, 190, 6, 5
    cell = size * zoom
    half = -(-len(names) // 2)
    group = label + len(PROMPTS) * (cell + gap)
    out = Image.new("RGB", (2 * group, half * (cell + gap) + 16), "white")
    draw = ImageDraw.Draw(out)
    for i, name in enumerate(names):
        gx, y = (i // half) * group, 16 + (i % half) * (cell + gap)
        draw.text((gx + 4, y + cell // 2 - 6), name, fill="black")
        for seed in range(len(PROMPTS)):
            x = gx + label + seed * (cell + gap)
            if i % half == 0:
                draw.text((x + 2, 2), f"prompt {seed}", fill="black")
            crop = images[seed, name][0, :, top : top + size, left : left + size]
            pixels = (crop.permute(1, 2, 0).clamp(0, 1) * 255).byte().numpy()
            out.paste(Image.fromarray(pixels).resize((cell, cell), Image.NEAREST), (x, y))
            for border in (112, 144):
                draw.line([(x - tick, y + (border - top) * zoom), (x - 1, y + (border - top) * zoom)], "red")
            for border in (120, 152):
                draw.line(
                    [(x + (border - left) * zoom, y + cell), (x + (border - left) * zoom, y + cell + 4)],
                    "red",
                )
    out.save(path)


if __name__ == "__main__":
    main()
