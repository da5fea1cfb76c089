"""SANA at its published sizes through the pack's nodes inside a real ComfyUI (CPU, in-process).

Run from the repository root with ComfyUI's Python:
``COMFYUI_PATH=/path/to/ComfyUI /path/to/ComfyUI/.venv/bin/python -m bench.bench_comfy_scale
--decode-cells 24`` (about 8 CPU minutes, peak resident memory 9.1 GiB; decoding the whole 2048 px
canvas instead of its central 768 px adds about 12 CPU minutes). ``--size small`` runs the same graph
on toy models in seconds; the integration tests do that. Writes ``bench/results/comfy_scale.json``
and ``.md``; the random model files go to a ComfyUI base directory under ``--workdir`` (6.6 GiB at the
published sizes, kept for reruns).

Protocol. No SANA weights can be downloaded here, so every model is random N(0, 0.02²) weights in the
key layout and shapes of its published checkpoint (``temporal_tiling.sana.fixtures``), saved in bf16
where ComfyUI users keep them: ``models/diffusion_models/Sana_600M_1024px_BF16.pth`` (original
layout), ``models/vae/dc-ae-f32c32-sana-1.0.safetensors`` (DC-AE f32c32, diffusers layout) and
``models/text_encoders/gemma-2-2b-shaped/`` (Gemma-2-2B width, vocabulary and ``--gemma-layers`` of
its 26 layers, with a word-level tokenizer: Gemma's SentencePiece vocabulary cannot be downloaded).
The graph is the one a user builds, each node called as ComfyUI's executor calls it (``execute``):

Load SANA (bf16) → CLIPTextEncode (SANA's complex human instruction + prompt; the negative is the
stock ConditioningZeroOut) → KSampler on a low-res guide → Tile Planner (2×2 tiles of 1024 px,
2-cell lock band, tiles grown to fit) → BCLA Cache (cumulative) → Global Context Encoder (guide
latent, ``bcla_seed`` + ``skip_residual``) → Causal SANA Sampler → stock VAEDecodeTiled.

This CPU has no bf16 matrix units, so the transformer Load SANA returns in bf16 is cast to
``--compute-dtype`` float32 before sampling (ComfyUI follows the model's dtype); the text encoder
computes in bf16. Every model call is timed by forward hooks on the transformer, which also read the
BCLA cache's size; peak resident memory (Linux VmHWM, reset before every stage) is recorded per stage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench.bench_engine import CAUSAL_OVERLAP, TILE, _rss_kib, measure_in_child
from bench.bench_scale import CallTimer, _clock, _since
from temporal_tiling.sana import fixtures

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


def write_published(models: Path, gemma_layers: int) -> Models:
    """SANA 600M 1024 px (.pth, original layout), DC-AE f32c32 and a Gemma-2-2B-shaped encoder, in bf16."""
    dtype = torch.bfloat16
    ckpt = models / "diffusion_models" / "Sana_600M_1024px_BF16.pth"
    vae = models / "vae" / "dc-ae-f32c32-sana-1.0.safetensors"
    text = models / "text_encoders" / f"gemma-2-2b-shaped-{gemma_layers}l"
    if not ckpt.is_file():
        sd = fixtures.original_state_dict(**fixtures.PUBLISHED_TRANSFORMERS["Sana_600M_1024px"], dtype=dtype)
        torch.save({"state_dict": sd}, ckpt)
    if not vae.is_file():
        save_file(fixtures.published_dcae_state_dict(dtype), str(vae))
    if not (text / "model.safetensors").is_file():
        fixtures.write_gemma2_folder(text, gemma_layers, dtype)
    description = {
        "transformer": "SANA 600M 1024px, original-layout .pth, bf16",
        "vae": "DC-AE f32c32 (diffusers layout), bf16",
        "text_encoder": f"Gemma-2-2B shape, {gemma_layers} of 26 layers, bf16, word-level tokenizer",
    }
    return Models(ckpt.name, vae.name, text.name + "/", description)


def write_small(models: Path) -> Models:
    """The same layouts at toy size: 64-wide 2-layer SANA .pth, 4× DC-AE folder, 1-layer Gemma-2 folder."""
    ckpt = models / "diffusion_models" / "scale_tiny_sana.pth"
    sd = fixtures.original_state_dict(64, 2, grid=4, caption_channels=32, in_channels=8)
    # a custom size stores what its weights cannot tell
    torch.save({"state_dict": sd, "config": {"num_cross_attention_heads": 1}}, ckpt)
    fixtures.tiny_vae().save_pretrained(models / "vae" / "scale_tiny_dcae")
    text = models / "text_encoders" / "scale_tiny_gemma2"
    tokenizer = fixtures.tiny_tokenizer()
    fixtures.tiny_gemma2(len(tokenizer)).save_pretrained(text)
    tokenizer.save_pretrained(text)
    description = {
        "transformer": "64 wide, 2 layers",
        "vae": "toy DC-AE 4×",
        "text_encoder": "1-layer Gemma-2",
    }
    return Models(ckpt.name, "scale_tiny_dcae/", text.name + "/", description)


def write_models(base: Path, size: str, gemma_layers: int) -> dict:
    """Write the model set (published files already there are kept); its Models fields as a dict."""
    models = base / "models"
    for kind in ("diffusion_models", "vae", "text_encoders"):
        (models / kind).mkdir(parents=True, exist_ok=True)
    written = write_published(models, gemma_layers) if size == "published" else write_small(models)
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
    report: dict = {
        "variant": model.model.variant_name,
        "flow_shift": float(model.model.model_sampling.shift),
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
    with stage(stages, "cast"):
        transformer.to(getattr(torch, config["compute_dtype"]))
    report["dtypes"]["transformer_compute"] = str(transformer.dtype)
    with stage(stages, "text"):
        (positive,) = stock.CLIPTextEncode().encode(clip, PROMPT)
    (negative,) = stock.ConditioningZeroOut().zero_out(positive)
    encoder = clip.cond_stage_model.encoder
    report["text"] = {
        "tokens_in": int(encoder.tokenize(PROMPT)["input_ids"].shape[1]),
        "template": encoder.uses_instruction(PROMPT),
        "embeds_shape": list(positive[0][0].shape),
    }
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
    written = measure_in_child(write_models, base, size, config["gemma_layers"], timeout=3600)
    if "error" in written:
        raise RuntimeError(f"writing the models failed: {written}")
    models = Models(**{field.name: written[field.name] for field in dataclasses.fields(Models)})
    report = run_graph(comfyui, base, models, config)
    files = [f for f in (base / "models").rglob("*") if f.is_file()]
    report |= {
        "size": size,
        "models": models.description,
        "file_bytes": sum(f.stat().st_size for f in files),
        "config": config,
    }
    return report


def markdown(report: dict) -> str:
    stages, causal, decode = report["stages"], report["causal"], report["decode"]
    config = report["config"]
    lines = [
        "# SANA at published sizes through the pack's nodes in ComfyUI (CPU)",
        "",
        "`COMFYUI_PATH=... python -m bench.bench_comfy_scale "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in config.items())
        + "`; random weights in the published layouts, read by Load SANA from ComfyUI's model folders "
        "(module docstring of `bench/bench_comfy_scale.py`). "
        f"{report['machine']['cpus']} shared CPUs, {config['threads']} torch thread(s), `nice -n 10`, other "
        "jobs running: CPU seconds are the robust figure.",
        "",
        f"- models: {report['models']['transformer']} ({report['params_m']['transformer']:.4g} M), "
        f"{report['models']['vae']} ({report['params_m']['vae']:.4g} M), "
        f"{report['models']['text_encoder']} ({report['params_m']['text_encoder']:.4g} M); "
        f"{report['file_bytes'] / 1024**3:.1f} GiB of files",
        f"- Load SANA (weight_dtype bf16): detected **{report['variant']}**, shift "
        f"{report['flow_shift']:g}; transformer computed in {report['dtypes']['transformer_compute']}, "
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
        f"- **peak RSS {report['peak_rss_mib']:.0f} MiB** (process, all models resident)",
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
        "total_seconds": time.perf_counter() - began,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "comfy_scale.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.results / "comfy_scale.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    main()
