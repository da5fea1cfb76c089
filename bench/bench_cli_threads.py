"""Wall time of the README's quick start at several CPU thread counts, on the machine it runs on.

Run from the repository root: ``python -m bench.bench_cli_threads`` (about 5-20 min on a busy 2-core
CPU). Writes ``bench/results/cli_threads.json`` and ``bench/results/cli_threads.md``.

Protocol. Each run is the quick-start command (``python -m temporal_tiling generate --prompt "a blue to
pink sky with one sun at top left" --width 512 --height 256``, embedded model, CPU) in a fresh
interpreter, into a temporary folder, with ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` removed from
the environment so that "default" is what a user who set nothing gets. The settings run round-robin
(one run of each, then the next round) so that a change in the machine's load hits every setting
alike. Reported per run: wall time of the whole command (start-up and model loading included, as a
user waits for it), the CPU time it used (user + system of the child) and the 1-minute load average
just before it started (other jobs on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
QUICK_START = [
    "generate",
    "--prompt",
    "a blue to pink sky with one sun at top left",
    "--width",
    "512",
    "--height",
    "256",
    "--device",
    "cpu",
]


def _run(threads: str, out: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    flags = [] if threads == "default" else ["--threads", threads]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "temporal_tiling", *QUICK_START, *flags, "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"the quick start failed with --threads {threads}:\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"threads": threads, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load_before": load}


def _markdown(runs: list[dict], settings: list[str], meta: dict) -> str:
    lines = [
        "# Quick start wall time against CPU thread count",
        "",
        f"`python -m bench.bench_cli_threads --threads {' '.join(settings)} --rounds {meta['rounds']}` "
        f"on {meta['platform']}, {meta['cpus']} CPUs, python {meta['python']}.",
        "Each row: one setting, its runs in round order. Wall time includes start-up and model loading.",
        "",
        "| --threads | wall s (median) | wall s (each run) | CPU s (median) | load avg before (each run) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for setting in settings:
        mine = [r for r in runs if r["threads"] == setting]
        walls = [r["wall_s"] for r in mine]
        cpus = [r["cpu_s"] for r in mine]
        loads = ", ".join(f"{r['load_before']:.1f}" for r in mine)
        lines.append(
            f"| {setting} | {statistics.median(walls):.1f} | {', '.join(f'{w:.1f}' for w in walls)} "
            f"| {statistics.median(cpus):.1f} | {loads} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", nargs="+", default=["default", "1", "2", "4"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--name", default="cli_threads", help="results file name (without suffix)")
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for setting in args.threads:
                run = _run(setting, Path(tmp) / f"{setting}-{round_index}")
                run["round"] = round_index
                runs.append(run)
                print(json.dumps(run), flush=True)
    meta = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "rounds": args.rounds,
        "command": ["python", "-m", "temporal_tiling", *QUICK_START],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({**meta, "runs": runs}, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(_markdown(runs, args.threads, meta))


if __name__ == "__main__":
    main()
