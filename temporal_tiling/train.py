"""Flow-matching trainer for SANA-architecture models, the autoencoder trainer and the embedded-model recipe.

Every fix of seed 000's bug table is one small named function below, each guarded by a unit test:

| bug                 | wrong                        | here                                        |
| ------------------- | ---------------------------- | ------------------------------------------- |
| interpolation       | (1-σ)·ε + σ·x0               | `interpolate`: (1-σ)·x0 + σ·ε               |
| target              | x0 - ε                       | `velocity_target`: ε - x0                   |
| precision           | fp16                         | `autocast`: bf16 autocast, fp32 master      |
| shift               | 1.0                          | `shift_sigmas`, default `SHIFT = 3.0`       |
| timestep sampling   | Beta(1.6, 1.605)             | `sample_logit_normal`: sigmoid(N(0, 1))     |
| DC-AE encode        | .latent_dist.sample()        | `encode_latents`: `.latent` (deterministic) |
| loss                | unweighted MSE               | `flow_matching_loss` with `sigma_weights`   |

σ-weighting: the per-sample MSE on the velocity is multiplied by SD3's "cosmap" weight
w(σ) = 2 / (π·(1 - 2σ + 2σ²)) (the same formula as diffusers' `compute_loss_weighting_for_sd3`).
It peaks at σ = 0.5 (4/π) and falls to 2/π at both ends, so the mid-noise levels that decide layout
and colour count most, and neither the nearly-clean nor the pure-noise end dominates the gradient.

CLI: `python -m temporal_tiling.train build --out DIR` reproduces the embedded model from scratch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from . import seamlab
from .errors import UserInputError

SHIFT = 3.0
PRECISIONS = ("bf16", "fp32")


class TrainError(UserInputError):
    """A training setting that cannot work; the message says what to change."""


# ----------------------------------------------------------------------------- bug-table fixes
def interpolate(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """Rectified-flow point x_σ = (1-σ)·x0 + σ·ε: σ=0 is data, σ=1 is pure noise (SANA convention)."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """SANA's "flow" prediction target v = ε - x0 (= d x_σ / dσ), so x0 = x_σ - σ·v."""
    return noise - x0


def autocast(device_type: str, precision: str = "bf16") -> contextlib.AbstractContextManager:
    """bf16 autocast around the forward pass; master weights and optimizer state stay fp32.

    fp16 is refused: SANA's linear attention sums overflow its range (seed 000: BF16, not FP16).
    """
    if precision not in PRECISIONS:
        raise TrainError(
            f"precision {precision!r} is not supported; use one of {PRECISIONS} (SANA trains in bf16)"
        )
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)


def shift_sigmas(sigma: Tensor, shift: float = SHIFT) -> Tensor:
    """SANA/SD3 timestep shift σ' = s·σ / (1 + (s-1)·σ): with s = 3 more training at high noise."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def sample_logit_normal(n: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """σ = sigmoid(N(mean, std)) — logit-normal(0, 1) timesteps, not Beta(1.6, 1.605)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def sample_sigmas(n: int, generator: torch.Generator, shift: float = SHIFT) -> Tensor:
    """Training noise levels: logit-normal, then shifted."""
    return shift_sigmas(sample_logit_normal(n, generator), shift)


@torch.no_grad()
def encode_latents(vae: nn.Module, images: Tensor) -> Tensor:
    """Deterministic DC-AE latents of images in [0, 1]: `.latent` × scaling_factor, never sampled."""
    return vae.encode(images * 2 - 1).latent * vae.config.scaling_factor


def sigma_weights(sigma: Tensor) -> Tensor:
    """SD3 "cosmap" loss weight per sample (see the module docstring for why)."""
    return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))


def flow_matching_loss(pred: Tensor, target: Tensor, sigma: Tensor) -> Tensor:
    """σ-weighted MSE: per-sample mean squared velocity error × `sigma_weights(σ)`, averaged."""
    per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (sigma_weights(sigma.float()) * per_sample).mean()


# ----------------------------------------------------------------------------- text side
def build_tokenizer(corpus: list[str]):
    """A real word-level tokenizer (tokenizers library) over the seam-lab vocabulary, as a transformers
    PreTrainedTokenizerFast with Gemma's special tokens (<pad>=0, <eos>=1, <bos>=2, <unk>=3)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=300,
    )


def build_text_encoder(tokenizer, hidden: int = 64, layers: int = 2, seed: int = 0):
    """A tiny Gemma-2 encoder (random init, kept frozen: the transformer learns to read it)."""
    from transformers import Gemma2Config, Gemma2Model

    cfg = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden // 2,
        max_position_embeddings=512,
        sliding_window=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.3,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Gemma2Model(cfg)
    return model.eval().requires_grad_(False)


@torch.no_grad()
def encode_prompts(
    tokenizer, text_encoder, prompts: list[str], max_length: int = 32
) -> tuple[Tensor, Tensor]:
    """Prompt embeddings [B, L, D] and attention mask [B, L] the way SanaPipeline makes them."""
    tok = tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    out = text_encoder(tok.input_ids, attention_mask=tok.attention_mask)[0]
    return out, tok.attention_mask


# ----------------------------------------------------------------------------- model builders
def build_autoencoder(latent_channels: int = 16, channels: tuple[int, ...] = (16, 32, 64, 64)):
    """Small DC-AE (ResBlocks only; compression 2^(len(channels)-1) = 8x)."""
    from diffusers import AutoencoderDC

    n = len(channels)
    return AutoencoderDC(
        latent_channels=latent_channels,
        encoder_block_types="ResBlock",
        decoder_block_types="ResBlock",
        encoder_block_out_channels=channels,
        decoder_block_out_channels=channels,
        encoder_layers_per_block=(1,) * n,
        decoder_layers_per_block=(1,) * n,
        encoder_qkv_multiscales=((),) * n,
        decoder_qkv_multiscales=((),) * n,
    )


def build_transformer(
    latent_channels: int = 16, caption_channels: int = 64, hidden: int = 128, heads: int = 4, layers: int = 4
):
    """Small SanaTransformer2DModel: patch 1 on the latent, no positional embedding (like SANA 1K)."""
    from diffusers import SanaTransformer2DModel

    return SanaTransformer2DModel(
        in_channels=latent_channels,
        out_channels=latent_channels,
        num_attention_heads=heads,
        attention_head_dim=hidden // heads,
        num_layers=layers,
        num_cross_attention_heads=heads,
        cross_attention_head_dim=hidden // heads,
        cross_attention_dim=hidden,
        caption_channels=caption_channels,
        mlp_ratio=2.5,
        sample_size=8,
        patch_size=1,
    )


# ----------------------------------------------------------------------------- checkpoints
@dataclass
class Checkpoint:
    """A run's resumable state: weights in safetensors, optimizer state via weights_only torch.save."""

    root: Path

    def exists(self) -> bool:
        return (self.root / "state.json").is_file()

    def save(self, step: int, model: nn.Module, ema: AveragedModel | None, opt, history: dict) -> None:
        tmp = self.root.with_name(self.root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
        if ema is not None:
            ema_sd = {k: v.contiguous() for k, v in ema.module.state_dict().items()}
            save_file(ema_sd, tmp / "ema.safetensors")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        n_avg = int(ema.n_averaged) if ema is not None else 0
        (tmp / "state.json").write_text(json.dumps({"step": step, "n_averaged": n_avg, "history": history}))
        shutil.rmtree(self.root, ignore_errors=True)
        tmp.rename(self.root)  # atomic: a crash never leaves a half-written checkpoint

    def load(self, model: nn.Module, ema: AveragedModel | None, opt) -> tuple[int, dict]:
        model.load_state_dict(load_file(self.root / "model.safetensors"))
        state = json.loads((self.root / "state.json").read_text())
        if ema is not None:
            ema.module.load_state_dict(load_file(self.root / "ema.safetensors"))
            ema.n_averaged.fill_(state["n_averaged"])
        opt.load_state_dict(torch.load(self.root / "optimizer.pt", weights_only=True))
        return int(state["step"]), state["history"]


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """EMA of the weights (torch's AveragedModel); the EMA copy is what gets exported.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates: a constant 0.999 would
    still hold ~13 % of the random init after 2000 steps, and our CPU runs are that short.
    """

    def avg_fn(averaged: Tensor, current: Tensor, n: Tensor) -> Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        return torch.lerp(current, averaged, d)

    return AveragedModel(model, avg_fn=avg_fn, use_buffers=True)


def step_generator(seed: int, step: int) -> torch.Generator:
    """Every step draws its data, noise and σ from its own generator: resuming replays exactly."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))


# ----------------------------------------------------------------------------- data
def scene_batch(g: torch.Generator, batch: int, height: int, width: int, crop_prob: float = 0.0):
    """Render a batch of scenes; with probability crop_prob the batch is tile-like crops of 2x scenes."""
    seed = int(torch.randint(2**31 - 1, (1,), generator=g))
    scenes = seamlab.sample_scenes(batch, seed=seed)
    if float(torch.rand(1, generator=g)) < crop_prob and height == width:
        big = seamlab.render(scenes, 2 * height, 2 * width)
        return seamlab.random_crops(big, height, g), scenes.prompts
    return seamlab.render(scenes, height, width), scenes.prompts


# ----------------------------------------------------------------------------- the training loop
@dataclass
class TrainConfig:
    """Settings shared by the transformer and autoencoder loops."""

    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100
    ema_decay: float = 0.999
    seed: int = 0
    precision: str = "bf16"
    checkpoint_every: int = 200
    log_every: int = 10
    threads: int = 1
    max_minutes: float = 0.0  # > 0: stop (with a checkpoint) when this wall time is spent


@dataclass
class FlowConfig(TrainConfig):
    """Transformer training: tokens per step are constant over the size mix (batch × cells)."""

    tokens_per_step: int = 1024
    sizes: tuple[tuple[int, int], ...] = ((8, 8), (8, 8), (8, 16), (16, 8), (16, 16))  # latent cells
    crop_prob: float = 0.3
    cfg_dropout: float = 0.1
    shift: float = SHIFT
    max_text_length: int = 32


@dataclass
class AEConfig(TrainConfig):
    """Autoencoder training on random crops (fully convolutional: crop size does not limit use size)."""

    batch: int = 16
    crop: int = 32
    grad_weight: float = 0.5
    ema_decay: float = 0.99


@dataclass
class RunResult:
    """Where a run stopped (steps done), its logged loss history and this invocation's wall seconds."""

    step: int
    history: dict = field(default_factory=dict)
    seconds: float = 0.0


def _lr_lambda(warmup: int) -> Callable[[int], float]:
    return lambda s: min(1.0, (s + 1) / max(warmup, 1))


def run_loop(
    model: nn.Module,
    loss_fn: Callable[[int, torch.Generator], Tensor],
    cfg: TrainConfig,
    ckpt: Checkpoint | None,
    desc: str,
) -> tuple[AveragedModel, RunResult]:
    """Generic seeded, resumable loop: AdamW + warmup, EMA, tqdm, checkpoints, loss history."""
    torch.set_num_threads(cfg.threads)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainError("the model has no trainable parameters")
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = make_ema(model, cfg.ema_decay)
    start, history = 0, {"step": [], "loss": []}
    if ckpt is not None and ckpt.exists():
        start, history = ckpt.load(model, ema, opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.warmup), last_epoch=-1)
    for group in opt.param_groups:
        group["lr"] = group["initial_lr"] * _lr_lambda(cfg.warmup)(start)
    sched.last_epoch = start
    t0 = time.monotonic()
    running: list[float] = []
    model.train()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=desc, mininterval=2.0)
    step = start
    for step in bar:
        loss = loss_fn(step, step_generator(cfg.seed, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update_parameters(model)
        running.append(float(loss.detach()))
        if (step + 1) % cfg.log_every == 0:
            history["step"].append(step + 1)
            history["loss"].append(sum(running) / len(running))
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
            running = []
        out_of_time = cfg.max_minutes > 0 and (time.monotonic() - t0) > 60 * cfg.max_minutes
        if ckpt is not None and (
            (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps or out_of_time
        ):
            ckpt.save(step + 1, model, ema, opt, history)
        if out_of_time:
            step += 1
            break
    else:
        step = cfg.steps
    model.eval()
    return ema, RunResult(step=step, history=history, seconds=time.monotonic() - t0)


def flow_loss_fn(transformer, vae, tokenizer, text_encoder, cfg: FlowConfig):
    """One flow-matching step's loss: scenes -> deterministic latents -> x_σ -> σ-weighted MSE on ε - x0."""
    device_type = next(transformer.parameters()).device.type

    def loss_fn(step: int, g: torch.Generator) -> Tensor:
        h, w = cfg.sizes[int(torch.randint(len(cfg.sizes), (1,), generator=g))]
        batch = max(1, cfg.tokens_per_step // (h * w))
        c = vae_compression(vae)
        images, prompts = scene_batch(g, batch, h * c, w * c, cfg.crop_prob)
        drop = torch.rand(batch, generator=g) < cfg.cfg_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]
        x0 = encode_latents(vae, images)
        text, mask = encode_prompts(tokenizer, text_encoder, prompts, cfg.max_text_length)
        noise = torch.randn(x0.shape, generator=g)
        sigma = sample_sigmas(batch, g, cfg.shift)
        x_t = interpolate(x0, noise, sigma)
        with autocast(device_type, cfg.precision):
            pred = transformer(x_t, text, sigma * 1000, encoder_attention_mask=mask).sample
        return flow_matching_loss(pred, velocity_target(x0, noise), sigma)

    return loss_fn


def vae_compression(vae) -> int:
    """Pixels per latent cell of a DC-AE (read from its config, never assumed)."""
    return 2 ** (len(vae.config.encoder_block_out_channels) - 1)


def ae_loss_fn(vae, cfg: AEConfig):
    """L1 + L1 on Sobel gradients (a cheap perceptual-ish term that keeps edges and textures sharp)."""
    import kornia

    device_type = next(vae.parameters()).device.type

    def loss_fn(step: int, g: torch.Generator) -> Tensor:
        src = int(cfg.crop * (1 + int(torch.randint(3, (1,), generator=g))))
        images, _ = scene_batch(g, cfg.batch, src, src)
        images = seamlab.random_crops(images, cfg.crop, g) * 2 - 1
        with autocast(device_type, cfg.precision):
            recon = vae.decode(vae.encode(images).latent).sample
        recon = recon.float()
        grad = kornia.filters.spatial_gradient(recon) - kornia.filters.spatial_gradient(images)
        return F.l1_loss(recon, images) + cfg.grad_weight * grad.abs().mean()

    return loss_fn


@torch.no_grad()
def reconstruction_psnr(vae, images: Tensor) -> float:
    """Mean PSNR (dB, range 1.0) of decode(encode(images)) on images in [0, 1]."""
    recon = ((vae.decode(vae.encode(images * 2 - 1).latent).sample + 1) / 2).clamp(0, 1)
    mse = (recon - images).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return float((-10 * torch.log10(mse)).mean())


@torch.no_grad()
def latent_scaling_factor(vae, seed: int = 123, n: int = 64, size: int = 64) -> float:
    """1 / std of the raw latents, so scaled latents have unit variance like noise."""
    images = seamlab.render(seamlab.sample_scenes(n, seed=seed), size, size)
    return float(1.0 / vae.encode(images * 2 - 1).latent.std())


# ----------------------------------------------------------------------------- sampling (for grids/tests)
@torch.no_grad()
def sample(
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
    """Euler flow-matching sampler with CFG (diffusers' FlowMatchEulerDiscreteScheduler, shift 3)."""
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


# ----------------------------------------------------------------------------- plots
def plot_loss_curves(curves: dict[str, tuple[list[int], list[float]]], path: Path, size=(480, 260)) -> None:
    """Loss-vs-step PNG drawn with PIL (log-y, one coloured line per curve, min/max labelled)."""
    from PIL import Image, ImageDraw

    w, h = size
    pad_l, pad_r, pad_t, pad_b = 46, 10, 10, 24
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    vals = [v for _, ys in curves.values() for v in ys if v > 0]
    xs_all = [x for xs, _ in curves.values() for x in xs]
    if not vals:
        img.save(path)
        return
    lo, hi = math.log10(min(vals)), math.log10(max(vals))
    hi = hi if hi > lo else lo + 1
    x_max = max(xs_all) or 1
    d.rectangle([pad_l, pad_t, w - pad_r, h - pad_b], outline="black")
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for i, (name, (xs, ys)) in enumerate(curves.items()):
        pts = [
            (
                pad_l + (w - pad_l - pad_r) * x / x_max,
                pad_t + (h - pad_t - pad_b) * (hi - math.log10(y)) / (hi - lo),
            )
            for x, y in zip(xs, ys, strict=True)
            if y > 0
        ]
        if len(pts) > 1:
            d.line(pts, fill=colors[i % 4], width=2)
        d.text((pad_l + 6, pad_t + 4 + 12 * i), name, fill=colors[i % 4])
    d.text((2, pad_t), f"{10**hi:.3g}", fill="black")
    d.text((2, h - pad_b - 10), f"{10**lo:.3g}", fill="black")
    d.text((pad_l, h - pad_b + 6), "0", fill="black")
    d.text((w - pad_r - 40, h - pad_b + 6), f"{x_max} steps", fill="black")
    img.save(path)


def to_grid(images: Tensor, cols: int) -> Image.Image:  # noqa: F821
    """[N,3,H,W] in [0,1] -> PIL grid image."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = math.ceil(n / cols)
    canvas = torch.ones(rows * cols, 3, h, w)
    canvas[:n] = images.clamp(0, 1)
    grid = canvas.view(rows, cols, 3, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, cols * w, 3)
    return Image.fromarray((grid * 255).round().byte().numpy())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m temporal_tiling.train", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train the embedded seam-lab model from scratch and export it")
    b.add_argument("--out", default="temporal_tiling/embedded/seamlab-sana")
    b.add_argument("--work", default="out/seamlab-train", help="checkpoints; rerun the command to resume")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--latent-channels", type=int, default=16)
    b.add_argument("--ae-steps", type=int, default=1200)
    b.add_argument("--steps", type=int, default=3000)
    b.add_argument("--lr", type=float, default=1e-3)
    b.add_argument("--hidden", type=int, default=128)
    b.add_argument("--heads", type=int, default=4)
    b.add_argument("--layers", type=int, default=4)
    b.add_argument("--tokens-per-step", type=int, default=1024)
    b.add_argument("--lora-steps", type=int, default=200, help="temporal LoRA steps (0 = skip)")
    b.add_argument("--max-minutes", type=float, default=0.0, help="cap on the transformer stage (minutes)")
    from .lora import add_lora_subcommand

    add_lora_subcommand(sub)
    args = p.parse_args(argv)
    if args.cmd == "build":
        from .embedded.build import build

        build(args)
    else:
        args.func(args)


if __name__ == "__main__":
    main()
