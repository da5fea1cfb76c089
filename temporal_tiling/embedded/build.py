"""Recipe that reproduces the embedded seam-lab model from scratch and exports it as a SanaPipeline folder.

Stages (each resumable from `--work`; rerun the same command after an interruption):
1. word-level tokenizer over the seam-lab prompt vocabulary + a tiny frozen random Gemma-2 encoder,
2. AutoencoderDC (8x, 16 latent channels) on random scene crops, scaling factor = 1 / latent std,
3. SanaTransformer2DModel by flow matching (`temporal_tiling.train`), EMA weights exported,
4. temporal LoRA on tile sequences with the BCLA cache (`temporal_tiling.lora`), saved in `temporal_lora/`,
5. export: diffusers/transformers folder layout, model card, loss curves, reconstruction and sample grids.

Run: `python -m temporal_tiling.train build --out temporal_tiling/embedded/seamlab-sana`
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import torch

from .. import seamlab
from .. import train as tr
from ..lora import LoraTrainConfig, evaluate_tile_sequences, load_temporal_lora, train_temporal_lora_modules
from ..sana.text import PROMPT_SETTINGS

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


def corpus(n: int = 4000) -> list[str]:
    """Tokenizer training text: sampled prompts plus every word the generator can emit."""
    return [*seamlab.sample_scenes(n, seed=7).prompts, " ".join(seamlab.prompt_vocabulary())]


def build(args: argparse.Namespace) -> None:
    """Run all stages; skip the ones already finished in `args.work`."""
    from diffusers import AutoencoderDC, SanaTransformer2DModel

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

    tokenizer = tr.build_tokenizer(corpus())
    text_encoder = tr.build_text_encoder(tokenizer, seed=args.seed)

    vae = tr.build_autoencoder(args.latent_channels)
    ae_cfg = tr.AEConfig(
        steps=args.ae_steps,
        lr=2e-3,
        warmup=50,
        seed=args.seed + 1,
        threads=args.threads,
        checkpoint_every=100,
    )
    if not (work / "ae_done.json").exists():
        with _timed(times, "autoencoder_s"):
            ae_ema, ae_res = tr.run_loop(
                vae, tr.ae_loss_fn(vae, ae_cfg), ae_cfg, tr.Checkpoint(work / "ae_ckpt"), "autoencoder"
            )
        ae_ema.module.save_pretrained(work / "vae_raw", safe_serialization=True)
        (work / "ae_done.json").write_text(json.dumps({"history": ae_res.history, "steps": ae_res.step}))
        save_times()
    vae = AutoencoderDC.from_pretrained(work / "vae_raw").eval().requires_grad_(False)
    held_out = seamlab.render(seamlab.sample_scenes(64, seed=999_999), 64, 64)
    vae.register_to_config(scaling_factor=tr.latent_scaling_factor(vae))
    psnr = tr.reconstruction_psnr(vae, held_out)
    print(f"autoencoder held-out PSNR {psnr:.2f} dB, scale {vae.config.scaling_factor:.4f}", flush=True)

    transformer = tr.build_transformer(
        args.latent_channels, text_encoder.config.hidden_size, args.hidden, args.heads, args.layers
    )
    fl_cfg = tr.FlowConfig(
        steps=args.steps,
        lr=args.lr,
        warmup=100,
        seed=args.seed + 2,
        threads=args.threads,
        tokens_per_step=args.tokens_per_step,
        checkpoint_every=100,
        max_minutes=args.max_minutes,
    )
    if not (work / "flow_done.json").exists():
        with _timed(times, "transformer_s"):
            tr_ema, tr_res = tr.run_loop(
                transformer,
                tr.flow_loss_fn(transformer, vae, tokenizer, text_encoder, fl_cfg),
                fl_cfg,
                tr.Checkpoint(work / "flow_ckpt"),
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
        "ae": json.loads((work / "ae_done.json").read_text()),
        "flow": json.loads((work / "flow_done.json").read_text()),
        "times": times,
        "psnr": round(psnr, 2),
        "args": {k: v for k, v in vars(args).items() if k != "cmd"},
        "flow_config": asdict(fl_cfg),
        "ae_config": asdict(ae_cfg),
    }
    lora_dir = work / "temporal_lora" if (work / "lora_done.json").exists() else None
    if lora_dir is not None:
        info["lora"] = json.loads((work / "lora_done.json").read_text())
        info["lora"]["eval"] = _lora_eval(work, vae, tokenizer, text_encoder, lora_dir)
    export(Path(args.out), transformer, vae, text_encoder, tokenizer, info, held_out, lora_dir)


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
def _samples(transformer, vae, tokenizer, text_encoder, prompts, height: int, width: int, seed: int):
    text, mask = tr.encode_prompts(tokenizer, text_encoder, list(prompts))
    uncond, umask = tr.encode_prompts(tokenizer, text_encoder, [""])
    c = tr.vae_compression(vae)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(len(prompts), transformer.config.in_channels, height // c, width // c, generator=g)
    lat = tr.sample(transformer, text, mask, uncond, umask, noise, steps=20, cfg_scale=4.0)
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
) -> None:
    """Write the SanaPipeline folder (atomically), its pictures, the temporal LoRA and the model card."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    transformer.save_pretrained(tmp / "transformer", safe_serialization=True)
    vae.save_pretrained(tmp / "vae", safe_serialization=True)
    text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "tokenizer")
    FlowMatchEulerDiscreteScheduler(shift=tr.SHIFT).save_pretrained(tmp / "scheduler")
    # Trained on bare prompts padded to max_text_length, not SANA's instruction: the loaders read this.
    (tmp / PROMPT_SETTINGS).write_text(
        json.dumps({"instruction": "never", "max_sequence_length": tr.FlowConfig.max_text_length}, indent=2)
    )
    import diffusers

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
    tr.to_grid(torch.cat([held_out[:8], recon]), 8).save(tmp / "reconstruction.png", optimize=True)
    samples = _samples(transformer, vae, tokenizer, text_encoder, DEMO_PROMPTS, 64, 64, seed=0)
    tr.to_grid(samples, 4).save(tmp / "samples.png", optimize=True)
    canvas = _samples(transformer, vae, tokenizer, text_encoder, CANVAS_PROMPTS, 128, 256, seed=1)
    tr.to_grid(canvas, 1).save(tmp / "samples_canvas.png", optimize=True)
    curves = {
        "loss_autoencoder.png": ("autoencoder (L1 + grad)", info["ae"]["history"]),
        "loss_transformer.png": ("flow matching (sigma-weighted MSE)", info["flow"]["history"]),
    }
    if lora_dir is not None:
        shutil.copytree(lora_dir, tmp / "temporal_lora")
        curves["loss_temporal_lora.png"] = ("temporal LoRA, tile sequences", info["lora"]["history"])
    for name, (label, hist) in curves.items():
        tr.plot_loss_curves({label: (hist["step"], hist["loss"])}, tmp / name)
    (tmp / "training_log.json").write_text(json.dumps(info, indent=1))
    (tmp / "README.md").write_text(model_card(transformer, vae, text_encoder, tokenizer, info))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"exported {out} ({size / 1e6:.2f} MB)", flush=True)


def _n(model) -> str:
    return f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M"


def _last(hist: dict) -> float:
    return hist["loss"][-1] if hist["loss"] else float("nan")


def _minutes(times: dict, key: str) -> str:
    wall = times.get(f"{key}_s")
    return f"{wall / 60:.1f} min wall" if wall is not None else "wall time n/a"


def model_card(transformer, vae, text_encoder, tokenizer, info: dict) -> str:
    """Markdown model card: config, data, steps, wall time, reproduce command, pictures."""
    t, v, a, te = transformer.config, vae.config, info["args"], text_encoder.config
    ae, fl, times = info["ae_config"], info["flow_config"], info["times"]
    lora = info.get("lora")
    # Fixed step counts (not the wall-clock cap) so the command replays the same run anywhere.
    cmd = " ".join(
        [
            "python -m temporal_tiling.train build --out temporal_tiling/embedded/seamlab-sana",
            f"--work out/seamlab-train --seed {a['seed']} --threads {a['threads']}",
            f"--ae-steps {info['ae']['steps']} --steps {info['flow']['steps']}",
            f"--lora-steps {lora['steps'] if lora else 0}",
            f"--hidden {a['hidden']} --heads {a['heads']} --layers {a['layers']}",
            f"--tokens-per-step {a['tokens_per_step']} --lr {a['lr']}",
        ]
    )
    rows = [
        (
            "transformer",
            "`SanaTransformer2DModel`",
            f"{t.num_layers} layers, {t.num_attention_heads} heads × {t.attention_head_dim}, "
            f"patch {t.patch_size}, no positional embedding, cross-attention to {t.caption_channels}-d text",
            _n(transformer),
        ),
        (
            "vae",
            "`AutoencoderDC`",
            f"{tr.vae_compression(vae)}× compression, {v.latent_channels} latent channels, "
            f"channels {list(v.encoder_block_out_channels)}, scaling_factor {v.scaling_factor:.4f}",
            _n(vae),
        ),
        (
            "text_encoder",
            "`Gemma2Model`",
            f"{te.num_hidden_layers} layers, hidden {te.hidden_size}, random init (seed {a['seed']}), frozen",
            _n(text_encoder),
        ),
        (
            "tokenizer",
            "`PreTrainedTokenizerFast`",
            f"word-level (`tokenizers`), vocabulary {len(tokenizer)}, `<bos>` prepended, right padding",
            "—",
        ),
        ("scheduler", "`FlowMatchEulerDiscreteScheduler`", f"shift {tr.SHIFT}", "—"),
    ]
    table = "\n".join(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |" for r in rows)
    lora_text = "not trained in this build"
    if lora:
        c = lora["config"]
        lora_text = (
            f"{lora['steps']} steps, rank {c['rank']} on attn1 to_q/to_k/to_v/to_out.0 (zero-init B), "
            f"AdamW lr {c['lr']}, batch {c['batch']} canvases of {c['canvas'][1]}×{c['canvas'][0]} px cut "
            f"into {c['tile']} px tiles with {c['overlap']} px overlap ({c['order']} order), cumulative BCLA "
            f"cache active: the loss on tile t reads the statistics of tiles < t. Final loss "
            f"{_last(lora['history']):.4f}. {_minutes(times, 'temporal_lora')}. File: "
            "`temporal_lora/pytorch_lora_weights.safetensors` (diffusers LoRA format)."
        )
        if "eval" in lora:
            rows_eval = "\n".join(
                f"  | {k.replace('_', ' + ')} | " + " | ".join(f"{v:.4f}" for v in vals) + " |"
                for k, vals in lora["eval"].items()
            )
            n_tiles = len(next(iter(lora["eval"].values())))
            head = " | ".join(f"tile {i}" for i in range(n_tiles))
            lora_text += (
                "\n  Held-out σ-weighted loss per tile (16 unseen 112 px canvases, 2×2 tiles, σ 0.3/0.6/0.9;"
                " tile 0 never has a cache):\n\n"
                f"  | model + cache | {head} |\n  |---|" + "---|" * n_tiles + f"\n{rows_eval}\n"
            )
            ev = lora["eval"]

            def gain(m: str) -> float:  # mean relative loss drop from the cache on tiles that have one
                off, cum = ev[f"{m}_off"][1:], ev[f"{m}_cumulative"][1:]
                return 100 * sum((a - b) / a for a, b in zip(off, cum, strict=True)) / len(off)

            lora_text += (
                f"\n  Cache gain on tiles 1+: base {gain('base'):+.1f} %, with LoRA {gain('lora'):+.1f} %; "
                "most of the LoRA's drop on every tile (tile 0 too) is extra training of the small base.\n"
            )
    pictures = "![autoencoder loss](loss_autoencoder.png) ![transformer loss](loss_transformer.png)"
    if lora:
        pictures += " ![temporal LoRA loss](loss_temporal_lora.png)"
    return f"""# seamlab-sana — embedded SANA-architecture model of the temporal tiling pack

A tiny model with the real SANA classes, trained on this pack's procedural seam-lab scenes
(`temporal_tiling/seamlab.py`: skies, gradients, metal-like shading with anisotropic specular bands,
repeating stripes/checks/dots, vignettes, and countable objects: one sun, one moon, one tree).
It exists so the pack runs and its tiling claims can be measured without downloadable SANA weights.
It is not an art model: it knows {len(tokenizer)} words and draws seam-lab scenes.

Folder layout = a diffusers `SanaPipeline` checkpoint (`model_index.json`, `transformer/`, `vae/`,
`text_encoder/`, `tokenizer/`, `scheduler/`); every part loads offline with `from_pretrained`.

## Components

| part | class | config | params |
| --- | --- | --- | --- |
{table}

Latents: `vae.encode(2·x - 1).latent × {v.scaling_factor:.4f}` (not SANA's 0.41407). Prompts: pad to a
fixed length with the attention mask, no complex human instruction (the tokenizer knows only seam-lab
words; others map to `<unk>`).

## Training

Data: seam-lab scenes generated on the fly from per-step seeds (no dataset on disk).

- Autoencoder: {info["ae"]["steps"]} steps, batch {ae["batch"]} random {ae["crop"]} px crops,
  L1 + {ae["grad_weight"]}·L1(Sobel gradients), AdamW lr {ae["lr"]}, EMA {ae["ema_decay"]}, bf16 autocast.
  Held-out reconstruction PSNR (64 unseen scenes, 64×64): **{info["psnr"]:.2f} dB**.
  Final loss {_last(info["ae"]["history"]):.4f}. {_minutes(times, "autoencoder")}.
- Transformer: {info["flow"]["steps"]} steps of rectified flow: x_σ = (1-σ)·x0 + σ·ε, target ε - x0,
  logit-normal(0, 1) σ shifted by {tr.SHIFT}, σ-weighted "cosmap" MSE, bf16 autocast with fp32 master
  weights, deterministic `.latent` encodes, EMA exported (decay min({fl["ema_decay"]}, (1+n)/(10+n))
  after n updates); AdamW lr {fl["lr"]};
  {fl["tokens_per_step"]} latent tokens per step over latent sizes {[list(x) for x in fl["sizes"]]};
  {round(fl["crop_prob"] * 100)} % of square batches are tile-like crops of 2× scenes;
  {round(fl["cfg_dropout"] * 100)} % empty prompts for CFG.
  Final loss {_last(info["flow"]["history"]):.4f}. {_minutes(times, "transformer")}.
- Temporal LoRA: {lora_text}
- Machine: CPU, {a["threads"]} thread(s), shared with ~6 other jobs, so wall times are upper bounds;
  CPU time of the whole build: {times.get("cpu_total_s", 0) / 60:.1f} min.

Reproduce (resumable: rerun the same command after an interruption):

```
{cmd}
```

## Pictures

Loss curves: {pictures}

Reconstruction (top: held-out scenes, bottom: decode(encode(x))): ![reconstruction](reconstruction.png)

Samples (Euler, 20 steps, CFG 4, 64×64), prompts in order: {"; ".join(DEMO_PROMPTS)}.
![samples](samples.png)

Whole-canvas renders at 256×128 (no tiling), prompts: {"; ".join(CANVAS_PROMPTS)}.
![canvas](samples_canvas.png)
"""
