"""The GPU benchmark's entry runs end to end on CPU with its toy config, writes its JSON and table after
every run (so a run cut short keeps what it measured) and skips what its time budget cannot fit."""

import json

import pytest

from bench import bench_gpu

METHODS = ("causal", "independent", "multidiffusion@50%", "guided", "full")


def small(tmp_path, *extra: str) -> list[str]:
    return ["--small", "--device", "cpu", "--steps", "1", "--out", str(tmp_path), *extra]


def test_gpu_bench_small_config_runs_on_cpu_and_writes_results(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OUT", str(tmp_path / "device_out"))
    report = bench_gpu.main(small(tmp_path))
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert written["config"]["small"] and written["config"]["device"] == "cpu" and written["finished"]
    expected = [(canvas, label) for canvas in ("4K", "8K") for label in METHODS]
    assert [(r["canvas"], r["label"]) for r in written["runs"]] == expected
    for run in written["runs"]:
        assert run["finite"] and run["seconds"] > 0 and run["peak_mib"] >= 0 and run["token_steps"] > 0, run
    by_label = {r["label"]: r for r in written["runs"] if r["canvas"] == "8K"}
    assert by_label["multidiffusion@50%"]["tiles"] > by_label["causal"]["tiles"] > 1
    assert by_label["full"]["token_steps"] == 12**2
    assert [t["canvas"] for t in written["targets"]] == ["4K", "4K", "8K", "8K"]
    assert all(t["value"] is not None for t in written["targets"])
    assert "causal seconds / multidiffusion@50%" in (tmp_path / "gpu.md").read_text()
    assert report["runs"] == written["runs"]
    assert json.loads((tmp_path / "device_out" / "gpu.json").read_text())["runs"] == written["runs"]


def test_gpu_bench_cut_short_keeps_the_runs_it_finished(tmp_path, monkeypatch) -> None:
    run_one, calls = bench_gpu.run_one, []

    def dies_on_the_fifth_call(*args, **kwargs) -> dict:  # two warm-ups, then three measured runs
        calls.append(args[0]["canvas"])
        if len(calls) == 5:
            raise KeyboardInterrupt  # as a kill at the time limit would stop it mid-run
        return run_one(*args, **kwargs)

    monkeypatch.setattr(bench_gpu, "run_one", dies_on_the_fifth_call)
    with pytest.raises(KeyboardInterrupt):
        bench_gpu.main(small(tmp_path))
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert not written["finished"]
    assert [r["label"] for r in written["runs"] if "seconds" in r] == ["causal", "independent"]
    assert "Partial" in (tmp_path / "gpu.md").read_text()


def test_gpu_bench_budget_skips_runs_that_would_not_fit(tmp_path) -> None:
    written = bench_gpu.main(small(tmp_path, "--budget", "0"))
    assert written["finished"] and written["runs"]
    assert all(r["skipped"].startswith("time budget") and "seconds" not in r for r in written["runs"])
    assert "time budget (estimate " in (tmp_path / "gpu.md").read_text()
