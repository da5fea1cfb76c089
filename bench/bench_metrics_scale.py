"""The refine's Quality Metrics from 2K to 16K: ``refine_command.refine_report`` memory and time on CPU.

Run from the repository root: ``OMP_NUM_THREADS=1 python -m bench.bench_metrics_scale --label after``
(``--label before`` on the code before the metrics were read region by region). Each label's rows are
merged into ``bench/results/metrics_scale.{json,md}``.

Protocol. A synthetic 8-bit photo-like image (smooth colour fields, texture at several scales and
sensor-like noise; made in row strips, so the parent never holds it as floats) stands for the refined
output at 2K, 4K, 8K and 16K long side (squares); the input is the same image at half size, so the
reference is its bicubic enlargement, as the CLI's ``refine --scale 2`` judges. The plan is the refine's
(``refine_plan(h, w, 128, 32, 8)``: the embedded model's 128 px tiles, 32 px overlap, 8× autoencoder).
``refine_report`` (SSIM included, as the CLI writes it) runs in a forked child; its peak resident memory
is measured above the child's start (the image and the input live in the parent and are not counted:
the refine made them) with its wall time. A size whose memory would exceed ``--max-gib`` at the bytes per
pixel of the largest size measured under that label is not run and is reported as extrapolated.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from bench.bench_engine import measure_in_child
from temporal_tiling.refine import refine_plan
from temporal_tiling.refine_command import refine_report

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (2048, 4096, 8192, 16384)
TILE, OVERLAP, COMPRESSION = 128, 32, 8
MIB = 1024 * 1024
MAX_TILES = 1 << 20
STRIP = 512


def synthetic_photo(side: int, seed: int = 0) -> np.ndarray:
    """A ``side`` × ``side`` uint8 RGB image with a photo's statistics: colour fields that vary over the
    whole frame, texture at 40–300 px and Gaussian noise (σ 2/255), made strip by strip."""
    out = np.empty((side, side, 3), np.uint8)
    generator = torch.Generator().manual_seed(seed)
    x = torch.arange(side, dtype=torch.float32)
    phases = torch.tensor([0.0, 2.1, 4.2])[:, None, None]
    for top in range(0, side, STRIP):
        y = torch.arange(top, min(top + STRIP, side), dtype=torch.float32)[:, None]
        u, v = x / side, y / side
        field = 0.45 + 0.25 * torch.sin(2 * math.pi * (u + 0.6 * v) + phases)
        texture = 0.08 * torch.sin(x / 41 + 0.3 * y / 37) * torch.cos(y / 53)
        texture = texture + 0.05 * torch.sin((x + y) / 300)
        noise = torch.randn(3, y.shape[0], side, generator=generator) * (2 / 255)
        pixels = (field + texture + noise).clamp(0, 1) * 255
        out[top : top + y.shape[0]] = pixels.round().to(torch.uint8).permute(1, 2, 0).numpy()
    return out


def measure(refined: np.ndarray, source: np.ndarray) -> dict:
    """``refine_report`` of ``refined`` against ``source`` enlarged to its size, timed."""
    height, width = refined.shape[:2]
    plan = refine_plan(height, width, TILE, OVERLAP, COMPRESSION, max_tiles=MAX_TILES)
    start, cpu = time.perf_counter(), time.process_time()
    report = refine_report(source, refined, plan)
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "tiles": len(plan),
        "verdict": report.verdict(),
        "psnr": report.psnr,
        "ssim": report.ssim,
        "line_jump": report.line_jump,
        "gradient_ratio_mean": report.gradient_ratio_mean,
        "noise_lstar": report.noise_lstar,
    }


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return head.stdout.strip() or "unknown"


def run(label: str, sizes: tuple[int, ...], max_gib: float, timeout: float) -> list[dict]:
    rows, bytes_per_px, measured = [], None, None
    for side in sizes:
        pixels = side * side
        row = {"label": label, "side": side, "megapixels": pixels / 1e6}
        if bytes_per_px is not None and bytes_per_px * pixels > max_gib * 1024**3:
            row["extrapolated_peak_mib"] = bytes_per_px * pixels / MIB
            row["note"] = f"not run: {bytes_per_px:.0f} bytes/px as measured at {measured} px"
            rows.append(row)
            print(row, flush=True)
            continue
        refined = synthetic_photo(side)
        source = np.ascontiguousarray(synthetic_photo(side // 2, seed=1))
        row.update(measure_in_child(measure, refined, source, timeout=timeout))
        del refined, source
        if "peak_mib" in row:
            row["bytes_per_px"] = row["peak_mib"] * MIB / pixels
            bytes_per_px, measured = row["bytes_per_px"], side
        rows.append(row)
        print(row, flush=True)
    return rows


def write(rows: list[dict]) -> None:
    path = RESULTS / "metrics_scale.json"
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    labels = {r["label"] for r in rows}
    merged = [r for r in old if r["label"] not in labels] + rows
    payload = {"machine": platform.processor() or platform.machine(), "threads": 1, "rows": merged}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# refine_report memory and time, 2K–16K (`bench/bench_metrics_scale.py`)",
        "",
        "Synthetic 8-bit photo-like squares, the refine plan of 128 px tiles / 32 px overlap, SSIM on; one "
        "CPU thread on a shared 2-core machine. Peak RSS above the child's start (the image and the input "
        "are the parent's and not counted).",
        "",
        "| label (commit) | side px | Mpx | tiles | peak MiB above start | bytes/px | wall s | CPU s "
        "| verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in merged:
        label = f"{r['label']} ({r.get('commit', '?')})"
        if "extrapolated_peak_mib" in r:
            peak = f"~{r['extrapolated_peak_mib']:.0f} (extrapolated, not run)"
            lines.append(f"| {label} | {r['side']} | {r['megapixels']:.1f} | | {peak} | | | | {r['note']} |")
        elif "error" in r:
            lines.append(f"| {label} | {r['side']} | {r['megapixels']:.1f} | | error: {r['error']} | | | | |")
        else:
            lines.append(
                f"| {label} | {r['side']} | {r['megapixels']:.1f} | {r['tiles']} | {r['peak_mib']:.0f} | "
                f"{r['bytes_per_px']:.1f} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                f"{r['verdict'].split(':')[0]} |"
            )
    (RESULTS / "metrics_scale.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True, help="before / after: the code measured")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--max-gib", type=float, default=8.0, help="skip sizes extrapolated above this")
    parser.add_argument("--commit", default=None, help="the code's commit (default: git HEAD)")
    parser.add_argument("--timeout", type=float, default=1500.0, help="seconds per size")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = run(args.label, tuple(args.sizes), args.max_gib, args.timeout)
    for row in rows:
        row["commit"] = args.commit or _commit()
    write(rows)


if __name__ == "__main__":
    main()
