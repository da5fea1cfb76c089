"""Recipe that reproduces the embedded seam-lab model from scratch and exports it as a SanaPipeline folder.

Stages (each resumable from `--work`; rerun the same command after an interruption):
1. word-level tokenizer over the seam-lab prompt vocabulary + a tiny frozen random Gemma-2 encoder,
2. AutoencoderDC (8x, 16 latent channels) on random scene crops, scaling factor = 1 / latent std,
3. SanaTransformer2DModel by flow matching (`flow_matching.py`), EMA weights exported,
4. temporal LoRA on tile sequences with the BCLA cache (`temporal_lora.py`), saved in `temporal_lora/`,
5. export: diffusers/transformers folder layout, model card (`model_card.md` filled in), loss curves,
   reconstruction and sample grids.

Run: `python -m lab.training build --out temporal_tiling/embedded/seamlab-sana`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from string import Template

import torch
from torch import Tensor

from temporal_tiling.lora import load_temporal_lora
from temporal_tiling.options import EMBEDDED_MODEL
from temporal_tiling.sana.text import PROMPT_SETTINGS
from temporal_tiling.sana.vae import compression

from .. import seamlab
from .autoencoder import AEConfig, ae_loss_fn, latent_scaling_factor, reconstruction_psnr
from .flow_matching import FlowConfig, flow_loss_fn
from .loop import Checkpoint, run_loop
from .losses import SHIFT
from .plots import plot_loss_curves, to_grid
from .temporal_lora import LoraTrainConfig, evaluate_tile_sequences, train_temporal_lora_modules
from .toy_models import (
    build_autoencoder,
    build_text_encoder,
    build_tokenizer,
    build_transformer,
    corpus,
    encode_prompts,
)

MODEL_CARD = Path(__file__).with_name("model_card.md")
"""The model card's text with `$name` placeholders (string.Template) that `model_card` fills in."""
DEMO_PROMPTS = (
    "a blue to pink sky with one sun at top left",
    "a black to purple night sky with one moon at top right",
    "a navy to cyan sky with one sun at top right and one tree at bottom left",
    "a horizontal gradient from red to blue",
    "grey brushed metal with diagonal highlights",
    "wide vertical teal and pink stripes",
    "fine red and cyan checks, dark vignette",
    "wide navy and magenta dots",
)
SAMPLE_CELLS = 8
"""Side of the card's samples and held-out reconstructions in latent cells (64 px at 8x, 256 px at 32x):
the transformer's smallest training size, whatever the compression."""
CANVAS_CELLS = (16, 32)
"""Height, width of the card's whole-canvas renders in latent cells (2:1, twice the training side)."""
CANVAS_PROMPTS = (
    "a blue to pink sky with one sun at top left",
    "purple brushed metal with horizontal highlights, dark vignette",
)


@contextlib.contextmanager
def _timed(log: dict, key: str) -> Iterator[None]:
    """Wall seconds of a stage, accumulated over resumed invocations."""
    t0 = time.monotonic()
    yield
    log[key] = round(log.get(key, 0.0) + time.monotonic() - t0, 1)


def build(args: argparse.Namespace) -> None:
    """Run all stages; skip the ones already finished in `args.work`."""
    from diffusers import SanaTransformer2DModel

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    times_path = work / "times.json"
    times: dict[str, float] = json.loads(times_path.read_text()) if times_path.exists() else {}
    cpu_before = times.get("cpu_total_s", 0.0)

    def save_times() -> None:
        # CPU seconds of all invocations: on a shared machine the comparable cost, unlike wall time.
        times["cpu_total_s"] = round(cpu_before + time.process_time(), 1)
        times_path.write_text(json.dumps(times))

    reused = Path(args.reuse_components) if args.reuse_components else None
    if reused is not None:
        tokenizer, text_encoder, vae, ae_info = _reused_components(reused)
    else:
        tokenizer = build_tokenizer(corpus())
        text_encoder = build_text_encoder(tokenizer, seed=args.seed)
        vae, ae_info = _trained_autoencoder(args, work, times, save_times)
    side = SAMPLE_CELLS * compression(vae)
    held_out = seamlab.render(seamlab.sample_scenes(64, seed=999_999), side, side)
    psnr = reconstruction_psnr(vae, held_out)
    print(f"autoencoder held-out PSNR {psnr:.2f} dB, scale {vae.config.scaling_factor:.4f}", flush=True)

    transformer = build_transformer(
        args.latent_channels,
        text_encoder.config.hidden_size,
        args.hidden,
        args.heads,
        args.layers,
        interpolation_scale=1.0 if args.position_embedding else None,
    )
    fl_cfg = FlowConfig(
        steps=args.steps,
        lr=args.lr,
        warmup=100,
        seed=args.seed + 2,
        threads=args.threads,
        tokens_per_step=args.tokens_per_step,
        checkpoint_every=100,
        max_minutes=args.max_minutes,
        crop_prob=args.crop_prob,
        precision=args.precision,
        sizes=tuple(args.latent_sizes or FlowConfig.sizes),
    )
    if not (work / "flow_done.json").exists():
        with _timed(times, "transformer_s"):
            tr_ema, tr_res = run_loop(
                transformer,
                flow_loss_fn(transformer, vae, tokenizer, text_encoder, fl_cfg),
                fl_cfg,
                Checkpoint(work / "flow_ckpt"),
                "transformer",
            )
        tr_ema.module.save_pretrained(work / "transformer_raw", safe_serialization=True)
        (work / "flow_done.json").write_text(json.dumps({"history": tr_res.history, "steps": tr_res.step}))
        save_times()
    transformer = SanaTransformer2DModel.from_pretrained(work / "transformer_raw").eval()

    lora_cfg = LoraTrainConfig(
        steps=args.lora_steps, seed=args.seed + 3, threads=args.threads, checkpoint_every=50
    )
    if args.lora_steps > 0 and not (work / "lora_done.json").exists():
        base = SanaTransformer2DModel.from_pretrained(work / "transformer_raw")
        with _timed(times, "temporal_lora_s"):
            log = train_temporal_lora_modules(
                base, vae, tokenizer, text_encoder, lora_cfg, work / "temporal_lora", work
            )
        (work / "lora_done.json").write_text(json.dumps(log))
        save_times()

    info = {
        **ae_info,
        "flow": json.loads((work / "flow_done.json").read_text()),
        "times": times,
        "psnr": round(psnr, 2),
        "args": {k: v for k, v in vars(args).items() if k != "cmd"},
        "flow_config": asdict(fl_cfg),
    }
    lora_dir = work / "temporal_lora" if (work / "lora_done.json").exists() else None
    if lora_dir is not None:
        info["lora"] = json.loads((work / "lora_done.json").read_text())
        info["lora"]["eval"] = _lora_eval(work, vae, tokenizer, text_encoder, lora_dir)
    export(Path(args.out), transformer, vae, text_encoder, tokenizer, info, held_out, lora_dir, reused)


def _trained_autoencoder(args: argparse.Namespace, work: Path, times: dict, save_times) -> tuple:
    """The autoencoder stage: train (or resume) the DC-AE, set its latent scaling factor; returns the
    frozen model and its log entries ("ae", "ae_config")."""
    from diffusers import AutoencoderDC

    vae = build_autoencoder(args.latent_channels, tuple(args.ae_channels))
    ae_cfg = AEConfig(
        steps=args.ae_steps,
        batch=args.ae_batch,
        crop=args.ae_crop,
        precision=args.precision,
        lr=2e-3,
        warmup=50,
        seed=args.seed + 1,
        threads=args.threads,
        checkpoint_every=100,
    )
    if not (work / "ae_done.json").exists():
        with _timed(times, "autoencoder_s"):
            ae_ema, ae_res = run_loop(
                vae, ae_loss_fn(vae, ae_cfg), ae_cfg, Checkpoint(work / "ae_ckpt"), "autoencoder"
            )
        ae_ema.module.save_pretrained(work / "vae_raw", safe_serialization=True)
        (work / "ae_done.json").write_text(json.dumps({"history": ae_res.history, "steps": ae_res.step}))
        save_times()
    vae = AutoencoderDC.from_pretrained(work / "vae_raw").eval().requires_grad_(False)
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, size=SAMPLE_CELLS * compression(vae)))
    return vae, {"ae": json.loads((work / "ae_done.json").read_text()), "ae_config": asdict(ae_cfg)}


def _reused_components(folder: Path) -> tuple:
    """Tokenizer, text encoder and DC-AE of an exported SanaPipeline folder (no autoencoder training), and
    the autoencoder entries of that folder's training log, which describe how they were made."""
    from diffusers import AutoencoderDC
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    text_encoder = AutoModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    vae = AutoencoderDC.from_pretrained(folder / "vae", local_files_only=True)
    log = json.loads((folder / "training_log.json").read_text())
    ae_info = {"ae": log["ae"], "ae_config": log["ae_config"], "reused_components": str(folder)}
    return tokenizer, text_encoder.eval().requires_grad_(False), vae.eval().requires_grad_(False), ae_info


def _lora_eval(work: Path, vae, tokenizer, text_encoder, lora_dir: Path) -> dict[str, list[float]]:
    """Held-out per-tile losses: base / LoRA model, independent tiles / cumulative BCLA cache."""
    from diffusers import SanaTransformer2DModel

    out = {}
    for name, adapter in (("base", None), ("lora", lora_dir)):
        model = SanaTransformer2DModel.from_pretrained(work / "transformer_raw").eval()
        if adapter is not None:
            load_temporal_lora(model, adapter)
        for mode in ("off", "cumulative"):
            losses = evaluate_tile_sequences(model, vae, tokenizer, text_encoder, mode)
            out[f"{name}_{mode}"] = [round(float(v), 4) for v in losses]
    return out


@torch.no_grad()
def sample_card_latents(
    transformer,
    text: Tensor,
    mask: Tensor,
    uncond: Tensor,
    uncond_mask: Tensor,
    noise: Tensor,
    steps: int = 20,
    cfg_scale: float = 4.0,
    shift: float = SHIFT,
) -> Tensor:
    """Euler flow-matching sampler with CFG on the velocity, schedule of diffusers'
    FlowMatchEulerDiscreteScheduler (shift 3) — what SanaPipeline does with the exported scheduler.

    Not `temporal_tiling.flow`: that schedule runs linearly in t down to 0 (ComfyUI's `simple`), this
    one ends at σ ≈ 0.009 before 0, so the card's committed sample grids come only from this one.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(steps)
    x = noise.clone()
    b = len(x)
    for t in sched.timesteps:
        inp = torch.cat([x, x])
        emb = torch.cat([text, uncond.expand(b, -1, -1)])
        m = torch.cat([mask, uncond_mask.expand(b, -1)])
        v = transformer(inp, emb, t.expand(2 * b).float(), encoder_attention_mask=m).sample.float()
        v_c, v_u = v.chunk(2)
        x = sched.step(v_u + cfg_scale * (v_c - v_u), t, x).prev_sample
    return x


@torch.no_grad()
def _samples(transformer, vae, tokenizer, text_encoder, prompts, height: int, width: int, seed: int):
    text, mask = encode_prompts(tokenizer, text_encoder, list(prompts))
    uncond, umask = encode_prompts(tokenizer, text_encoder, [""])
    c = compression(vae)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(prompts), transformer.config.in_channels, height // c, width // c, generator=g)
    lat = sample_card_latents(transformer, text, mask, uncond, umask, noise, steps=20, cfg_scale=4.0)
    return ((vae.decode(lat / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)


def export(
    out: Path,
    transformer,
    vae,
    text_encoder,
    tokenizer,
    info: dict,
    held_out: torch.Tensor,
    lora_dir: Path | None = None,
    reused: Path | None = None,
) -> None:
    """Write the SanaPipeline folder (atomically), its pictures, the temporal LoRA and the model card.

    With ``reused`` (the folder the tokenizer, text encoder and DC-AE came from) those parts are relative
    symlinks into it rather than copies, so a second transformer costs only its own weights."""
    import diffusers
    from diffusers import FlowMatchEulerDiscreteScheduler

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
    if reused is not None:
        for part in ("vae", "text_encoder", "tokenizer"):
            (tmp / part).symlink_to(os.path.relpath(reused / part, out), target_is_directory=True)
    else:
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(tmp / "tokenizer")
    FlowMatchEulerDiscreteScheduler(shift=SHIFT).save_pretrained(tmp / "scheduler")
    # Trained on bare prompts padded to max_text_length, not SANA's instruction: the loaders read this.
    (tmp / PROMPT_SETTINGS).write_text(
        json.dumps({"instruction": "never", "max_sequence_length": FlowConfig.max_text_length}, indent=2)
    )
    (tmp / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "SanaPipeline",
                "_diffusers_version": diffusers.__version__,
                "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
                "text_encoder": ["transformers", "Gemma2Model"],
                "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
                "transformer": ["diffusers", "SanaTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderDC"],
            },
            indent=2,
        )
    )
    # Pictures for the card.
    recon = ((vae.decode(vae.encode(held_out[:8] * 2 - 1).latent).sample + 1) / 2).clamp(0, 1)
    to_grid(torch.cat([held_out[:8], recon]), 8).save(tmp / "reconstruction.png", optimize=True)
    side = SAMPLE_CELLS * compression(vae)
    samples = _samples(transformer, vae, tokenizer, text_encoder, DEMO_PROMPTS, side, side, seed=0)
    to_grid(samples, 4).save(tmp / "samples.png", optimize=True)
    height, width = (n * compression(vae) for n in CANVAS_CELLS)
    canvas = _samples(transformer, vae, tokenizer, text_encoder, CANVAS_PROMPTS, height, width, seed=1)
    to_grid(canvas, 1).save(tmp / "samples_canvas.png", optimize=True)
    curves = {
        "loss_autoencoder.png": ("autoencoder (L1 + grad)", info["ae"]["history"]),
        "loss_transformer.png": ("flow matching (sigma-weighted MSE)", info["flow"]["history"]),
    }
    if lora_dir is not None:
        shutil.copytree(lora_dir, tmp / "temporal_lora")
        curves["loss_temporal_lora.png"] = ("temporal LoRA, tile sequences", info["lora"]["history"])
    for name, (label, hist) in curves.items():
        plot_loss_curves({label: (hist["step"], hist["loss"])}, tmp / name)
    (tmp / "training_log.json").write_text(json.dumps(info, indent=1))
    (tmp / "README.md").write_text(model_card(transformer, vae, text_encoder, tokenizer, info))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported {out} ({size / 1e6:.2f} MB)", flush=True)


# ----------------------------------------------------------------------------- model card
def _n(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M"


def _last(hist: dict) -> float:
    return hist["loss"][-1] if hist["loss"] else float("nan")


def _minutes(times: dict, key: str) -> str:
    wall = times.get(f"{key}_s")
    return f"{wall / 60:.1f} min wall" if wall is not None else "wall time n/a"


def _position_embedding(config) -> str:
    if config.interpolation_scale is None:
        return "no positional embedding"
    grid = config.sample_size // config.patch_size
    return (
        f"sin-cos positional embedding (SANA 2K/4K style: base grid {grid} cells, "
        f"interpolation_scale {config.interpolation_scale})"
    )


def _components_table(transformer, vae, text_encoder, tokenizer, seed: int) -> str:
    """The card's "Components" rows: class, config summary and parameter count of each part."""
    t, v, te = transformer.config, vae.config, text_encoder.config
    rows = [
        (
            "transformer",
            "`SanaTransformer2DModel`",
            f"{t.num_layers} layers, {t.num_attention_heads} heads × {t.attention_head_dim}, "
            f"patch {t.patch_size}, {_position_embedding(t)}, cross-attention to {t.caption_channels}-d text",
            _n(transformer),
        ),
        (
            "vae",
            "`AutoencoderDC`",
            f"{compression(vae)}× compression, {v.latent_channels} latent channels, "
            f"channels {list(v.encoder_block_out_channels)}, scaling_factor {v.scaling_factor:.4f}",
            _n(vae),
        ),
        (
            "text_encoder",
            "`Gemma2Model`",
            f"{te.num_hidden_layers} layers, hidden {te.hidden_size}, random init (seed {seed}), frozen",
            _n(text_encoder),
        ),
        (
            "tokenizer",
            "`PreTrainedTokenizerFast`",
            f"word-level (`tokenizers`), vocabulary {len(tokenizer)}, `<bos>` prepended, right padding",
            "—",
        ),
        ("scheduler", "`FlowMatchEulerDiscreteScheduler`", f"shift {SHIFT}", "—"),
    ]
    return "\n".join(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in rows)


def _lora_summary(lora: dict | None, times: dict) -> str:
    """The card's temporal-LoRA bullet: settings, final loss and the held-out per-tile loss table."""
    if not lora:
        return "not trained in this build"
    c = lora["config"]
    text = (
        f"{lora['steps']} steps, rank {c['rank']} on attn1 to_q/to_k/to_v/to_out.0 (zero-init B), "
        f"AdamW lr {c['lr']}, batch {c['batch']} canvases of {c['canvas'][1]}×{c['canvas'][0]} px cut "
        f"into {c['tile']} px tiles with {c['overlap']} px overlap ({c['order']} order), cumulative BCLA "
        f"cache active: the loss on tile t reads the statistics of tiles < t. Final loss "
        f"{_last(lora['history']):.4f}. {_minutes(times, 'temporal_lora')}. File: "
        "`temporal_lora/pytorch_lora_weights.safetensors` (diffusers LoRA format)."
    )
    if "eval" not in lora:
        return text
    ev = lora["eval"]
    rows_eval = "\n".join(
        f"  | {k.replace('_', ' + ')} | " + " | ".join(f"{v:.4f}" for v in vals) + " |"
        for k, vals in ev.items()
    )
    n_tiles = len(next(iter(ev.values())))
    head = " | ".join(f"tile {i}" for i in range(n_tiles))
    text += (
        "\n  Held-out σ-weighted loss per tile (16 unseen 112 px canvases, 2×2 tiles, σ 0.3/0.6/0.9;"
        " tile 0 never has a cache):\n\n"
        f"  | model + cache | {head} |\n  |---|" + "---|" * n_tiles + f"\n{rows_eval}\n"
    )

    def gain(m: str) -> float:  # mean relative loss drop from the cache on tiles that have one
        off, cum = ev[f"{m}_off"][1:], ev[f"{m}_cumulative"][1:]
        return 100 * sum((a - b) / a for a, b in zip(off, cum, strict=True)) / len(off)

    return text + (
        f"\n  Cache gain on tiles 1+: base {gain('base'):+.1f} %, with LoRA {gain('lora'):+.1f} %; "
        "most of the LoRA's drop on every tile (tile 0 too) is extra training of the small base.\n"
    )


def _title(out: Path, compression: int) -> str:
    """The card's heading: the embedded model's, or a bench model's with its compression."""
    if out.name == EMBEDDED_MODEL.name:
        return f"{out.name} — embedded SANA-architecture model of the temporal tiling pack"
    return f"{out.name} — a SANA-architecture seam-lab model with a {compression}× autoencoder"


def _autoencoder_flags(args: dict, reused: str | None) -> list[str]:
    """The build's autoencoder flags that differ from the defaults (none with reused components)."""
    flags = {
        "--latent-channels": (args.get("latent_channels", 16), 16),
        "--ae-channels": (args.get("ae_channels", [16, 32, 64, 64]), [16, 32, 64, 64]),
        "--ae-crop": (args.get("ae_crop", 32), 32),
        "--ae-batch": (args.get("ae_batch", 16), 16),
    }
    if reused:
        return []
    return [
        f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        for flag, (value, default) in flags.items()
        if value != default
    ]


def _latent_sizes_flag(sizes: list) -> list[str]:
    """``--latent-sizes`` of the card's command when the build's sizes are not the default ones."""
    if [list(size) for size in sizes] == [list(size) for size in FlowConfig.sizes]:
        return []
    return ["--latent-sizes " + " ".join(f"{h}x{w}" for h, w in sizes)]


def model_card(transformer, vae, text_encoder, tokenizer, info: dict) -> str:
    """Markdown model card (`model_card.md` filled in): config, data, steps, wall time, command, pictures."""
    a, ae, fl, times = info["args"], info["ae_config"], info["flow_config"], info["times"]
    lora = info.get("lora")
    # Fixed step counts (not the wall-clock cap) so the command replays the same run anywhere.
    reused = info.get("reused_components")
    ae_steps = f"--reuse-components {reused}" if reused else f"--ae-steps {info['ae']['steps']}"
    command = " ".join(
        [
            f"python -m lab.training build --out {a['out']}",
            *(["--overwrite-embedded"] if Path(a["out"]).name == EMBEDDED_MODEL.name else []),
            f"--work {a['work']} --seed {a['seed']} --threads {a['threads']}",
            f"{ae_steps} --steps {info['flow']['steps']}",
            f"--lora-steps {lora['steps'] if lora else 0}",
            f"--hidden {a['hidden']} --heads {a['heads']} --layers {a['layers']}",
            f"--tokens-per-step {a['tokens_per_step']} --lr {a['lr']}",
            *_autoencoder_flags(a, reused),
            *_latent_sizes_flag(fl["sizes"]),
            *(["--position-embedding"] if a.get("position_embedding") else []),
            *([f"--crop-prob {a['crop_prob']}"] if a.get("crop_prob", 0.3) != 0.3 else []),
            *([f"--precision {a['precision']}"] if a.get("precision", "bf16") != "bf16" else []),
        ]
    )
    pictures = "![autoencoder loss](loss_autoencoder.png) ![transformer loss](loss_transformer.png)"
    if lora:
        pictures += " ![temporal LoRA loss](loss_temporal_lora.png)"
    c = compression(vae)
    height, width = (n * c for n in CANVAS_CELLS)
    values = {
        "title": _title(Path(a["out"]), c),
        "sample_size": f"{SAMPLE_CELLS * c}×{SAMPLE_CELLS * c}",
        "canvas_size": f"{width}×{height}",
        "ae_precision": "bf16 autocast" if ae.get("precision", "bf16") == "bf16" else "fp32 (no autocast)",
        "vocabulary_size": len(tokenizer),
        "components": _components_table(transformer, vae, text_encoder, tokenizer, a["seed"]),
        "scaling_factor": f"{vae.config.scaling_factor:.4f}",
        "ae_steps": info["ae"]["steps"],
        "ae_batch": ae["batch"],
        "ae_crop": ae["crop"],
        "ae_grad_weight": ae["grad_weight"],
        "ae_lr": ae["lr"],
        "ae_ema_decay": ae["ema_decay"],
        "psnr": f"{info['psnr']:.2f}",
        "ae_final_loss": f"{_last(info['ae']['history']):.4f}",
        "ae_time": _minutes(times, "autoencoder"),
        "flow_steps": info["flow"]["steps"],
        "shift": SHIFT,
        "flow_ema_decay": fl["ema_decay"],
        "flow_lr": fl["lr"],
        "tokens_per_step": fl["tokens_per_step"],
        "latent_sizes": [list(x) for x in fl["sizes"]],
        "crop_percent": round(fl["crop_prob"] * 100),
        "cfg_dropout_percent": round(fl["cfg_dropout"] * 100),
        "flow_precision": "bf16 autocast with fp32 master\n  weights,"
        if fl.get("precision", "bf16") == "bf16"
        else "fp32 (no autocast),",
        "flow_final_loss": f"{_last(info['flow']['history']):.4f}",
        "flow_time": _minutes(times, "transformer"),
        "lora_summary": _lora_summary(lora, times),
        "threads": a["threads"],
        "cpu_minutes": f"{times.get('cpu_total_s', 0) / 60:.1f}",
        "command": command,
        "loss_pictures": pictures,
        "demo_prompts": "; ".join(DEMO_PROMPTS),
        "canvas_prompts": "; ".join(CANVAS_PROMPTS),
    }
    card = Template(MODEL_CARD.read_text(encoding="utf-8")).substitute(values)
    if not reused:
        return card
    body = card.split("\n", 1)[1]
    return (
        f"# {Path(a['out']).name} — a second transformer on the parts of `{reused}`\n\n"
        f"Its vae, text_encoder and tokenizer are those of `{reused}` (symlinks, not retrained); the "
        "autoencoder bullet below describes their training in that build.\n" + body
    )
