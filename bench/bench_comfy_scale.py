"""SANA at its published sizes through the pack's nodes inside a real ComfyUI (CPU, in-process).

Run from the repository root with ComfyUI's Python:
``COMFYUI_PATH=/path/to/ComfyUI /path/to/ComfyUI/.venv/bin/python -m bench.bench_comfy_scale
--variant 600m-pth --decode-cells 24`` (about 8 CPU minutes, peak resident memory 9.1 GiB; decoding
the whole 2048 px canvas instead of its central 768 px adds about 12 CPU minutes). ``--variant``
picks the transformer: ``600m-pth`` (SANA 600M 1024 px, original-layout ``.pth``), ``600m-diffusers``
(the same weights as a diffusers folder) or ``1600m-4k`` (SANA 1600M 4K ``.pth``: sin-cos PE table at
interpolation scale 2, flow shift 6). ``--size small`` runs the same graph on toy models in seconds;
the integration tests do that. Each variant's figures are recorded under its name in
``bench/results/comfy_scale.json`` and ``.md`` (the other variants' are kept); the random model files
go to a ComfyUI base directory under ``--workdir`` (kept for reruns, shared by the variants).

Protocol. No SANA weights can be downloaded here, so every model is random N(0, 0.02²) weights in the
key layout and shapes of its published checkpoint (``lab.fixtures``), saved in bf16
where ComfyUI users keep them: ``models/diffusion_models/Sana_600M_1024px_BF16.pth`` (original
layout; ``Sana_600M_1024px_diffusers/`` with model_index.json, transformer/ and scheduler/;
``Sana_1600M_4Kpx_BF16.pth``), ``models/vae/dc-ae-f32c32-sana-1.0.safetensors`` (DC-AE f32c32,
diffusers layout) and ``models/text_encoders/gemma-2-2b-shaped-<layers>l/`` (Gemma-2-2B width,
vocabulary and ``--gemma-layers`` of its 26 layers, with a word-level tokenizer: Gemma's SentencePiece
vocabulary cannot be downloaded).
The graph is the one a user builds, each node called as ComfyUI's executor calls it (``execute``):

Load SANA (bf16) → CLIPTextEncode (SANA's complex human instruction + prompt; the negative is the
stock ConditioningZeroOut) → KSampler on a low-res guide → Tile Planner (2×2 tiles of 1024 px, 2-cell
lock band, tiles grown to fit) → BCLA Cache (cumulative) → Global Context Encoder (guide
latent, ``bcla_seed`` + ``skip_residual``) → Causal SANA Sampler → stock VAEDecodeTiled.

After the text encode the bench drops its references to the text encoder, which frees it (ComfyUI's
model management holds models by weak reference), so the sampler's memory is measured without it; in
ComfyUI the loader's cached output keeps it in RAM (on a GPU, out of VRAM). This CPU has no bf16
matrix units, so the transformer Load SANA returns in bf16 is then cast to ``--compute-dtype`` float32
before sampling (ComfyUI follows the model's dtype); the text encoder computes in bf16. Every model
call is timed by forward hooks on the transformer, which also read the BCLA cache's size; peak resident
memory (Linux VmHWM, reset before every stage) is recorded per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gc
import json
import os
import platform
import sys
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import SanaTransformer2DModel
from safetensors.torch import save_file

from bench.bench_engine import CAUSAL_OVERLAP, TILE, _rss_kib, measure_in_child
from bench.bench_scale import CallTimer, _clock, _since
from lab import fixtures
from temporal_tiling.sana import convert_original, detect_variant, variant_from_config

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PROMPT = "a wide mountain valley at dawn, a river, pine forests and one small red cabin"
GRID = 2  # tiles per side
GUIDE_CELLS = TILE // 2  # the low-res guide's side in latent cells
DECODE_TILE_CELLS = 16  # VAEDecodeTiled's tile (512 px for the DC-AE, ComfyUI's default)
MIB = 1024**2


@dataclasses.dataclass(frozen=True)
class Models:
    """The loader choices of one written model set, as Load SANA lists them."""

    ckpt: str
    vae: str
    text_encoder: str
    description: dict


@dataclasses.dataclass(frozen=True)
class Variant:
    """One published transformer in one layout, and the toy twin `--size small` writes instead."""

    published: str  # key of fixtures.PUBLISHED_TRANSFORMERS
    name: str  # the file or folder name users keep it under
    folder: bool  # diffusers folder (model_index.json, transformer/, scheduler/) instead of a .pth
    description: str
    toy_pe_scale: float | None = None  # the toy's sin-cos PE scale (its grid then is the published one)


VARIANTS = {
    "600m-pth": Variant(
        "Sana_600M_1024px", "Sana_600M_1024px_BF16.pth", False, "SANA 600M 1024px, original-layout .pth"
    ),
    "600m-diffusers": Variant(
        "Sana_600M_1024px", "Sana_600M_1024px_diffusers", True, "SANA 600M 1024px, diffusers folder"
    ),
    "1600m-4k": Variant(
        "Sana_1600M_4Kpx", "Sana_1600M_4Kpx_BF16.pth", False, "SANA 1600M 4Kpx, original-layout .pth", 2.0
    ),
}
TOY_TRANSFORMER = {"hidden": 64, "depth": 2, "grid": 4, "caption_channels": 32, "in_channels": 8}
TOY_CONFIG = {"num_cross_attention_heads": 1}  # a custom size stores what its weights cannot tell


def write_transformer(path: Path, state_dict: dict[str, torch.Tensor], folder: bool, config: dict) -> None:
    """An original-layout state dict as a .pth ({"state_dict", "config"}) or as a diffusers folder holding
    the same weights in diffusers keys, with the flow shift its variant implies in scheduler/."""
    if not folder:
        torch.save({"state_dict": state_dict} | ({"config": config} if config else {}), path)
        return
    variant = detect_variant(state_dict, path.name)
    (path / "transformer").mkdir(parents=True, exist_ok=True)
    # safetensors needs unshared storage
    save_file(
        {k: v.clone() for k, v in convert_original(state_dict).items()},
        str(path / "transformer" / "diffusion_pytorch_model.safetensors"),
    )
    with torch.device("meta"):
        SanaTransformer2DModel(**variant.config | config).save_config(path / "transformer")
    (path / "scheduler").mkdir(exist_ok=True)
    scheduler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": variant.flow_shift}
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    index = {"_class_name": "SanaPipeline", "transformer": ["diffusers", "SanaTransformer2DModel"]}
    (path / "model_index.json").write_text(json.dumps(index))


def write_published(models: Path, variant: Variant, gemma_layers: int) -> Models:
    """One published transformer (`variant`), DC-AE f32c32 and a Gemma-2-2B-shaped encoder, in bf16."""
    dtype = torch.bfloat16
    ckpt = models / "diffusion_models" / variant.name
    vae = models / "vae" / "dc-ae-f32c32-sana-1.0.safetensors"
    text = models / "text_encoders" / f"gemma-2-2b-shaped-{gemma_layers}l"
    if not ckpt.exists():
        sd = fixtures.original_state_dict(**fixtures.PUBLISHED_TRANSFORMERS[variant.published], dtype=dtype)
        write_transformer(ckpt, sd, variant.folder, {})
    if not vae.is_file():
        save_file(fixtures.published_dcae_state_dict(dtype), str(vae))
    if not (text / "model.safetensors").is_file():
        fixtures.write_gemma2_folder(text, gemma_layers, dtype)
    description = {
        "transformer": f"{variant.description}, bf16",
        "vae": "DC-AE f32c32 (diffusers layout), bf16",
        "text_encoder": f"Gemma-2-2B shape, {gemma_layers} of 26 layers, bf16, word-level tokenizer",
    }
    return Models(ckpt.name + "/" * variant.folder, vae.name, text.name + "/", description)


def write_small(models: Path, variant: Variant) -> Models:
    """The same layouts at toy size: a 64-wide 2-layer SANA (.pth or folder; with the variant's PE table
    when it has one), a 4× DC-AE folder and a 1-layer Gemma-2 folder."""
    ckpt = models / "diffusion_models" / f"scale_tiny_{variant.name}"
    grid = fixtures.PUBLISHED_TRANSFORMERS[variant.published]["grid"] if variant.toy_pe_scale else 4
    sd = fixtures.original_state_dict(**TOY_TRANSFORMER | {"grid": grid, "pe_scale": variant.toy_pe_scale})
    write_transformer(ckpt, sd, variant.folder, TOY_CONFIG)
    fixtures.tiny_vae().save_pretrained(models / "vae" / "scale_tiny_dcae")
    text = models / "text_encoders" / "scale_tiny_gemma2"
    tokenizer = fixtures.tiny_tokenizer()
    fixtures.tiny_gemma2(len(tokenizer)).save_pretrained(text)
    tokenizer.save_pretrained(text)
    description = {
        "transformer": f"64 wide, 2 layers, {'diffusers folder' if variant.folder else '.pth'}",
        "vae": "toy DC-AE 4×",
        "text_encoder": "1-layer Gemma-2",
    }
    return Models(ckpt.name + "/" * variant.folder, "scale_tiny_dcae/", text.name + "/", description)


def write_models(base: Path, size: str, variant: str, gemma_layers: int) -> dict:
    """Write the model set (published files already there are kept); its Models fields as a dict."""
    models = base / "models"
    for kind in ("diffusion_models", "vae", "text_encoders"):
        (models / kind).mkdir(parents=True, exist_ok=True)
    chosen = VARIANTS[variant]
    written = (
        write_published(models, chosen, gemma_layers) if size == "published" else write_small(models, chosen)
    )
    return dataclasses.asdict(written)


# --- ComfyUI in-process ----------------------------------------------------------------------------


def import_comfy(comfyui: Path, base: Path):
    """ComfyUI as a library on the CPU with `base`'s model folders registered; returns (stock nodes,
    the pack's node modules imported as ComfyUI imports the pack)."""
    if str(comfyui) not in sys.path:
        sys.path.insert(0, str(comfyui))  # ComfyUI's own `nodes` must win over the pack's
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (picks the device from args)
    import folder_paths

    import nodes as stock

    helpers = str(ROOT / "tests" / "integration")  # not `tests.integration`: ComfyUI has a `tests` package
    if helpers not in sys.path:
        sys.path.append(helpers)
    from sana_comfy import pack_module

    for kind in ("diffusion_models", "vae", "text_encoders"):
        folder_paths.add_model_folder_path(kind, str(base / "models" / kind), is_default=True)
    names = ("loaders", "planner", "bcla_cache", "context", "sampler")
    pack = {name: pack_module(f"nodes.{name}") for name in names}
    return stock, pack


def widget_defaults(node) -> dict:
    """A pack node's widget defaults from its schema (what a new node in the UI holds)."""
    from comfy_api.latest import io

    return {i.id: i.default for i in node.define_schema().inputs if isinstance(i, io.WidgetInput)}


class CallRecorder(CallTimer):
    """Seconds and tokens of every transformer call, plus the BCLA cache bytes and resident memory after it
    (the sampler sets its BCLA processors as object patches, so block 0's processor holds the cache)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__(transformer)
        self._processor_owner = transformer.transformer_blocks[0].attn1

    def _post(self, module, args, kwargs, output) -> None:
        super()._post(module, args, kwargs, output)
        cache = getattr(self._processor_owner.processor, "cache", None)
        self.calls[-1] |= {
            "cache_bytes": 0 if cache is None else cache.nbytes(),
            "rss_mib": _rss_kib("VmRSS:") / 1024,
        }


@contextlib.contextmanager
def stage(stages: dict, name: str) -> Iterator[None]:
    """Measure one stage: wall/CPU seconds, resident memory before and after, its peak (VmHWM reset)."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS:")
    start = _clock()
    yield
    stages[name] = _since(start) | {
        "rss_before_mib": before / 1024,
        "rss_after_mib": _rss_kib("VmRSS:") / 1024,
        "peak_mib": _rss_kib("VmHWM:") / 1024,
    }


def causal_figures(calls: list[dict], plan, steps: int, samples: torch.Tensor) -> dict:
    """Per tile and per model call figures of the Causal SANA Sampler from the recorded calls (tile-sized
    calls are the tiles', in plan order, `steps` each; the others are the guide's seed pass)."""
    tile_tokens = plan.tile_width * plan.tile_height
    tile_calls = [call for call in calls if call["tokens"] == tile_tokens]
    groups = [tile_calls[i : i + steps] for i in range(0, len(tile_calls), steps)]
    per_tile = [
        {
            "tile": i,
            "model_calls": len(group),
            "seconds": sum(call["seconds"] for call in group),
            "cpu_seconds": sum(call["cpu_seconds"] for call in group),
            "cache_bytes": group[-1]["cache_bytes"],
            "rss_mib": group[-1]["rss_mib"],
        }
        for i, group in enumerate(groups)
    ]
    return {
        "tiles": len(plan),
        "tile_cells": plan.tile_width,
        "tile_tokens": tile_tokens,
        "canvas_cells": plan.canvas_width,
        "canvas_px": plan.width_px,
        "seed_pass_calls": len(calls) - len(tile_calls),
        "tile_calls": len(tile_calls),
        "call_batch": tile_calls[0]["batch"],
        "seconds_per_call": sum(call["seconds"] for call in tile_calls) / len(tile_calls),
        "cpu_seconds_per_call": sum(call["cpu_seconds"] for call in tile_calls) / len(tile_calls),
        "cache_bytes_max": max(call["cache_bytes"] for call in calls),
        "per_tile": per_tile,
        "canvas_shape": list(samples.shape),
        "canvas_finite": bool(torch.isfinite(samples).all()),
        "canvas_std": float(samples.std()),
    }


def run_graph(comfyui: Path, base: Path, models: Models, config: dict) -> dict:
    """The causal 2×2 graph through the pack's and ComfyUI's nodes; per stage and per model call figures."""
    stock, pack = import_comfy(comfyui, base)

    loaders, sampler = pack["loaders"], pack["sampler"]
    stages: dict = {}
    with stage(stages, "load"):
        loaded = loaders.SanaCheckpointLoader.execute(
            models.ckpt, models.vae, models.text_encoder, "bf16", "auto"
        )
    model, clip, vae = loaded.result
    transformer = model.model.diffusion_model.transformer
    flow_shift = float(model.model.model_sampling.shift)
    report: dict = {
        # the variant the loaded transformer's config and the MODEL's shift describe
        "variant": variant_from_config(dict(transformer.config), flow_shift).name,
        "flow_shift": flow_shift,
        "pe_interpolation_scale": transformer.config.interpolation_scale,
        "pe_grid": transformer.config.sample_size,
        "params_m": {
            "transformer": fixtures.param_count(transformer) / 1e6,
            "vae": fixtures.param_count(vae.autoencoder) / 1e6,
            "text_encoder": fixtures.param_count(clip.cond_stage_model.encoder) / 1e6,
        },
        "dtypes": {
            "transformer_loaded": str(transformer.dtype),
            "text_encoder": str(next(clip.cond_stage_model.parameters()).dtype),
            "vae": str(vae.vae_dtype),
        },
    }
    with stage(stages, "text"):
        (positive,) = stock.CLIPTextEncode().encode(clip, PROMPT)
    (negative,) = stock.ConditioningZeroOut().zero_out(positive)
    encoder = clip.cond_stage_model.encoder
    report["text"] = {
        "tokens_in": int(encoder.tokenize(PROMPT)["input_ids"].shape[1]),
        "template": encoder.uses_instruction(PROMPT),
        "embeds_shape": list(positive[0][0].shape),
    }
    encoder_ref = weakref.ref(encoder)
    with stage(stages, "free_text_encoder"):
        del loaded, clip, encoder  # ComfyUI's model management holds loaded models by weak reference
        gc.collect()
    report["text"]["encoder_freed"] = encoder_ref() is None
    with stage(stages, "cast"):
        transformer.to(getattr(torch, config["compute_dtype"]))
    report["dtypes"]["transformer_compute"] = str(transformer.dtype)
    channels = model.model.latent_format.latent_channels
    compression = vae.spacial_compression_encode()
    recorder = CallRecorder(transformer)
    try:
        empty = {"samples": torch.zeros(1, channels, GUIDE_CELLS, GUIDE_CELLS)}
        steps, cfg = config["steps"], config["cfg"]
        with stage(stages, "guide_ksampler"):
            (guide,) = stock.KSampler().sample(
                model, 1, steps, cfg, "euler", "simple", positive, negative, empty
            )
        guide_calls = len(recorder.calls)
        c = compression
        side = GRID * TILE
        plan_widgets = widget_defaults(pack["planner"].SanaTilePlanner) | {
            "width": side * c,
            "height": side * c,
            "tile_width": TILE * c,
            "tile_height": TILE * c,
            "overlap": CAUSAL_OVERLAP * c,
            "fit": "grow",
            "tile_size": "manual",
        }
        plan = pack["planner"].SanaTilePlanner.execute(**plan_widgets, vae=vae).result[0]
        bcla = pack["bcla_cache"].SanaBCLACache
        bcla_model = bcla.execute(model, **widget_defaults(bcla) | {"mode": "cumulative"}).result[0]
        context_node = pack["context"].SanaGlobalContext
        context_widgets = widget_defaults(context_node) | {"skip_residual": 0.3, "bcla_seed": 0.5}
        context = context_node.execute(**context_widgets, latent=guide).result[0]
        sampler_widgets = widget_defaults(sampler.SanaCausalSampler) | {
            "seed": 0,
            "steps": steps,
            "cfg": cfg,
            "mode": "causal",
        }
        with stage(stages, "causal_sampler"):
            sampled = sampler.SanaCausalSampler.execute(
                bcla_model, positive, negative, plan, **sampler_widgets, global_context=context
            )
        canvas = sampled.result[0]
    finally:
        recorder.remove()
    report["causal"] = causal_figures(recorder.calls[guide_calls:], plan, steps, canvas["samples"])
    report["causal"] |= {"guide_cells": GUIDE_CELLS, "guide_ksampler_calls": guide_calls}
    samples = canvas["samples"]
    crop = config["decode_cells"] or samples.shape[-1]
    start = (samples.shape[-1] - crop) // 2  # centred: where the four tiles meet
    region = {"samples": samples[..., start : start + crop, start : start + crop]}
    with stage(stages, "decode"):
        (images,) = stock.VAEDecodeTiled().decode(vae, region, DECODE_TILE_CELLS * c, CAUSAL_OVERLAP * c)
    megapixels = images.shape[1] * images.shape[2] / 1e6
    report["decode"] = {
        "node": "VAEDecodeTiled",
        "latent_cells": crop,
        "tile_px": DECODE_TILE_CELLS * c,
        "overlap_px": CAUSAL_OVERLAP * c,
        "image_shape": list(images.shape),
        "finite": bool(torch.isfinite(images).all()),
        "cpu_seconds_per_megapixel": stages["decode"]["cpu_seconds"] / megapixels,
        "seconds_per_megapixel": stages["decode"]["seconds"] / megapixels,
        "canvas_megapixels": (samples.shape[-1] * c) ** 2 / 1e6,
    }
    report["stages"] = stages
    report["peak_rss_mib"] = max(s["peak_mib"] for s in stages.values())
    report["compression"] = compression
    return report


# --- driver ----------------------------------------------------------------------------------------------


def run(size: str, workdir: Path, comfyui: Path, config: dict) -> dict:
    """Write the models (in a child process, so its memory is not counted), then run the graph here."""
    base = workdir / size
    written = measure_in_child(
        write_models, base, size, config["variant"], config["gemma_layers"], timeout=3600
    )
    if "error" in written:
        raise RuntimeError(f"writing the models failed: {written}")
    models = Models(**{field.name: written[field.name] for field in dataclasses.fields(Models)})
    report = run_graph(comfyui, base, models, config)
    kinds = {"ckpt": "diffusion_models", "vae": "vae", "text_encoder": "text_encoders"}
    paths = [base / "models" / kind / getattr(models, field) for field, kind in kinds.items()]
    files = [f for path in paths for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file()]
    report |= {
        "size": size,
        "models": models.description,
        "file_bytes": sum(f.stat().st_size for f in files),
        "config": config,
    }
    return report


def markdown(reports: dict[str, dict]) -> str:
    """All recorded variants, one section each."""
    title = "# SANA at published sizes through the pack's nodes in ComfyUI (CPU)\n\n"
    return title + "\n".join(variant_markdown(name, report) for name, report in reports.items())


def pe_text(report: dict) -> str:
    """What Load SANA's transformer config says about the positional embedding (older reports: nothing)."""
    if "pe_interpolation_scale" not in report:
        return ""
    scale = report["pe_interpolation_scale"]
    grid = report["pe_grid"]
    return f", sin-cos PE ×{scale:g} ({grid}² grid)" if scale else f", PE scale none ({grid}² grid)"


def variant_markdown(name: str, report: dict) -> str:
    stages, causal, decode = report["stages"], report["causal"], report["decode"]
    config = report["config"]
    lines = [
        f"## {name}",
        "",
        "`COMFYUI_PATH=... python -m bench.bench_comfy_scale "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in config.items())
        + "`; random weights in the published layouts, read by Load SANA from ComfyUI's model folders "
        "(module docstring of `bench/bench_comfy_scale.py`). "
        f"{report['machine']['cpus']} shared CPUs, {config['threads']} torch thread(s), "
        f"`nice -n {report['machine'].get('nice', 10)}`, other "
        "jobs running: CPU seconds are the robust figure.",
        "",
        f"- models: {report['models']['transformer']} ({report['params_m']['transformer']:.4g} M), "
        f"{report['models']['vae']} ({report['params_m']['vae']:.4g} M), "
        f"{report['models']['text_encoder']} ({report['params_m']['text_encoder']:.4g} M); "
        f"{report['file_bytes'] / 1024**3:.1f} GiB of files",
        f"- Load SANA (weight_dtype bf16): detected **{report['variant']}**, shift "
        f"{report['flow_shift']:g}{pe_text(report)}; transformer computed in "
        f"{report['dtypes']['transformer_compute']}, "
        f"text encoder in {report['dtypes']['text_encoder']}, VAE in {report['dtypes']['vae']}",
        f"- prompt: {report['text']['tokens_in']} tokens in with SANA's template "
        f"({report['text']['template']}), conditioning {report['text']['embeds_shape']}",
        f"- Causal SANA Sampler: {causal['tiles']} tiles of {causal['tile_cells']}² cells "
        f"({causal['tile_tokens']} tokens) on a {causal['canvas_cells']}² canvas ({causal['canvas_px']} px), "
        f"{config['steps']} step(s), cfg {config['cfg']:g} (model batch {causal['call_batch']}), BCLA "
        f"cumulative, Global Context from a {causal['guide_cells']}² KSampler guide (bcla_seed 0.5, "
        f"skip_residual 0.3; {causal['seed_pass_calls']} seed-pass call(s))",
        f"- **seconds per model call per tile: {causal['seconds_per_call']:.1f} wall, "
        f"{causal['cpu_seconds_per_call']:.1f} CPU**; BCLA cache at most "
        f"**{causal['cache_bytes_max'] / MIB:.2f} MiB**; canvas finite: {causal['canvas_finite']}",
        f"- **VAEDecodeTiled** of the central {decode['latent_cells']}² cells "
        f"({decode['image_shape'][2]}×{decode['image_shape'][1]} px, tiles {decode['tile_px']} px, overlap "
        f"{decode['overlap_px']} px): {stages['decode']['seconds']:.1f} s wall, "
        f"{stages['decode']['cpu_seconds']:.1f} CPU s = {decode['cpu_seconds_per_megapixel']:.0f} CPU s per "
        f"megapixel (the whole {decode['canvas_megapixels']:.1f} MP canvas: about "
        f"{decode['cpu_seconds_per_megapixel'] * decode['canvas_megapixels'] / 60:.0f} CPU min); finite: "
        f"{decode['finite']}",
        f"- **peak RSS {report['peak_rss_mib']:.0f} MiB** (process; "
        + (
            "text encoder freed after the encode)"
            if "free_text_encoder" in stages
            else "all models resident)"
        ),
        "",
        "| stage | wall s | CPU s | RSS before MiB | RSS after MiB | peak RSS MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {name} | {s['seconds']:.1f} | {s['cpu_seconds']:.1f} | {s['rss_before_mib']:.0f} | "
        f"{s['rss_after_mib']:.0f} | {s['peak_mib']:.0f} |"
        for name, s in stages.items()
    ]
    lines += [
        "",
        "| tile | model calls | wall s | CPU s | BCLA cache MiB | RSS MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {t['tile']} | {t['model_calls']} | {t['seconds']:.1f} | {t['cpu_seconds']:.1f} | "
        f"{t['cache_bytes'] / MIB:.2f} | {t['rss_mib']:.0f} |"
        for t in causal["per_tile"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("published", "small"), default="published")
    parser.add_argument(
        "--variant", choices=tuple(VARIANTS), default="600m-pth", help="transformer and layout"
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sana_comfy_scale"), help="model files")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for comfy_scale.json/.md")
    parser.add_argument("--gemma-layers", type=int, default=26, help="Gemma-2-2B layers written (of 26)")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps per tile")
    parser.add_argument("--cfg", type=float, default=1.0, help="guidance scale")
    parser.add_argument("--compute-dtype", default="float32", help="dtype the transformer computes in")
    parser.add_argument("--decode-cells", type=int, default=0, help="central crop decoded (0 = canvas)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    comfyui = os.environ.get("COMFYUI_PATH")
    if not comfyui:
        parser.error("set COMFYUI_PATH to a ComfyUI checkout and run with that ComfyUI's Python")
    torch.set_num_threads(args.threads)
    config = {
        "size": args.size,
        "variant": args.variant,
        "gemma_layers": args.gemma_layers,
        "steps": args.steps,
        "cfg": args.cfg,
        "compute_dtype": args.compute_dtype,
        "decode_cells": args.decode_cells,
        "threads": args.threads,
    }
    began = time.perf_counter()
    report = run(args.size, args.workdir, Path(comfyui).expanduser().resolve(), config)
    report["machine"] = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "load_average_end": list(os.getloadavg()),
        "nice": os.nice(0),
        "total_seconds": time.perf_counter() - began,
    }
    save(args.results, args.variant, report)
    return report


def save(results: Path, variant: str, report: dict) -> None:
    """Record `report` under its variant in comfy_scale.json/.md, keeping the other variants' (a lock
    serialises variants run side by side)."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / "comfy_scale.json"
    folder = os.open(results, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        reports = json.loads(path.read_text()) if path.is_file() else {}
        path.write_text(json.dumps(reports | {variant: report}, indent=1) + "\n")
        (results / "comfy_scale.md").write_text(markdown(reports | {variant: report}))
    finally:
        os.close(folder)  # releases the lock


if __name__ == "__main__":
    main()
