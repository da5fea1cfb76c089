"""The GPU benchmark's entry runs end to end on CPU with its toy config and writes its JSON and table."""

import json

from bench import bench_gpu


def test_gpu_bench_small_config_runs_on_cpu_and_writes_results(tmp_path) -> None:
    report = bench_gpu.main(["--small", "--device", "cpu", "--steps", "1", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert written["config"]["small"] and written["config"]["device"] == "cpu"
    labels = {(r["canvas"], r["label"]) for r in written["runs"]}
    methods = ("causal", "independent", "multidiffusion@50%", "multidiffusion@25%", "full")
    assert labels == {(c, m) for c in ("4K", "8K") for m in methods}
    for run in written["runs"]:
        assert run["finite"] and run["seconds"] > 0 and run["peak_mib"] >= 0, run
    by_label = {r["label"]: r for r in written["runs"] if r["canvas"] == "8K"}
    assert by_label["multidiffusion@50%"]["tiles"] > by_label["causal"]["tiles"] > 1
    assert [t["canvas"] for t in written["targets"]] == ["4K", "4K", "8K", "8K"]
    assert all(t["value"] is not None for t in written["targets"])
    assert "causal seconds / multidiffusion@50%" in (tmp_path / "gpu.md").read_text()
    assert report["runs"] == written["runs"]
