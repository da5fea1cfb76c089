"""SANA at its published sizes through the pack's loaders, causal sampler and tiled DC-AE decode (CPU).

Run from the repository root: ``python -m bench.bench_scale`` (about 13 CPU minutes, 40 min of wall
time on a shared 2-core CPU; peak resident memory 7 GiB). Writes ``bench/results/scale.json`` and
``bench/results/scale.md``; the random model files go to ``--workdir`` (about 6 GB, kept for reruns;
``--rewrite`` redraws them).

Protocol. No SANA weights can be downloaded here, so every model is random N(0, 0.02²) weights in the
exact key layout and shapes of its published checkpoint (``lab.fixtures``), saved in
bf16 and read back through the pack's own loaders:

* ``Sana_600M_1024px_BF16.pth`` (original layout) through ``load_transformer_file`` and the same
  weights as a diffusers folder through ``load_transformer_folder`` (checksums must agree);
  ``Sana_1600M_4Kpx_BF16.pth`` (sin-cos PE table at interpolation scale 2) through
  ``load_transformer_file``: variant, flow shift and PE scale must be detected from the weights.
* SANA's DC-AE f32c32 (312 M parameters, diffusers layout, one ``.safetensors``) through
  ``load_vae_file``.
* A Gemma-2-2B-shaped text encoder (full width and vocabulary, ``--gemma-layers`` of its 26 layers)
  through ``load_text_encoder`` in bf16, encoding a prompt behind SANA's complex human instruction
  and the empty negative prompt. The tokenizer is word level (Gemma's SentencePiece vocabulary cannot
  be downloaded), so the template tokenises into its words instead of Gemma's pieces.

Every stage runs in a forked child (``bench_engine.measure_in_child``): wall and CPU seconds, peak
resident memory (VmHWM). The causal stage loads the 1600M 4K file in bf16 and runs a 2×2 plan of
1024 px tiles (2-cell lock band, tiles grown to 34 cells), ``--steps`` Euler step(s), BCLA cumulative,
a guide pass (``bcla_seed`` from the model run once on a low-res guide, plus ``skip_residual``).
This CPU has no bf16 matrix units (AVX2: bf16 matmul 3.7 GFLOP/s against 43 in float32, measured),
so the model is cast to ``--compute-dtype`` float32 after loading; the bf16 path itself is checked by
the unit tests and by ``bench/bench_gpu.py``. The memory stage runs the same width with
``--memory-layers`` layers (activations do not depend on depth; weights and BCLA cache scale with it
exactly) on 1×1, 2×2, 3×3 tile plans and on full-canvas passes, and the memory model extrapolates
2K–16K from those measured figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import diffusers
import torch
from diffusers import SanaTransformer2DModel
from safetensors.torch import save_file
from transformers import Gemma2Config, Gemma2Model

from bench.bench_engine import (
    CAUSAL_OVERLAP,
    COMPRESSION,
    TILE,
    CacheSizeHost,
    _rss_kib,
    measure_in_child,
    plan_for,
)
from lab import fixtures
from temporal_tiling import pipeline
from temporal_tiling.bcla import MODES, BCLAConfig
from temporal_tiling.context import ContextSettings
from temporal_tiling.contracts import TileJob
from temporal_tiling.flow import CFGDenoiser
from temporal_tiling.pipeline import FlowSampling, RunSettings
from temporal_tiling.plan import make_plan
from temporal_tiling.sampling import canvas_noise
from temporal_tiling.sana import (
    build_transformer,
    convert_original,
    decode_tiled,
    detect_variant,
    load_text_encoder,
    load_transformer_file,
    load_transformer_folder,
    load_vae_file,
)
from temporal_tiling.sana.text import COMPLEX_HUMAN_INSTRUCTION
from temporal_tiling.sana.vae import SANA_DCAE_F32C32_CONFIG

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PROMPT = "a wide mountain valley at dawn, a river, pine forests and one small red cabin"
FILES = {
    "600M_pth": "Sana_600M_1024px_BF16.pth",
    "600M_folder": "Sana_600M_1024px_diffusers",
    "1600M_pth": "Sana_1600M_4Kpx_BF16.pth",
    "dcae": "dc-ae-f32c32-sana-1.0.safetensors",
    "gemma": "gemma-2-2b-shaped",
    "embeds": "prompt_embeds.pt",
    "canvas": "canvas_latent.pt",
}
CANVASES_PX = {"2K": 2048, "4K": 4096, "8K": 8192, "16K": 16384}
GIB = 1024**3
MIB = 1024**2


def _mib(n: float) -> float:
    return n / MIB


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict:
    return {"seconds": time.perf_counter() - start[0], "cpu_seconds": time.process_time() - start[1]}


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# --- stage: write the random published-size files -------------------------------------------------


def stage_write(work: Path, gemma_layers: int) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    dtype = torch.bfloat16
    out: dict = {}
    start = _clock()
    sd = fixtures.original_state_dict(**fixtures.PUBLISHED_TRANSFORMERS["Sana_600M_1024px"], dtype=dtype)
    torch.save(sd, work / FILES["600M_pth"])
    variant = detect_variant(sd, FILES["600M_pth"])
    folder = work / FILES["600M_folder"] / "transformer"
    folder.mkdir(parents=True, exist_ok=True)
    # The folder holds the same weights in diffusers keys; safetensors needs unshared storage.
    converted = {k: v.clone() for k, v in convert_original(sd).items()}
    del sd
    save_file(converted, str(folder / "diffusion_pytorch_model.safetensors"))
    del converted
    with torch.device("meta"):
        SanaTransformer2DModel(**variant.config).save_config(folder)
    out["600M"] = _since(start)
    start = _clock()
    sd = fixtures.original_state_dict(**fixtures.PUBLISHED_TRANSFORMERS["Sana_1600M_4Kpx"], dtype=dtype)
    torch.save(sd, work / FILES["1600M_pth"])
    del sd
    out["1600M"] = _since(start)
    start = _clock()
    save_file(fixtures.published_dcae_state_dict(dtype), str(work / FILES["dcae"]))
    out["dcae"] = _since(start)
    start = _clock()
    fixtures.write_gemma2_folder(work / FILES["gemma"], gemma_layers, dtype)
    out["gemma"] = _since(start)
    out["file_bytes"] = {
        key: sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
        for key in ("600M_pth", "600M_folder", "1600M_pth", "dcae", "gemma")
        if (path := work / FILES[key]).exists()
    }
    return out


# --- stage: loaders --------------------------------------------------------------------------------


def stage_load(work: Path, key: str) -> dict:
    start = _clock()
    path = work / FILES[key]
    loader = load_transformer_folder if path.is_dir() else load_transformer_file
    model, variant = loader(path, dtype=torch.bfloat16)
    out = _since(start)
    pe = model.patch_embed.pos_embed
    out |= {
        "file": path.name,
        "loader": loader.__name__,
        "variant": variant.name,
        "size": variant.size,
        "resolution": variant.resolution,
        "flow_shift": variant.flow_shift,
        "interpolation_scale": variant.interpolation_scale,
        "pos_embed_tokens": None if pe is None else int(pe.shape[1]),
        "params_m": fixtures.param_count(model) / 1e6,
        "dtype": str(next(model.parameters()).dtype),
        "weight_mib": _mib(_param_bytes(model)),
        "checksum": float(sum(p.float().sum() for p in model.parameters())),
    }
    return out


# --- stage: text encoder ---------------------------------------------------------------------------


def stage_text(work: Path) -> dict:
    start = _clock()
    encoder = load_text_encoder(work / FILES["gemma"], dtype=torch.bfloat16)
    out = {"load": _since(start)}
    layers = encoder.text_model.config.num_hidden_layers
    results = {}
    for name, prompt in (("prompt", PROMPT), ("negative", "")):
        tokens = encoder.tokenize(prompt)
        start = _clock()
        embeds, mask = encoder.encode_tokens(tokens)
        assert torch.isfinite(embeds).all(), f"{name} embeddings are not finite"
        results[name] = (embeds, mask)
        out[name] = _since(start) | {
            "tokens_in": int(tokens["input_ids"].shape[1]),
            "template": encoder.uses_instruction(prompt),
            "embeds_shape": list(embeds.shape),
            "dtype": str(embeds.dtype),
        }
    torch.save({k: (e.float(), m) for k, (e, m) in results.items()}, work / FILES["embeds"])
    with torch.device("meta"):
        full = Gemma2Model(Gemma2Config(**fixtures.GEMMA2_2B_CONFIG))
    out |= {
        "layers_run": layers,
        "weight_mib": _mib(_param_bytes(encoder.text_model)),
        "full_params_m": fixtures.param_count(full) / 1e6,
        "full_bf16_mib": _mib(fixtures.param_count(full) * 2),
        "template_lines": len(COMPLEX_HUMAN_INSTRUCTION),
        "cpu_seconds_per_layer_prompt": out["prompt"]["cpu_seconds"] / layers,
    }
    return out


# --- helpers shared by the sampler stages ----------------------------------------------------------


def _embeds(work: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return torch.load(work / FILES["embeds"])


class CallTimer:
    """Wall/CPU seconds and token count of every transformer forward (hooks, no patching)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[dict] = []
        self._start: tuple[float, float] | None = None
        self._handles = [
            model.register_forward_pre_hook(self._pre, with_kwargs=True),
            model.register_forward_hook(self._post, with_kwargs=True),
        ]

    def _pre(self, module, args, kwargs) -> None:
        self._start = _clock()
        x = args[0] if args else kwargs["hidden_states"]
        self._tokens, self._batch = x.shape[-2] * x.shape[-1], x.shape[0]

    def _post(self, module, args, kwargs, output) -> None:
        self.calls.append(_since(self._start) | {"tokens": self._tokens, "batch": self._batch})

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


class TileMeter(CacheSizeHost):
    """Per tile: wall/CPU seconds, model calls, tokens, cache bytes and resident memory after it; and
    the time of the global context's seed pass."""

    def __init__(self, *args, timer: CallTimer, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.timer = timer
        self.per_tile: list[dict] = []
        self.seed_pass: dict | None = None

    def seed_call(self, guide: torch.Tensor, noise: torch.Tensor, sigma: float) -> None:
        start = _clock()
        super().seed_call(guide, noise, sigma)
        self.seed_pass = _since(start)

    def denoise(self, job: TileJob) -> torch.Tensor:
        calls = len(self.timer.calls)
        start = _clock()
        result = super().denoise(job)
        self.per_tile.append(
            _since(start)
            | {
                "tile": job.tile.index,
                "model_calls": len(self.timer.calls) - calls,
                "tokens": job.tile.height * job.tile.width,
                "cache_bytes": self.sizes[-1],
                "rss_mib": _rss_kib("VmRSS:") / 1024,
                "hwm_mib": _rss_kib("VmHWM:") / 1024,
            }
        )
        return result


def _causal_run(
    model: SanaTransformer2DModel,
    embeds: dict,
    grid: int,
    steps: int,
    cfg: float,
    guide: bool,
    shift: float,
    mode: str = "cumulative",
) -> tuple[dict, torch.Tensor]:
    """A causal n×n plan of 1024 px tiles with BCLA through ``pipeline.run``; per tile: seconds, cache
    bytes, resident memory. ``guide``: a global context (skip residual and a one-level BCLA seed pass)
    on a random low-res guide."""
    side = TILE * grid
    plan = plan_for(side, CAUSAL_OVERLAP, "causal")
    (cond, cond_mask), (uncond, uncond_mask) = embeds["prompt"], embeds["negative"]
    timer = CallTimer(model)
    host = TileMeter(
        model,
        cond,
        uncond,
        FlowSampling(steps, cfg, shift=shift),
        prompt_mask=cond_mask,
        negative_mask=uncond_mask,
        timer=timer,
    )
    context = None
    if guide:
        low = canvas_noise(7, (1, model.config.in_channels, 8 * grid, 8 * grid)) * 0.5
        context = ContextSettings(low, skip_residual=0.3, bcla_seed=0.5, seed_sigma=0.5)
    settings = RunSettings(method="causal", cache_config=BCLAConfig(mode=mode), context=context)
    out: dict = {"tiles": len(plan), "tile_cells": plan.tile_width, "canvas_cells": side}
    before = _rss_kib("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # peak from here: sampling on top of loaded weights
    try:
        start = _clock()
        result = pipeline.run(plan, host, settings, (1, model.config.in_channels))
        sampler = _since(start)
    finally:
        timer.remove()
    if host.seed_pass is not None:
        out["guide_pass"] = host.seed_pass | {"guide_cells": 8 * grid}
        sampler = {key: value - host.seed_pass[key] for key, value in sampler.items()}
    out["sampler"] = sampler
    assert torch.isfinite(result.canvas).all(), "the canvas is not finite"
    tile_calls = [c for c in timer.calls if c["tokens"] == plan.tile_width * plan.tile_height]
    per_tile = host.per_tile
    out |= {
        "peak_above_start_mib": (_rss_kib("VmHWM:") - before) / 1024,
        "per_tile": per_tile,
        "cache_bytes_max": max(t["cache_bytes"] for t in per_tile),
        "cache_bytes_final": host.run_cache.nbytes(),
        "seconds_per_call": sum(c["seconds"] for c in tile_calls) / len(tile_calls),
        "cpu_seconds_per_call": sum(c["cpu_seconds"] for c in tile_calls) / len(tile_calls),
        "call_batch": tile_calls[0]["batch"],
        "canvas_std": float(result.canvas.std()),
    }
    return out, result.canvas


# --- stage: causal run at full depth ------------------------------------------------------------------


def stage_causal(work: Path, steps: int, cfg: float, compute_dtype: str) -> dict:
    start = _clock()
    model, variant = load_transformer_file(work / FILES["1600M_pth"], dtype=torch.bfloat16)
    out = {
        "load": _since(start) | {"rss_mib": _rss_kib("VmRSS:") / 1024, "hwm_mib": _rss_kib("VmHWM:") / 1024}
    }
    out |= {
        "variant": variant.name,
        "flow_shift": variant.flow_shift,
        "bf16_weight_mib": _mib(_param_bytes(model)),
    }
    model = model.to(getattr(torch, compute_dtype))
    out["compute_dtype"], out["weight_mib"] = compute_dtype, _mib(_param_bytes(model))
    run, canvas = _causal_run(model, _embeds(work), 2, steps, cfg, True, variant.flow_shift)
    torch.save(canvas, work / FILES["canvas"])
    return out | run | {"steps": steps, "cfg": cfg}


# --- stage: DC-AE --------------------------------------------------------------------------------------


def stage_decode(work: Path, crop: int, tile: int, overlap: int) -> dict:
    start = _clock()
    vae = load_vae_file(work / FILES["dcae"], dtype=torch.float32)
    out = {
        "load": _since(start),
        "weight_mib": _mib(_param_bytes(vae)),
        "params_m": fixtures.param_count(vae) / 1e6,
    }
    path = work / FILES["canvas"]
    canvas = torch.load(path) if path.is_file() else canvas_noise(0, (1, 32, crop, crop))
    latent = canvas[..., :crop, :crop].float() / SANA_DCAE_F32C32_CONFIG["scaling_factor"]
    before = _rss_kib("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")
    start = _clock()
    pixels = decode_tiled(vae, latent, tile=tile, overlap=overlap)
    out["decode"] = _since(start) | {
        "crop_cells": crop,
        "tile_cells": tile,
        "overlap_cells": overlap,
        "pixels": list(pixels.shape[-2:]),
        "peak_above_weights_mib": (_rss_kib("VmHWM:") - before) / 1024,
        "finite": bool(torch.isfinite(pixels).all()),
    }
    megapixels = pixels.shape[-2] * pixels.shape[-1] / 1e6
    out["decode"]["cpu_seconds_per_megapixel"] = out["decode"]["cpu_seconds"] / megapixels
    return out


# --- stage: memory sweep at full width ---------------------------------------------------------------


def _reduced_model(layers: int) -> tuple[SanaTransformer2DModel, float]:
    """The 1600M 4K config with `layers` blocks, random float32 weights, built through build_transformer."""
    published = fixtures.PUBLISHED_TRANSFORMERS["Sana_1600M_4Kpx"]
    full = detect_variant(fixtures.original_state_dict(**published, device="meta"), "Sana_1600M_4Kpx")
    sd = fixtures.original_state_dict(**published | {"depth": layers})
    variant = detect_variant(sd, "Sana_1600M_4Kpx")
    # The published cross-attention heads (the size table that gives them is keyed by depth).
    heads = {k: full.config[k] for k in ("num_cross_attention_heads", "cross_attention_head_dim")}
    variant = dataclasses.replace(variant, config=variant.config | heads, flow_shift=full.flow_shift)
    return build_transformer(sd, variant), full.flow_shift


def stage_memory_causal(work: Path, layers: int, grid: int, steps: int, cfg: float) -> dict:
    model, shift = _reduced_model(layers)
    run, _ = _causal_run(model, _embeds(work), grid, steps, cfg, False, shift)
    return run | {"layers": layers, "grid": grid, "weight_mib": _mib(_param_bytes(model))}


def stage_memory_full(work: Path, layers: int, cells: int, cfg: float) -> dict:
    model, _ = _reduced_model(layers)
    (cond, cond_mask), (uncond, uncond_mask) = _embeds(work)["prompt"], _embeds(work)["negative"]
    denoiser = CFGDenoiser(model, cond, uncond, cfg, None, cond_mask, uncond_mask)
    x = canvas_noise(0, (1, model.config.in_channels, cells, cells))
    before = _rss_kib("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")
    start = _clock()
    with torch.no_grad():
        x0 = denoiser(x, torch.ones(1))
    assert torch.isfinite(x0).all()
    return _since(start) | {
        "layers": layers,
        "cells": cells,
        "tokens": cells * cells,
        "peak_above_weights_mib": (_rss_kib("VmHWM:") - before) / 1024,
        "weight_mib": _mib(_param_bytes(model)),
    }


def stage_cache_modes(steps_list: tuple[int, ...], grids: tuple[int, ...]) -> dict:
    """Cache bytes per BCLA mode, tile count and step count, with a tiny SANA (bytes per set are exact)."""
    model = fixtures.tiny_transformer(**fixtures.pipeline_transformer_config())
    cond = torch.randn(1, 4, 32)
    rows = []
    for mode in [m for m in MODES if m != "off"]:
        for steps in steps_list:
            for n in grids:
                side = 4 + (n - 1) * 3
                plan = make_plan(
                    width_px=side * 8,
                    height_px=side * 8,
                    tile_width_px=32,
                    tile_height_px=32,
                    overlap_px=8,
                    compression=8,
                    fit="shift",
                )
                host = CacheSizeHost(model, cond, cond, FlowSampling(steps=steps, cfg=4.5))
                pipeline.run(
                    plan, host, RunSettings(method="causal", cache_config=BCLAConfig(mode=mode)), (1, 8)
                )
                rows.append(
                    {
                        "mode": mode,
                        "steps": steps,
                        "grid": n,
                        "tiles": len(plan),
                        "max_bytes": max(host.sizes),
                    }
                )
    layers, heads, head_dim = 2, 2, 32
    set_bytes = (
        layers * 2 * heads * (head_dim + 1) * head_dim * 4
    )  # layers × CFG branches × [heads, Dv+1, Dk]
    for row in rows:
        row["sets"] = row["max_bytes"] / (set_bytes * row["steps"])
    return {"rows": rows, "set_bytes_tiny": set_bytes}


# --- model -----------------------------------------------------------------------------------------------


def bcla_set_bytes(layers: int, heads: int, head_dim: int, branches: int) -> int:
    """One statistics set: every layer and CFG branch at one noise level, [heads, Dv+1, Dk] float32."""
    return layers * branches * heads * (head_dim + 1) * head_dim * 4


def canvas_tensor_bytes(cells: int, tile_cells: int, channels: int = 32) -> float:
    """Canvas-sized float32 tensors the causal sampler holds: noise and canvas, plus every finished tile
    twice (the list and its concatenation in ``CanvasResult.tiles``), i.e. 2 + 2·amplification canvases."""
    amplification = (tile_cells / TILE) ** 2 if cells > TILE else 1.0
    return (2 + 2 * amplification) * channels * cells * cells * 4


def memory_model(report: dict, steps_list: tuple[int, ...] = (1, 20)) -> dict:
    """Sampler and full-pass peak memory for 2K–16K canvases, 1600M config, from the measured figures.

    Above the weights, the causal sampler holds one tile's activations (measured per tile size, with
    the allocator's slack), canvas-sized tensors (``canvas_tensor_bytes``) and the BCLA cache
    (cumulative: 2 statistics sets per step from the second tile on, whatever the tile count; the sweep
    checks the formula). A full-canvas pass holds activations linear in its tokens (fitted on the runs).
    """
    stages = report["stages"]
    causal = [
        stages[k] for k in sorted(stages) if k.startswith("memory_causal_") and "error" not in stages[k]
    ]
    full = [stages[k] for k in sorted(stages) if k.startswith("memory_full_") and "error" not in stages[k]]
    if len(causal) < 2 or len(full) < 2:
        return {"error": "memory sweep incomplete"}
    spec = fixtures.PUBLISHED_TRANSFORMERS["Sana_1600M_4Kpx"]
    heads, layers, steps = spec["hidden"] // 32, causal[0]["layers"], report["config"]["steps"]
    measured = [r["cache_bytes_max"] / min(r["tiles"], 2) / steps for r in causal]
    predicted = bcla_set_bytes(layers, heads, 32, 2)
    per_set = bcla_set_bytes(spec["depth"], heads, 32, 2)  # one noise level, CFG, full depth
    activations = {
        r["tile_cells"]: r["peak_above_start_mib"]
        - _mib(r["cache_bytes_max"] + canvas_tensor_bytes(r["canvas_cells"], r["tile_cells"]))
        for r in causal
    }
    single_cells, grown_cells = min(activations), max(activations)
    fx = [r["tokens"] for r in full]
    fy = [r["peak_above_weights_mib"] for r in full]
    full_slope = (fy[-1] - fy[0]) / (fx[-1] - fx[0])
    full_base = fy[0] - full_slope * fx[0]
    params = 1604.46e6
    weights = {"bf16": _mib(params * 2), "float32": _mib(params * 4)}

    def sampler(cells: int, n_steps: int) -> float:
        tile = single_cells if cells <= TILE else grown_cells
        sets = 1 if cells <= TILE else 2  # a lone tile holds only its own statistics
        bytes_ = canvas_tensor_bytes(cells, tile) + per_set * n_steps * sets
        return activations[tile] + _mib(bytes_)

    rows = []
    for name, px in CANVASES_PX.items():
        cells = px // COMPRESSION
        row = {"canvas": name, "cells": cells, "tiles": (cells // TILE) ** 2}
        row["full_pass_above_weights_mib"] = full_base + full_slope * cells * cells
        row["canvas_tensors_mib"] = _mib(canvas_tensor_bytes(cells, grown_cells))
        for n_steps in steps_list:
            above, single = sampler(cells, n_steps), sampler(TILE, n_steps)
            row[f"sampler_above_weights_mib_{n_steps}"] = above
            row[f"vs_single_tile_above_weights_{n_steps}"] = above / single
            row[f"vs_single_tile_bf16_{n_steps}"] = (weights["bf16"] + above) / (weights["bf16"] + single)
        rows.append(row)
    return {
        "weights_mib": weights,
        "tile_activations_mib": {f"{c}x{c} cells": v for c, v in activations.items()},
        "full_pass_base_mib": full_base,
        "full_pass_mib_per_token": full_slope,
        "cache_mib_per_step": _mib(2 * per_set),
        "cache_formula_vs_measured": [m / predicted for m in measured],
        "steps_list": list(steps_list),
        "rows": rows,
    }


# --- driver ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sana_scale"), help="random model files")
    parser.add_argument("--rewrite", action="store_true", help="redraw the model files even if present")
    parser.add_argument("--stages", default="write,load,text,causal,decode,memory,cache", help="comma list")
    parser.add_argument("--gemma-layers", type=int, default=2, help="Gemma-2-2B layers to run (of 26)")
    parser.add_argument("--steps", type=int, default=1, help="Euler steps per tile")
    parser.add_argument("--cfg", type=float, default=1.0, help="guidance of the full-depth causal run")
    parser.add_argument("--compute-dtype", default="float32", help="dtype the sampler computes in on CPU")
    parser.add_argument("--memory-layers", type=int, default=2, help="depth of the memory sweep models")
    parser.add_argument("--decode-crops", default="8,12", help="latent crops (cells) decoded in tiles")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per stage")
    parser.add_argument("--markdown-only", action="store_true", help="rebuild scale.md from scale.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    began = time.perf_counter()
    work, stages = args.workdir, args.stages.split(",")
    out_path = RESULTS / "scale.json"
    report = json.loads(out_path.read_text()) if out_path.is_file() else {"stages": {}}
    report["config"] = (
        report.get("config")
        if args.markdown_only
        else {
            "steps": args.steps,
            "cfg_full_depth": args.cfg,
            "cfg_memory_sweep": 4.5,
            "compute_dtype": args.compute_dtype,
            "gemma_layers": args.gemma_layers,
            "memory_layers": args.memory_layers,
            "tile_cells": TILE,
            "causal_overlap_cells": CAUSAL_OVERLAP,
            "bcla": "cumulative, synchronous, strength 1",
            "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        }
    )

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {text}", file=sys.stderr, flush=True)

    def run(name: str, function, *fargs) -> None:
        result = measure_in_child(function, *fargs, timeout=args.timeout)
        report["stages"][name] = result
        log(f"{name}: {json.dumps(result)[:400]}")
        try:
            save(report)
        except Exception as error:  # a table bug must not end a long run; --markdown-only redoes it
            log(f"scale.md not written: {type(error).__name__}: {error}")

    if args.markdown_only:
        save(report)
        return
    if "write" in stages and (args.rewrite or not (work / FILES["gemma"] / "config.json").is_file()):
        run("write", stage_write, work, args.gemma_layers)
    if "load" in stages:
        for key in ("600M_pth", "600M_folder", "1600M_pth"):
            run(f"load_{key}", stage_load, work, key)
    if "text" in stages:
        run("text", stage_text, work)
    if "causal" in stages:
        run("causal", stage_causal, work, args.steps, args.cfg, args.compute_dtype)
    if "decode" in stages:
        for crop in (int(c) for c in args.decode_crops.split(",")):
            run(f"decode_{crop}", stage_decode, work, crop, 8, 2)
    if "memory" in stages:
        for grid in (1, 2, 3):
            run(f"memory_causal_{grid}", stage_memory_causal, work, args.memory_layers, grid, args.steps, 4.5)
        for cells in (32, 48, 64):
            run(f"memory_full_{cells}", stage_memory_full, work, args.memory_layers, cells, 4.5)
    if "cache" in stages:
        run("cache_modes", stage_cache_modes, (1, 2), (2, 4, 8))
    report["machine"] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "load_average_end": list(os.getloadavg()),
        "note": "shared 2-core machine, 1 torch thread, other jobs running (CPU seconds are the "
        "robust figure)",
    }
    command = " ".join(["python -m bench.bench_scale", *(sys.argv[1:] if argv is None else argv)])
    report["commands"] = [*report.get("commands", []), command]
    save(report)
    log(f"wrote {out_path} and scale.md")


def save(report: dict) -> None:
    """JSON after every stage (a long run keeps what it measured); the table is rebuilt from it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    report["memory_model"] = memory_model(report)
    (RESULTS / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "scale.md").write_text(markdown(report))


def _fmt(value, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    stages = report["stages"]
    lines = [
        "# SANA at its published sizes on CPU: loaders, causal BCLA sampler, tiled DC-AE",
        "",
        "`" + "`, then `".join(report.get("commands", ["python -m bench.bench_scale"])) + "`; random "
        "weights in the published layouts "
        "(see the module docstring of `bench/bench_scale.py`). Shared 2-core machine, 1 torch thread, other",
        "jobs running: CPU seconds are the robust figure, wall seconds are shown next to them.",
        "",
        "## Loaders (bf16 files, loaded in bf16)",
        "",
        "| file | loader | detected variant | shift | PE scale | params (M) | wall s | CPU s | "
        "peak RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key in ("600M_pth", "600M_folder", "1600M_pth"):
        r = stages.get(f"load_{key}")
        if not r:
            continue
        if "error" in r:
            lines.append(f"| {key} | error: {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| `{r['file']}` | `{r['loader']}` | {r['variant']} | {r['flow_shift']:g} | "
            f"{_fmt(r['interpolation_scale'], 'g')} | {r['params_m']:.1f} | {r['seconds']:.1f} | "
            f"{r['cpu_seconds']:.1f} | {r['peak_total_mib']:.0f} |"
        )
    a, b = stages.get("load_600M_pth", {}), stages.get("load_600M_folder", {})
    if "checksum" in a and "checksum" in b:
        same = "equal" if a["checksum"] == b["checksum"] else "DIFFERENT"
        lines += [
            "",
            f"600M original `.pth` and diffusers folder: weight checksums {same} ({a['checksum']:.6g}).",
        ]
    text = stages.get("text")
    if text and "error" not in text:
        lines += [
            "",
            "## Text encoder (Gemma-2-2B width and vocabulary, bf16)",
            "",
            f"{text['layers_run']} of 26 layers run ({text['weight_mib']:.0f} MiB of weights; the full "
            f"Gemma-2-2B is {text['full_params_m']:.0f} M parameters = {text['full_bf16_mib']:.0f} "
            "MiB in bf16). "
            f"Load {text['load']['seconds']:.1f} s, peak RSS {text['peak_total_mib']:.0f} MiB.",
            "",
            "| prompt | template | tokens in | embeds | wall s | CPU s |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name in ("prompt", "negative"):
            r = text[name]
            lines.append(
                f"| {name} | {r['template']} | {r['tokens_in']} | {r['embeds_shape']} {r['dtype']} | "
                f"{r['seconds']:.1f} | {r['cpu_seconds']:.1f} |"
            )
        per_layer = text["cpu_seconds_per_layer_prompt"]
        lines += [
            "",
            f"CPU seconds per Gemma layer (prompt with template, bf16): {per_layer:.1f}; all 26 layers: "
            f"about {26 * per_layer:.0f} CPU s on this CPU (bf16 matmul is emulated here).",
        ]
    causal = stages.get("causal")
    if causal and "error" not in causal:
        lines += [
            "",
            "## Causal run: SANA 1600M 4K (published depth), 2×2 tiles of 1024 px",
            "",
            f"Loaded from `{FILES['1600M_pth']}` in bf16 as **{causal['variant']}** (shift "
            f"{causal['flow_shift']:g}) in {causal['load']['seconds']:.0f} s, RSS "
            f"{causal['load']['rss_mib']:.0f} MiB "
            f"after loading ({causal['bf16_weight_mib']:.0f} MiB of bf16 weights); computed in "
            f"{causal['compute_dtype']} ({causal['weight_mib']:.0f} MiB). {causal['tiles']} tiles of "
            f"{causal['tile_cells']}×{causal['tile_cells']} cells on a {causal['canvas_cells']}² canvas, "
            f"{causal['steps']} step(s), CFG {causal['cfg']:g} (model batch "
            f"{causal['call_batch']}), BCLA cumulative, "
            "guide pass (bcla_seed 0.5 + skip_residual 0.3).",
            "",
            f"- guide pass ({causal['guide_pass']['guide_cells']}² cells): "
            f"{causal['guide_pass']['seconds']:.1f} s wall, "
            f"{causal['guide_pass']['cpu_seconds']:.1f} CPU s",
            f"- **seconds per model call per tile**: {causal['seconds_per_call']:.1f} wall, "
            f"{causal['cpu_seconds_per_call']:.1f} CPU",
            f"- sampler total: {causal['sampler']['seconds']:.0f} s wall; peak RSS "
            f"{causal['peak_total_mib']:.0f} MiB, "
            f"{causal['peak_above_start_mib']:.0f} MiB above the loaded model",
            f"- BCLA cache: {causal['cache_bytes_max'] / MIB:.2f} MiB at most, "
            f"{causal['cache_bytes_final'] / MIB:.2f} MiB at the end; canvas finite (std "
            f"{causal['canvas_std']:.3f})",
            "",
            "| tile | tokens | model calls | wall s | CPU s | cache MiB | RSS MiB | peak RSS MiB |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {t['tile']} | {t['tokens']} | {t['model_calls']} | {t['seconds']:.1f} | "
            f"{t['cpu_seconds']:.1f} | "
            f"{t['cache_bytes'] / MIB:.2f} | {t['rss_mib']:.0f} | {t['hwm_mib']:.0f} |"
            for t in causal["per_tile"]
        ]
    decodes = [stages[k] for k in sorted(stages) if k.startswith("decode_") and "error" not in stages[k]]
    if decodes:
        lines += [
            "",
            "## DC-AE f32c32 (312 M parameters), tiled decode (`decode_tiled`, float32)",
            "",
            "| latent crop | pixels | tile / overlap cells | wall s | CPU s | CPU s / MP | peak "
            "above weights MiB | finite |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in decodes:
            d = r["decode"]
            lines.append(
                f"| {d['crop_cells']}² | {d['pixels'][0]}² | {d['tile_cells']} / {d['overlap_cells']} | "
                f"{d['seconds']:.1f} | {d['cpu_seconds']:.1f} | {d['cpu_seconds_per_megapixel']:.0f} | "
                f"{d['peak_above_weights_mib']:.0f} | {d['finite']} |"
            )
        rate = decodes[-1]["decode"]["cpu_seconds_per_megapixel"]
        canvas_mp = (stages.get("causal", {}).get("canvas_cells", 64) * COMPRESSION) ** 2 / 1e6
        lines += [
            "",
            f"At {rate:.0f} CPU s per megapixel, the 2×2 canvas ({canvas_mp:.1f} MP) would take about "
            f"{canvas_mp * rate / 60:.0f} CPU min and an 8K canvas (67 MP) about "
            f"{67 * rate / 3600:.1f} CPU h here, so only crops are decoded; memory is bounded by the tile "
            "(compare the two crops), plus the output image (8K float32: 768 MiB).",
        ]
    lines += _memory_lines(report)
    lines += _cache_lines(report)
    return "\n".join(lines) + "\n"


def _memory_lines(report: dict) -> list[str]:
    model, stages = report.get("memory_model", {}), report["stages"]
    if "rows" not in model:
        return []
    causal = [
        stages[k] for k in sorted(stages) if k.startswith("memory_causal_") and "error" not in stages[k]
    ]
    full = [stages[k] for k in sorted(stages) if k.startswith("memory_full_") and "error" not in stages[k]]
    lines = [
        "",
        "## Memory model: SANA 1600M, causal sampler vs full-canvas pass",
        "",
        f"Measured at the 1600M width with {causal[0]['layers']} layers (activations do not depend on "
        f"depth), CFG 4.5 (model batch 2), {report['config']['steps']} step(s); peak resident memory above "
        "the loaded weights"
        + (
            f" (glibc MALLOC_MMAP_THRESHOLD_={threshold}: freed activations go back to the system, so "
            "the high-water mark counts live tensors rather than heap slack)."
            if (threshold := report["config"].get("malloc_mmap_threshold"))
            else "."
        ),
        "",
        "| run | canvas cells | tiles | tokens per call | peak above weights MiB | BCLA cache MiB "
        "| CPU s per call |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in causal:
        lines.append(
            f"| causal {r['grid']}×{r['grid']} | {r['canvas_cells']}² | {r['tiles']} | "
            f"{r['tile_cells'] ** 2} | {r['peak_above_start_mib']:.0f} | "
            f"{r['cache_bytes_max'] / MIB:.2f} | {r['cpu_seconds_per_call']:.1f} |"
        )
    for r in full:
        lines.append(
            f"| full pass | {r['cells']}² | 1 | {r['tokens']} | {r['peak_above_weights_mib']:.0f} | – | "
            f"{r['cpu_seconds']:.1f} |"
        )
    check = ", ".join(f"{v:.3f}" for v in model["cache_formula_vs_measured"])
    w = model["weights_mib"]
    lines += [
        "",
        "Model: causal sampler above weights = one tile's activations (measured: "
        + ", ".join(f"{v:.0f} MiB at {k}" for k, v in model["tile_activations_mib"].items())
        + ") + canvas tensors (noise, canvas, finished tiles twice) + BCLA cache; full pass above weights = "
        f"{model['full_pass_base_mib']:.0f} MiB + {model['full_pass_mib_per_token'] * 1024:.1f} KiB per "
        f"token (activations, linear in tokens). Cache of the 1600M with CFG, cumulative: "
        f"{model['cache_mib_per_step']:.1f} MiB per "
        f"sampling step (2 statistics sets, the running sum and the tile's own, of 20 layers × 2 branches × "
        f"70 heads × 33 × 32 float32; measured / formula on the sweep: {check}). "
        f"Weights: {w['bf16']:.0f} MiB bf16, {w['float32']:.0f} MiB "
        "float32.",
        "",
        "| canvas | 1024 px tiles | full pass above weights GiB | sampler above weights MiB, 1 / 20 steps "
        "| sampler / one tile above weights, 1 / 20 steps | with bf16 weights, 1 / 20 steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in model["rows"]:
        lines.append(
            f"| {r['canvas']} | {r['tiles']} | {r['full_pass_above_weights_mib'] / 1024:.1f} | "
            f"{r['sampler_above_weights_mib_1']:.0f} / {r['sampler_above_weights_mib_20']:.0f} | "
            f"{r['vs_single_tile_above_weights_1']:.2f} / {r['vs_single_tile_above_weights_20']:.2f} | "
            f"{r['vs_single_tile_bf16_1']:.3f} / {r['vs_single_tile_bf16_20']:.3f} |"
        )
    return lines


def _cache_lines(report: dict) -> list[str]:
    modes = report["stages"].get("cache_modes")
    if not modes or "error" in modes:
        return []
    lines = [
        "",
        "## BCLA cache per mode (measured `BCLACache.nbytes()`, most held during a run)",
        "",
        "In statistics sets (one set = every layer × CFG branch at one noise level; 1600M with CFG: "
        f"{bcla_set_bytes(20, 70, 32, 2) / MIB:.2f} MiB). Synchronous source keeps one set per step (sigma).",
        "",
        "| mode | steps | 2×2 tiles | 4×4 tiles | 8×8 tiles | 1600M, CFG, 8K (8×8 tiles), 20 steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows = modes["rows"]
    per_set = bcla_set_bytes(20, 70, 32, 2)
    for mode in dict.fromkeys(r["mode"] for r in rows):
        for steps in sorted({r["steps"] for r in rows}):
            sel = {r["grid"]: r for r in rows if r["mode"] == mode and r["steps"] == steps}
            cells = " | ".join(f"{sel[n]['sets']:.0f} sets" if n in sel else "–" for n in (2, 4, 8))
            at_8k = f"{sel[8]['sets'] * 20 * per_set / MIB:.0f} MiB" if 8 in sel else "–"
            lines.append(f"| {mode} | {steps} | {cells} | {at_8k} |")
    return lines


if __name__ == "__main__":
    main()
