"""The published-size ComfyUI bench (``bench/bench_comfy_scale.py``) run at toy size: the same files in the
same ComfyUI model folders and the same graph (Load SANA, CLIPTextEncode, KSampler guide, Tile Planner,
BCLA Cache, Global Context Encoder, Causal SANA Sampler, VAEDecodeTiled), so the bench cannot rot."""

from __future__ import annotations

import json

import pytest
import torch

from bench import bench_comfy_scale

STEPS = 2


# variant -> what Load SANA must detect: flow shift, PE interpolation scale, PE grid
DETECTED = {"600m-pth": (3.0, None, 4), "600m-diffusers": (3.0, None, 4), "1600m-4k": (6.0, 2.0, 128)}


@pytest.mark.parametrize("variant", DETECTED)
def test_comfy_scale_bench_runs_its_graph_at_toy_size(comfy, tmp_path, variant) -> None:
    threads = torch.get_num_threads()
    args = ["--size", "small", "--variant", variant, "--workdir", str(tmp_path)]
    args += ["--results", str(tmp_path / "results"), "--steps", str(STEPS), "--cfg", "2.0"]
    report = bench_comfy_scale.main([*args, "--threads", str(threads)])

    assert report["variant"].startswith("SANA")
    detected = (report["flow_shift"], report["pe_interpolation_scale"], report["pe_grid"])
    assert detected == DETECTED[variant]
    assert report["dtypes"] | {"vae": None} == {
        "transformer_loaded": "torch.bfloat16",
        "transformer_compute": "torch.float32",
        "text_encoder": "torch.bfloat16",
        "vae": None,
    }
    assert report["text"]["template"] and report["text"]["embeds_shape"] == [1, 300, 32]
    causal = report["causal"]
    assert causal["tiles"] == 4 and causal["tile_calls"] == 4 * STEPS and causal["call_batch"] == 2
    assert causal["seed_pass_calls"] == STEPS  # seed_sigma 0: one guide call per noise level
    assert causal["guide_ksampler_calls"] == STEPS and causal["canvas_finite"]
    cache = [tile["cache_bytes"] for tile in causal["per_tile"]]
    assert 0 < cache[0] < cache[1] == cache[2] == cache[3]  # cumulative: flat once a tile is summed in
    assert causal["cache_bytes_max"] == max(cache)
    assert causal["seconds_per_call"] > 0 and report["peak_rss_mib"] > 0
    assert report["decode"]["image_shape"] == [1, 64 * 4, 64 * 4, 3] and report["decode"]["finite"]
    stages = {"load", "text", "free_text_encoder", "cast", "guide_ksampler", "causal_sampler", "decode"}
    assert set(report["stages"]) == stages
    assert report["text"]["encoder_freed"]
    saved = json.loads((tmp_path / "results" / "comfy_scale.json").read_text())
    assert set(saved) == {variant} and saved[variant]["causal"]["per_tile"] == causal["per_tile"]
    assert "seconds per model call per tile" in (tmp_path / "results" / "comfy_scale.md").read_text()
