"""The quality benchmark's command line: ``python -m bench.quality [--quick]`` (see the package doc)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# Busy-waiting OpenMP threads collapse on a shared 2-core machine (measured ~10× slower with 2 threads
# under load); passive waiting keeps 2 threads useful. Must be set before torch starts its pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from bench import quality as package
from temporal_tiling.lora import LORA_FILE
from temporal_tiling.sana import EMBEDDED_MODEL

from .figure import grid_figure
from .model import CFG, TEXT_LENGTH, Model, load_model, quick_model
from .pairs import make_pairs
from .report import goals, jsonable, markdown, table
from .session import Bench
from .specs import (
    BASELINES,
    CANVASES,
    FULL,
    GUIDED,
    MD50_CELLS,
    NEW_DEFAULT,
    OVERLAP_CELLS,
    PACK_DEFAULT,
    TILE_CELLS,
    bcla_grid,
    canvas_px,
    levers,
    named,
)
from .tuning import tune
from .verification import shuffle_test, verification

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
FIGURE = ROOT / "docs" / "quality_grid.png"
QUICK_OUT = ROOT / "out" / "bench-quality-quick"


def pick_threads(model: Model, batch: int) -> tuple[int, dict]:
    """Time a tile-batch model call with 1 and 2 threads; a loaded shared machine often favours 1."""
    t = model.transformer
    x = torch.randn(2 * batch, t.config.in_channels, TILE_CELLS, TILE_CELLS)
    text = torch.randn(2 * batch, TEXT_LENGTH, t.config.caption_channels)
    times = {}
    with torch.no_grad():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t(x, text, torch.full((2 * batch,), 500.0))
            start = time.perf_counter()
            for _ in range(3):
                t(x, text, torch.full((2 * batch,), 500.0))
            times[threads] = round((time.perf_counter() - start) / 3, 4)
    return min(times, key=times.get), times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=package.__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="tiny random model, 2 pairs, 3 steps (code path only)"
    )
    p.add_argument("--model", type=Path, default=EMBEDDED_MODEL, help="diffusers SANA folder")
    p.add_argument("--lora", type=Path, default=None, help="temporal LoRA (default: <model>/temporal_lora)")
    p.add_argument("--pairs", type=int, default=16, help="held-out prompt × seed pairs")
    p.add_argument("--tune-pairs", type=int, default=4, help="tuning pairs (other scenes and seeds)")
    p.add_argument("--lever-pairs", type=int, default=8, help="held-out pairs for the lever table (grid)")
    p.add_argument("--steps", type=int, default=8, help="Euler steps (the pack's default is 20)")
    p.add_argument("--budget-min", type=float, default=45.0, help="wall-clock budget; levers are cut to fit")
    p.add_argument("--threads", type=int, default=0, help="torch threads; 0 = time 1 and 2, keep the faster")
    p.add_argument(
        "--defaults-only",
        action="store_true",
        help="only the pack's defaults (guided; causal + global context) against native, independent and "
        "MultiDiffusion on the held-out pairs, no tuning or levers; writes quality_defaults.* (~10 min)",
    )
    args = p.parse_args(argv)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    budget = args.budget_min * 60
    out_dir = RESULTS
    figure = FIGURE
    if args.quick:
        args.pairs, args.tune_pairs, args.steps = (
            min(args.pairs, 2),
            min(args.tune_pairs, 1),
            min(args.steps, 3),
        )
        args.lever_pairs = min(args.lever_pairs, 1)
        out_dir, figure = QUICK_OUT, QUICK_OUT / "quality_grid.png"
        model = quick_model(Path(tempfile.gettempdir()) / "bench-quality-tiny-sana")
    else:
        if not (args.model / "model_index.json").is_file():
            print(f"no diffusers SANA folder at {args.model}; train it or pass --model DIR", file=sys.stderr)
            return 2
        lora = args.lora or args.model / "temporal_lora" / LORA_FILE
        model = load_model(args.model, lora)
    thread_times = {}
    if args.threads <= 0:
        args.threads, thread_times = pick_threads(model, args.pairs)
    torch.set_num_threads(args.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_lines: list[str] = []

    def log(msg: str) -> None:
        line = f"{time.perf_counter() - t_start:7.1f}s {msg}"
        log_lines.append(line)
        print(line, flush=True)

    log(f"threads {args.threads} (timed: {thread_times})")
    log(f"model {model.name}: {model.compression}× VAE, shift {model.shift}, LoRA {model.lora_path}")
    canvases = list(CANVASES)
    tune_pairs = make_pairs(model, args.tune_pairs, scene_seed=31_337, noise_seed=50_000)
    held = make_pairs(model, args.pairs, scene_seed=2_024, noise_seed=1_000)

    if args.defaults_only:
        return defaults_only(model, held, args, out_dir, figure.with_name("quality_defaults.png"), log)

    # 1. tuning (separate scenes and seeds): best mode × source, then strength/feather, then context.
    tuner = Bench(model, tune_pairs, args.steps, "tune", log)
    best, trail = tune(tuner, canvases, deadline=t_start + 0.3 * budget)
    log(f"best on the tuning set: {best.name}")

    # 2. held-out: every method, same noise per pair.
    bench = Bench(model, held, args.steps, "held-out", log)
    specs = [FULL, *BASELINES, *bcla_grid()]
    if best.key not in {s.key for s in specs}:
        specs.append(best)
    ctx_variant = best if best.has_context else named(best, skip=0.5)
    no_ctx = named(best, skip=0.0, stats=0.0, seed=0.0)
    for extra in (no_ctx, ctx_variant, NEW_DEFAULT):
        if extra.key not in {s.key for s in specs}:
            specs.append(extra)
    lora_spec = None
    if model.lora is not None:
        lora_spec = named(best, lora=True)
        specs.append(lora_spec)
    records: dict[str, dict[str, dict]] = {cv: {} for cv in canvases}
    for canvas in canvases:
        for spec in specs:
            records[canvas][spec.name] = bench.get(canvas, spec)

    # 3. verification tests (tuning pairs: they select nothing) and levers (first held-out pairs, grid).
    tests = verification(tuner, canvases[0], records[canvases[0]], best.name)
    lever_bench = bench.head(args.lever_pairs, "levers")
    lever_rows: list[dict] = []
    cut: list[str] = []
    lever_specs = [("reference", FULL), ("reference", BASELINES[2]), *levers(best, model.lora is not None)]
    for canvas in canvases:
        per_run = records[canvas][BASELINES[0].name]["summary"]["seconds_per_canvas"] * args.lever_pairs * 2.5
        for group, spec in lever_specs:
            if time.perf_counter() - t_start + per_run > budget:
                cut.append(f"lever {spec.name} ({canvas})")
                continue
            lever_rows.append({"group": group, "canvas": canvas, **lever_bench.get(canvas, spec)})
    tests["4_shuffle_vs_raster"] = shuffle_test([r for r in lever_rows if r["canvas"] == canvases[0]])

    # 4. goals, tables, figure.
    md50_name = BASELINES[2].name
    goal_rows = {
        cv: goals(records[cv][best.name], records[cv][md50_name], records[cv][FULL.name]) for cv in canvases
    }
    elapsed = time.perf_counter() - t_start
    payload = {
        "quick": args.quick,
        "model": str(args.model if not args.quick else "tiny random SANA (fixtures)"),
        "lora": str(model.lora_path) if model.lora_path else None,
        "machine": {
            "cpu_threads": args.threads,
            "thread_timing_s": thread_times,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "protocol": {
            "steps": args.steps,
            "sampler": "euler",
            "cfg": CFG,
            "shift": model.shift,
            "tile_cells": TILE_CELLS,
            "overlap_cells": OVERLAP_CELLS,
            "md50_overlap_cells": MD50_CELLS,
            "compression": model.compression,
            "canvases_px": {cv: canvas_px(cv, model.compression) for cv in canvases},
            "held_out": {"prompts": held.prompts, "seeds": held.seeds},
            "lever_pairs": args.lever_pairs,
            "tuning": {"prompts": tune_pairs.prompts, "seeds": tune_pairs.seeds},
            "guide": "native pass at half the canvas latent size; noise = canvas noise 2×2-pooled, rescaled",
        },
        "best": {"name": best.name, "spec": best.describe(), "tuning_trail": trail},
        "results": {cv: list(records[cv].values()) for cv in canvases},
        "levers": lever_rows,
        "verification": tests,
        "goals": goal_rows,
        "cut": cut,
        "runtime_s": elapsed,
        "log": log_lines,
    }
    (out_dir / "quality.json").write_text(json.dumps(jsonable(payload), indent=1))
    (out_dir / "quality.md").write_text(markdown(payload, records, lever_rows, best, lora_spec, canvases))
    figure_specs = [
        ("native full canvas", FULL),
        ("independent tiles", BASELINES[0]),
        ("MultiDiffusion 50 %", BASELINES[2]),
        ("before: former default", PACK_DEFAULT),
        ("after: + global context", NEW_DEFAULT),
        ("tuned configuration", best),
    ] + ([("tuned + temporal LoRA", lora_spec)] if lora_spec else [])
    grid_figure(bench, figure_specs, figure)
    log(f"wrote {out_dir / 'quality.json'}, {out_dir / 'quality.md'}, {figure} in {elapsed / 60:.1f} min")
    return 0


def defaults_only(model: Model, held, args, out_dir: Path, figure: Path, log) -> int:
    """The pack's defaults now (guided) and before (causal + global context) against the baselines."""
    t_start = time.perf_counter()
    bench = Bench(model, held, args.steps, "held-out", log)
    specs = [FULL, *BASELINES, NEW_DEFAULT, GUIDED]
    records = {canvas: {spec.name: bench.get(canvas, spec) for spec in specs} for canvas in CANVASES}
    md50 = BASELINES[2].name
    lines = [
        "# Seam-lab quality benchmark: the pack's defaults (`python -m bench.quality --defaults-only`)",
        "",
        f"Model `{model.name}`; {len(held.seeds)} held-out prompt × seed pairs (the same pairs as "
        f"`quality.md`), Euler {args.steps} steps, CFG {CFG}; tiles {TILE_CELLS} cells, overlap "
        f"{OVERLAP_CELLS} (MultiDiffusion 50 %: {MD50_CELLS}); {args.threads} CPU thread(s). Columns as "
        "in `quality.md`. PSNR, SSIM and layout PSNR compare with the native render of the same noise: a "
        "guided canvas follows its own whole-scene pass instead, so those columns do not judge it.",
        "",
    ]
    for canvas in CANVASES:
        rows = list(records[canvas].values())
        lines += [
            f"## {canvas}",
            "",
            table(rows, records[canvas][md50]["summary"]["cpu_seconds_per_canvas"]),
            "",
        ]
    elapsed = time.perf_counter() - t_start
    lines.append(f"Runtime {elapsed / 60:.1f} min. Image grid: `docs/{figure.name}`.")
    payload = {"model": model.name, "steps": args.steps, "results": records, "runtime_s": elapsed}
    (out_dir / "quality_defaults.json").write_text(json.dumps(jsonable(payload), indent=1))
    (out_dir / "quality_defaults.md").write_text("\n".join(lines) + "\n")
    labels = ("native full canvas", "independent tiles", "MultiDiffusion 50 %", "causal + context", "guided")
    grid_figure(
        bench, list(zip(labels, (FULL, BASELINES[0], BASELINES[2], NEW_DEFAULT, GUIDED), strict=True)), figure
    )
    log(f"wrote {out_dir / 'quality_defaults.md'} and {figure} in {elapsed / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
