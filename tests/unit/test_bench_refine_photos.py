"""The photo bench keeps one set of result files per model and shows the autoencoder round trip where it
was measured."""

import pytest

from bench import bench_refine_photos as bench


def _row(delta_e: float) -> dict:
    excess = {"gradient_ratio": 1.0, "delta_e": 0.0, "drift_delta_e": 0.0}
    return {
        "seamless": True,
        "verdict": "seamless",
        "excess": excess,
        "line_jump": 1.0,
        "line_jump_vs_bicubic": 1.0,
        "delta_e": delta_e,
        "delta_e_coarse": delta_e / 2,
        "ssim": 0.9,
        "seconds": 1.0,
        "cpu_seconds": 1.0,
        "peak_mib": 10.0,
    }


def _payload(round_trip: bool) -> dict:
    run = {
        "photo": "coffee",
        "split": "held-out",
        "input": [600, 400],
        "scale": 1.0,
        "output": [600, 400],
        "tiles": 6,
        "tile_px": 256,
        "overlap_px": 64,
        "bicubic_line_jump": 2.0,
        "bicubic": _row(0.0),
        "methods": {bench.DEFAULT: _row(3.0), bench.BASELINE: _row(3.1)},
    }
    if round_trip:
        run["round_trip"] = _row(2.5)
    return {"config": {"model": "bench/models/other"}, "runs": {"coffee 1x": run}, "complete": False}


def test_another_model_writes_its_own_files_and_keeps_the_embedded_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    bench.write_results(_payload(round_trip=True), "_other", "Model `other`")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "refine_photos_other.json",
        "refine_photos_other.md",
    ]
    md = (tmp_path / "refine_photos_other.md").read_text()
    assert "bench_refine_photos --model bench/models/other`" in md
    assert "(../../docs/refine_photos_other_coffee_1x.jpg)" in md
    assert "256 px, overlap 64 px" in md, "the tile is the model's, not the embedded model's 128 px"
    assert bench.figure_path("", "coffee", 2.0).name == "refine_photos_coffee_2x.jpg"


@pytest.mark.parametrize("measured", [True, False])
def test_the_round_trip_row_and_goal_line_appear_only_where_measured(tmp_path, monkeypatch, measured: bool):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    bench.write_results(_payload(round_trip=measured), "_other", "Model `other`")
    md = (tmp_path / "refine_photos_other.md").read_text()
    assert ("autoencoder round trip (reference, no sampling) | seamless" in md) is measured
    assert ("for the autoencoder round trip alone" in md) is measured


def test_runs_with_only_some_methods_are_named_in_the_md(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    bench.write_results(_payload(round_trip=True), "_other", "Model `other`")
    md = (tmp_path / "refine_photos_other.md").read_text()
    assert "only some of the methods (the others not measured there): coffee 1x: guided (default), " in md


def test_a_wheel_photo_that_does_not_download_says_what_to_run(tmp_path, monkeypatch):
    class Failed:
        returncode = 1

    monkeypatch.setattr(bench, "PHOTO_CACHE", tmp_path)
    monkeypatch.setattr(bench.subprocess, "run", lambda *args, **kwargs: Failed())
    with pytest.raises(SystemExit, match=r"run `.* -m pip download --no-deps glymur==0\.14\.8 -d "):
        bench.PHOTOS["nemo"]()
