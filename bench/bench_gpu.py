"""GPU speed and memory of SANA 1600M at 4K and 8K: causal BCLA vs independent, MultiDiffusion, full pass.

Run on a machine with an NVIDIA GPU: ``bash bench/gpu.sh`` (about 10 min on an H200 with the defaults).
Writes ``bench/results/gpu.json`` and ``gpu.md``. ``--small`` runs a toy config of the same code path on
whatever device is there (CPU: seconds; the unit tests run it).

Protocol. The published SANA 1600M 4K transformer (sin-cos PE ×2, shift 6) with random weights, drawn
on the GPU in the original key layout (``fixtures.original_state_dict``) and built through the pack's
``detect_variant`` / ``build_transformer``, in ``--dtype`` (bf16). Random prompt embeddings of SANA's
shape (300 × 2304), CFG 4.5 (cond and uncond in one batch), Euler, ``--steps`` steps for every method,
through ``temporal_tiling.pipeline.generate`` (the engine call the CLI uses). Plans as in
``bench/bench_engine.py``: 1024 px tiles; causal and independent on the 2-cell lock band with tiles
grown to fit; MultiDiffusion on fixed windows at 50 % and 25 % overlap. Seconds per image (CUDA
synchronised wall time) and peak memory (``torch.cuda.max_memory_allocated``, reset per run; on CPU the
resident-memory high-water mark above the start). A run whose estimated time (from the runs before it)
would pass ``--budget`` is skipped; a full pass that runs out of memory is reported as such.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import diffusers
import torch

from bench.bench_engine import _rss_kib, fit_for, verdict
from lab import fixtures
from temporal_tiling.bcla import BCLAConfig
from temporal_tiling.pipeline import generate
from temporal_tiling.plan import TilePlan, make_plan
from temporal_tiling.sana import build_transformer, detect_variant

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
COMPRESSION = 32
TARGETS = {"vs_md50": 0.35, "vs_independent": 1.05}

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


def runs_for(setup: dict) -> list[dict]:
    tile, lock = setup["tile"], setup["causal_overlap"]
    rows = []
    for canvas, cells in setup["canvases"].items():
        for method, label, overlap in (
            ("causal", "causal", lock),
            ("independent", "independent", lock),
            ("multidiffusion", "multidiffusion@50%", tile // 2),
            ("multidiffusion", "multidiffusion@25%", tile // 4),
            ("full", "full", 0),
        ):
            tiles = 1 if method == "full" else len(plan(cells, tile, overlap, method))
            units = (cells / tile) ** 2 if method == "full" else tiles
            rows.append(
                {"canvas": canvas, "cells": cells, "method": method, "label": label, "overlap_cells": overlap}
                | {"tiles": tiles, "units": units}
            )
    return rows


def run_one(row: dict, model, setup: dict, args, embeds, shift: float, memory: PeakMemory) -> dict:
    tile_plan = plan(row["cells"], setup["tile"], row["overlap_cells"], row["method"])
    kwargs = {"cache_config": BCLAConfig()} if row["method"] == "causal" else {}
    memory.start()
    start = time.perf_counter()
    result = generate(
        tile_plan,
        model,
        *embeds,
        method=row["method"],
        steps=args.steps,
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="toy config of the same path (CPU: seconds)")
    parser.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    parser.add_argument(
        "--dtype", default=None, help="weights and compute dtype (default: bfloat16 on GPU, float32 on CPU)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="Euler steps for every method (10; --small 2)"
    )
    parser.add_argument("--budget", type=float, default=480.0, help="seconds of runs; later runs skipped")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu.json / gpu.md")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    args.steps = args.steps or (2 if args.small else 10)
    dtype = getattr(torch, args.dtype)
    setup = SMALL if args.small else PUBLISHED
    torch.manual_seed(0)
    model, shift = build_model(setup, device, dtype)
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    generator = torch.Generator().manual_seed(1)
    embeds = tuple(torch.randn(1, *setup["text"], generator=generator).to(device, dtype) for _ in range(2))
    memory = PeakMemory(device)
    build_seconds = time.perf_counter() - began

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {text}", file=sys.stderr, flush=True)

    log(f"model ready on {device} ({weights_mib:.0f} MiB of {args.dtype} weights)")
    warm = {"canvas": "warm-up", "cells": setup["tile"], "method": "causal", "overlap_cells": 0}
    run_one(warm, model, setup, argparse.Namespace(steps=1), embeds, shift, memory)
    rows = runs_for(setup)
    per_unit: list[float] = []  # seconds per tile per step
    spent = 0.0
    for row in rows:
        estimate = 1.3 * row["units"] * args.steps * (max(per_unit[-3:]) if per_unit else 0.0)
        if spent + estimate > args.budget:
            row["skipped"] = f"time budget (estimated {estimate:.0f} s)"
            log(f"{row['canvas']} {row['label']}: skipped")
            continue
        try:
            row |= run_one(row, model, setup, args, embeds, shift, memory)
        except torch.cuda.OutOfMemoryError as error:
            row["error"] = f"out of memory: {str(error).splitlines()[0]}"
            torch.cuda.empty_cache()
        spent += row.get("seconds", 0.0)
        if "seconds" in row:
            per_unit.append(row["seconds"] / row["units"] / args.steps)
        log(f"{row['canvas']} {row['label']}: {row.get('seconds', row.get('error'))}")
    report = {
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "diffusers": diffusers.__version__,
        },
        "command": " ".join(["python -m bench.bench_gpu", *(sys.argv[1:] if argv is None else argv)]),
        "config": {
            "model": f"{setup['name']} {setup['spec']}, random weights, {args.dtype}",
            "weights_mib": weights_mib,
            "steps": args.steps,
            "cfg": 4.5,
            "tile_cells": setup["tile"],
            "causal_overlap_cells": setup["causal_overlap"],
            "bcla": "cumulative, synchronous, strength 1",
            "device": str(device),
            "small": args.small,
        },
        "build_seconds": build_seconds,
        "runs": rows,
        "targets": targets(rows),
        "total_seconds": time.perf_counter() - began,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu.md").write_text(markdown(report))
    log(f"wrote {args.out / 'gpu.json'} and gpu.md")
    return report


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
    lines = [
        "# GPU benchmark: SANA 1600M 4K, causal BCLA vs independent, MultiDiffusion, full pass",
        "",
        f"`{report['command']}` on {m['device']} (torch {m['torch']}, CUDA {m['cuda']}, diffusers "
        f"{m['diffusers']}).",
        f"Model: {cfg['model']} ({cfg['weights_mib']:.0f} MiB). {cfg['steps']} Euler steps, "
        f"CFG {cfg['cfg']}, tiles {cfg['tile_cells']} cells, "
        f"causal lock band {cfg['causal_overlap_cells']} cells, BCLA "
        f"{cfg['bcla']}. Total {report['total_seconds']:.0f} s (model built in "
        f"{report['build_seconds']:.0f} s).",
        "",
        "| canvas | method | tiles | seconds per image | peak memory MiB | finite |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        if "seconds" in r:
            lines.append(
                f"| {r['canvas']} | {r['label']} | {r['tiles']} | {r['seconds']:.2f} | {r['peak_mib']:.0f} "
                f"| {r['finite']} |"
            )
        else:
            lines.append(
                f"| {r['canvas']} | {r['label']} | {r['tiles']} | "
                f"{r.get('skipped') or r.get('error')} | – | – |"
            )
    lines += ["", "| canvas | check | value | target | verdict |", "| --- | --- | --- | --- | --- |"]
    for t in report["targets"]:
        value = "–" if t["value"] is None else f"{t['value']:.3f}"
        lines.append(f"| {t['canvas']} | {t['check']} | {value} | ≤ {t['target']:.2f} | {t['verdict']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
