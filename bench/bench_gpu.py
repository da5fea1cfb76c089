"""GPU speed and memory of SANA 1600M at 4K and 8K: causal BCLA, guided, independent, MultiDiffusion, full.

Run on a machine with an NVIDIA GPU: ``bash bench/gpu.sh`` (about 4 min on an H100 with the defaults,
6 at most). Writes ``bench/results/gpu.json`` and ``gpu.md`` after every measurement (and the same
files under ``$OUT`` when that variable is set), so a run cut short keeps what it measured. ``--small``
runs a toy config of the same code path on whatever device is there (CPU: seconds; the unit tests and
``bench/gpu_rehearsal.sh`` run it) and writes under ``bench/out/gpu_small`` unless ``--out`` says.

Protocol. The published SANA 1600M 4K transformer (sin-cos PE ×2, shift 6) with random weights, drawn
on the GPU in the original key layout (``fixtures.original_state_dict``) and built through the pack's
``detect_variant`` / ``build_transformer``, in ``--dtype`` (bf16). Random prompt embeddings of SANA's
shape (300 × 2304), CFG 4.5 (cond and uncond in one batch), Euler, ``--steps`` steps for every method,
through ``temporal_tiling.pipeline.generate`` (the engine call the CLI uses). Plans as in
``bench/bench_engine.py``: 1024 px tiles; causal, guided and independent on the 2-cell lock band with
tiles grown to fit (34 cells); MultiDiffusion on fixed 32-cell windows at 50 % overlap; the full pass
as the untiled reference. Causal and guided use a BCLA cache (cumulative, strength 1); guided renders
its 1024 px whole-scene guide in ``--steps`` steps, then every tile in ``steps × 0.3`` steps.

Measured per run: seconds per image (CUDA-synchronised wall time), peak memory
(``torch.cuda.max_memory_allocated``, reset per run; on CPU the resident-memory high-water mark above
the start) and the work, in token-steps (latent tokens through one model step, per CFG branch).

Time budget. ``--budget`` seconds from the start of ``main``, model build included. The second of
two one-tile warm-up runs gives a first seconds-per-token-step rate, every measured run a new one; a
run whose estimate (its token-steps × the slowest measured rate so far × 1.2) would end past the budget
is skipped and the next, cheaper ones are still tried. Order: 4K then 8K, each causal, independent,
MultiDiffusion, guided, full. A run that runs out of GPU memory is reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import diffusers
import torch

from bench.bench_engine import _rss_kib, fit_for, verdict
from lab import fixtures
from temporal_tiling.atomic import write_atomic
from temporal_tiling.bcla import BCLAConfig
from temporal_tiling.pipeline import GuideFirst, generate, guide_plan
from temporal_tiling.plan import TilePlan, make_plan
from temporal_tiling.sana import build_transformer, detect_variant

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SMALL_RESULTS = ROOT / "bench" / "out" / "gpu_small"
COMPRESSION = 32
TARGETS = {"vs_md50": 0.35, "vs_independent": 1.05}
SAFETY = 1.2
"""Estimated seconds of a run = token-steps × slowest rate so far × SAFETY (rates differ by method)."""

PUBLISHED = {
    "spec": fixtures.PUBLISHED_TRANSFORMERS["Sana_1600M_4Kpx"],
    "name": "Sana_1600M_4Kpx",
    "canvases": {"4K": 128, "8K": 256},  # latent cells per side
    "tile": 32,
    "causal_overlap": 2,
    "text": (300, 2304),
}
SMALL = {
    "spec": {"hidden": 64, "depth": 2, "grid": 8, "caption_channels": 32, "pe_scale": 2.0},
    "name": "tiny_4Kpx_like",
    "canvases": {"4K": 8, "8K": 12},
    "tile": 4,
    "causal_overlap": 1,
    "text": (4, 32),
}
METHODS = (  # (method, label, overlap as a share of the tile or "lock" for the causal lock band)
    ("causal", "causal", "lock"),
    ("independent", "independent", "lock"),
    ("multidiffusion", "multidiffusion@50%", 0.5),
    ("guided", "guided", "lock"),
    ("full", "full", 0.0),
)


def plan(cells: int, tile: int, overlap: int, method: str) -> TilePlan:
    c = COMPRESSION
    return make_plan(
        width_px=cells * c,
        height_px=cells * c,
        tile_width_px=tile * c,
        tile_height_px=tile * c,
        overlap_px=overlap * c,
        compression=c,
        fit=fit_for(method),
    )


def token_steps(row: dict, setup: dict, steps: int) -> int:
    """Latent tokens through one model step, summed over the run (per CFG branch): the run's work."""
    if row["method"] == "full":
        return row["cells"] ** 2 * steps
    tile_plan = plan(row["cells"], setup["tile"], row["overlap_cells"], row["method"])
    tiles = len(tile_plan) * tile_plan.tile_height * tile_plan.tile_width
    if row["method"] != "guided":
        return tiles * steps
    guide = guide_plan(tile_plan)
    return guide.canvas_height * guide.canvas_width * steps + tiles * GuideFirst().steps_per_tile(steps)


def build_model(setup: dict, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, float]:
    """The published transformer with random weights drawn on ``device``, through the pack's loader path."""
    sd = fixtures.original_state_dict(**setup["spec"], device=device, dtype=dtype)
    variant = detect_variant(sd, setup["name"])
    model = build_transformer(sd, variant, dtype, setup["name"]).to(device)
    return model, variant.flow_shift


class PeakMemory:
    """Peak bytes of one run: CUDA allocator high-water mark, or resident memory on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = 0
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self._base = _rss_kib("VmRSS:") * 1024

    def peak_mib(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20
        return (_rss_kib("VmHWM:") * 1024 - self._base) / 2**20


def runs_for(setup: dict, steps: int) -> list[dict]:
    tile, lock = setup["tile"], setup["causal_overlap"]
    rows = []
    for canvas, cells in setup["canvases"].items():
        for method, label, share in METHODS:
            overlap = lock if share == "lock" else round(tile * share)
            row = {"canvas": canvas, "cells": cells, "method": method, "label": label}
            row["overlap_cells"] = overlap
            row["tiles"] = 1 if method == "full" else len(plan(cells, tile, overlap, method))
            row["token_steps"] = token_steps(row, setup, steps)
            rows.append(row)
    return rows


def run_one(row: dict, model, setup: dict, steps: int, embeds, shift: float, memory: PeakMemory) -> dict:
    tile_plan = plan(row["cells"], setup["tile"], row["overlap_cells"], row["method"])
    kwargs = {"cache_config": BCLAConfig()} if row["method"] in ("causal", "guided") else {}
    memory.start()
    start = time.perf_counter()
    result = generate(
        tile_plan,
        model,
        *embeds,
        method=row["method"],
        steps=steps,
        cfg=4.5,
        shift=shift,
        seed=0,
        **kwargs,
    )
    if memory.cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    finite = bool(torch.isfinite(result.canvas).all())
    return {"seconds": seconds, "peak_mib": memory.peak_mib(), "finite": finite}


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="toy config of the same path (CPU: seconds)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument(
        "--dtype", default=None, help="weights and compute dtype (default: bfloat16 on GPU, float32 on CPU)"
    )
    parser.add_argument("--steps", type=int, default=None, help="Euler steps for every method (8; --small 2)")
    parser.add_argument(
        "--budget",
        type=float,
        default=270.0,
        help="seconds from the start (model build included) after which no run is started (270)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder of gpu.json, gpu.md (bench/results; --small bench/out)"
    )
    args = parser.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.dtype = args.dtype or ("bfloat16" if args.device.type == "cuda" else "float32")
    args.steps = args.steps or (2 if args.small else 8)
    args.out = args.out or (SMALL_RESULTS if args.small else RESULTS)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    began = time.perf_counter()
    device, dtype, steps = args.device, getattr(torch, args.dtype), args.steps
    setup = SMALL if args.small else PUBLISHED
    folders = [args.out] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - began:6.1f} s] {text}", file=sys.stderr, flush=True)

    torch.manual_seed(0)
    model, shift = build_model(setup, device, dtype)
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    generator = torch.Generator().manual_seed(1)
    embeds = tuple(torch.randn(1, *setup["text"], generator=generator).to(device, dtype) for _ in range(2))
    memory = PeakMemory(device)
    report = {
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__,
        },
        "command": " ".join(["python -m bench.bench_gpu", *(sys.argv[1:] if argv is None else argv)]),
        "config": {
            "model": f"{setup['name']} {setup['spec']}, random weights, {args.dtype}",
            "weights_mib": weights_mib,
            "steps": steps,
            "guided_tile_steps": GuideFirst().steps_per_tile(steps),
            "cfg": 4.5,
            "tile_cells": setup["tile"],
            "causal_overlap_cells": setup["causal_overlap"],
            "bcla": "cumulative, synchronous, strength 1 (causal and guided)",
            "device": str(device),
            "small": args.small,
            "budget_seconds": args.budget,
        },
        "build_seconds": time.perf_counter() - began,
        "runs": runs_for(setup, steps),
        "targets": [],
        "total_seconds": 0.0,
        "finished": False,
    }
    log(f"model ready on {device} ({weights_mib:.0f} MiB of {args.dtype} weights)")
    save(report, folders, began)

    warm = {"canvas": "warm-up", "cells": setup["tile"], "method": "causal", "overlap_cells": 0}
    rates = []  # seconds per token-step: the warm-up's (used until a run is measured), then each run's
    for _ in range(2):  # the first call pays one-off set-up (kernels, allocator); the second is timed
        warm_seconds = run_one(warm, model, setup, 1, embeds, shift, memory)["seconds"]
    rates.append(warm_seconds / token_steps(warm, setup, 1))
    log(f"warm-up: {warm_seconds:.2f} s for one tile-step")

    for row in report["runs"]:
        estimate = SAFETY * row["token_steps"] * max(rates[1:] or rates)
        elapsed = time.perf_counter() - began
        if elapsed + estimate > args.budget:
            row["skipped"] = f"time budget (estimate {estimate:.0f} s at {elapsed:.0f}/{args.budget:.0f} s)"
        else:
            try:
                row |= run_one(row, model, setup, steps, embeds, shift, memory)
                rates.append(row["seconds"] / row["token_steps"])
            except torch.OutOfMemoryError as error:
                row["error"] = f"out of memory: {str(error).splitlines()[0]}"
                torch.cuda.empty_cache()
        measured = f"{row['seconds']:.2f} s, {row['peak_mib']:.0f} MiB" if "seconds" in row else None
        log(f"{row['canvas']} {row['label']}: {measured or row.get('skipped') or row.get('error')}")
        save(report, folders, began)
    report["finished"] = True
    save(report, folders, began)
    log(f"wrote gpu.json and gpu.md in {', '.join(map(str, folders))}")
    print(markdown(report), flush=True)
    return report


def save(report: dict, folders: list[Path], began: float) -> None:
    """Write the report as it stands (all or nothing per file): a run cut short keeps what it measured."""
    report["targets"] = targets(report["runs"])
    report["total_seconds"] = time.perf_counter() - began
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "gpu.json", (json.dumps(report, indent=2) + "\n").encode())
        write_atomic(folder / "gpu.md", markdown(report).encode())


def targets(rows: list[dict]) -> list[dict]:
    checks = []
    for canvas in dict.fromkeys(r["canvas"] for r in rows):
        by = {r["label"]: r for r in rows if r["canvas"] == canvas}
        causal = by["causal"].get("seconds")
        for key, label in (("vs_md50", "multidiffusion@50%"), ("vs_independent", "independent")):
            other = by[label].get("seconds")
            value = causal / other if causal and other else None
            checks.append(
                {
                    "canvas": canvas,
                    "check": f"causal seconds / {label}",
                    "value": value,
                    "target": TARGETS[key],
                    "verdict": verdict(value, TARGETS[key]),
                }
            )
    return checks


def markdown(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    state = "" if report["finished"] else " **Partial: the run was still going when this was written.**"
    lines = [
        "# GPU benchmark: SANA 1600M 4K, causal BCLA, guided, independent, MultiDiffusion, full pass",
        "",
        f"`{report['command']}` on {m['device']} (Python {m['python']}, torch {m['torch']}, "
        f"CUDA {m['cuda']}, diffusers {m['diffusers']}).",
        f"Model: {cfg['model']} ({cfg['weights_mib']:.0f} MiB). {cfg['steps']} Euler steps "
        f"(guided: the guide {cfg['steps']}, each tile {cfg['guided_tile_steps']}), "
        f"CFG {cfg['cfg']}, tiles {cfg['tile_cells']} cells, "
        f"causal lock band {cfg['causal_overlap_cells']} cells, BCLA "
        f"{cfg['bcla']}. Total {report['total_seconds']:.0f} s of a {cfg['budget_seconds']:.0f} s budget "
        f"(model built in {report['build_seconds']:.0f} s).{state}",
        "",
        "| canvas | method | tiles | token-steps | seconds per image | peak MiB, weights included | finite |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        head = f"| {r['canvas']} | {r['label']} | {r['tiles']} | {r['token_steps']} |"
        if "seconds" in r:
            lines.append(f"{head} {r['seconds']:.2f} | {r['peak_mib']:.0f} | {r['finite']} |")
        else:
            lines.append(f"{head} {r.get('skipped') or r.get('error') or 'not run yet'} | – | – |")
    lines += ["", "| canvas | check | value | target | verdict |", "| --- | --- | --- | --- | --- |"]
    for t in report["targets"]:
        value = "–" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(f"| {t['canvas']} | {t['check']} | {value} | ≤ {t['target']:.2f} | {t['verdict']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
