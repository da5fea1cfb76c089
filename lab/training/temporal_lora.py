"""Temporal LoRA training: teach a SANA transformer to use the BCLA cache of earlier tiles.

Recipe: rank-32 LoRA (peft, through diffusers' adapter API) on `to_q/to_k/to_v/to_out.0` of the linear
SELF-attention (`attn1`: the only place the BCLA statistics enter; cross-attention to the prompt is
left alone), base model frozen, `init_lora_weights=True` → B = 0, so at step 0 the model is exactly the
base model (AnimateDiff's zero-init). Training data are tile sequences: a seam-lab canvas is noised
once (one σ and one noise per canvas, like the causal sampler's synchronous cache), then its tiles are
denoised in plan order with the cache active, so the loss on tile t is computed with the statistics
of tiles < t of the same canvas (detached: the cache is context, as at inference).

Saved as a standard diffusers LoRA file that `temporal_tiling.lora.load_temporal_lora` reads back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from temporal_tiling.bcla import BCLACache, BCLAConfig, install_bcla
from temporal_tiling.lora import ADAPTER, LORA_FILE, LoraError
from temporal_tiling.plan import make_plan
from temporal_tiling.sana.vae import compression

from .. import seamlab
from .data import scene_batch
from .flow_matching import noised_batch
from .loop import Checkpoint, TrainConfig, run_loop
from .losses import (
    SHIFT,
    autocast,
    encode_latents,
    flow_matching_loss,
    interpolate,
    velocity_target,
)
from .plots import plot_loss_curves
from .toy_models import encode_prompts

TARGET_MODULES = r".*attn1\.(to_q|to_k|to_v|to_out\.0)"


def temporal_lora_config(rank: int = 32, alpha: float | None = None):
    """peft LoraConfig of the recipe: zero-init B (init_lora_weights=True), self-attention projections."""
    from peft import LoraConfig

    if rank < 1:
        raise LoraError(f"LoRA rank must be >= 1, got {rank}")
    return LoraConfig(
        r=rank,
        lora_alpha=alpha or rank,
        init_lora_weights=True,
        target_modules=TARGET_MODULES,
        lora_dropout=0.0,
    )


def add_temporal_lora(transformer, rank: int = 32, alpha: float | None = None):
    """Freeze the base transformer and add the (zero-init) temporal adapter in place; returns it."""
    transformer.requires_grad_(False)
    transformer.add_adapter(temporal_lora_config(rank, alpha), adapter_name=ADAPTER)
    transformer.set_adapter(ADAPTER)
    trainable = [n for n, p in transformer.named_parameters() if p.requires_grad]
    if not trainable or not all("lora_" in n for n in trainable):
        raise LoraError("the temporal adapter found no attn1 to_q/to_k/to_v/to_out.0 layers to adapt")
    return transformer


def lora_state_dict(transformer) -> dict[str, Tensor]:
    """The adapter weights in peft's naming (no `transformer.` prefix)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(transformer, adapter_name=ADAPTER)


def save_temporal_lora(transformer, directory: Path) -> Path:
    """Write the adapter as a diffusers-format LoRA file with its LoraConfig in the metadata."""
    from diffusers import SanaPipeline

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = transformer.peft_config[ADAPTER].to_dict()
    cfg["target_modules"] = TARGET_MODULES  # keep the regex, not the resolved set
    SanaPipeline.save_lora_weights(
        directory,
        transformer_lora_layers=lora_state_dict(transformer),
        transformer_lora_adapter_metadata=cfg,
        safe_serialization=True,
    )
    return directory / LORA_FILE


@dataclass
class LoraTrainConfig(TrainConfig):
    """Tile-sequence training: canvases of `canvas` px cut into `tile` px tiles with `overlap` px."""

    lr: float = 1e-3
    warmup: int = 20
    ema_decay: float = 0.99
    batch: int = 4
    canvas: tuple[int, int] = (112, 112)  # height, width px: 2x2 tiles of 64 px overlapping by 16 px
    tile: int = 64
    overlap: int = 16
    order: str = "raster"
    rank: int = 32
    cfg_dropout: float = 0.1
    shift: float = SHIFT
    max_text_length: int = 32


def tile_sequence_losses(transformer, cache: BCLACache, x0: Tensor, noise: Tensor, sigma: Tensor, text, mask):
    """σ-weighted flow loss per tile [T], tiles denoised in plan order with the cache of earlier tiles.

    All tiles of a canvas share its σ, so one cache key serves the whole sequence (the synchronous
    source of the sampler: tile t reads what tiles < t recorded at the same noise level).
    """
    x_t = interpolate(x0, noise, sigma)
    target = velocity_target(x0, noise)
    device_type = x0.device.type
    losses = []
    cache.reset()
    for tile in cache.plan.tiles:
        rows, cols = tile.slices
        cache.begin_tile(tile)
        cache.set_call(0.0, [0])
        with autocast(device_type, "bf16"):
            pred = transformer(x_t[..., rows, cols], text, sigma * 1000, encoder_attention_mask=mask).sample
        losses.append(flow_matching_loss(pred, target[..., rows, cols], sigma))
        cache.end_tile()
    return torch.stack(losses)


def temporal_loss_fn(
    transformer, vae, tokenizer, text_encoder, cfg: LoraTrainConfig
) -> Callable[[int, torch.Generator], Tensor]:
    """run_loop loss: a batch of seam-lab canvases as tile sequences with the cumulative BCLA cache."""
    c = compression(vae)
    h, w = cfg.canvas
    plan = make_plan(
        width_px=w,
        height_px=h,
        tile_width_px=cfg.tile,
        tile_height_px=cfg.tile,
        overlap_px=cfg.overlap,
        compression=c,
        order=cfg.order,
        fit="shift",
    )
    cache = BCLACache(BCLAConfig(mode="cumulative", strength=1.0), plan)

    def loss_fn(step: int, g: torch.Generator) -> Tensor:
        images, prompts = scene_batch(g, cfg.batch, h, w)
        x0, noise, sigma, text, mask = noised_batch(g, images, prompts, vae, tokenizer, text_encoder, cfg)
        undo = install_bcla(transformer, cache)
        try:
            return tile_sequence_losses(transformer, cache, x0, noise, sigma, text, mask).mean()
        finally:
            undo()

    return loss_fn


@torch.no_grad()
def evaluate_tile_sequences(
    transformer, vae, tokenizer, text_encoder, mode: str, n: int = 16, seed: int = 777
) -> Tensor:
    """Held-out per-tile flow loss [T] (112 px canvases, 2x2 tiles of 64 px, σ in 0.3/0.6/0.9) with the
    BCLA cache in `mode` ("off" = independent tiles): how much the cache of earlier tiles helps."""
    scenes = seamlab.sample_scenes(n, seed=seed)
    x0 = encode_latents(vae, seamlab.render(scenes, 112, 112))
    text, mask = encode_prompts(tokenizer, text_encoder, scenes.prompts)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    cache = BCLACache(
        BCLAConfig(mode=mode),
        make_plan(
            width_px=112,
            height_px=112,
            tile_width_px=64,
            tile_height_px=64,
            overlap_px=16,
            compression=compression(vae),
            fit="shift",
        ),
    )
    undo = install_bcla(transformer, cache)
    try:
        losses = [
            tile_sequence_losses(transformer, cache, x0, noise, torch.full((n,), s), text, mask)
            for s in (0.3, 0.6, 0.9)
        ]
    finally:
        undo()
    return torch.stack(losses).mean(0)


def train_temporal_lora_modules(transformer, vae, tokenizer, text_encoder, cfg: LoraTrainConfig, out, work):
    """Add the adapter to `transformer` (in place), train it, save the EMA adapter + loss curve to `out`."""
    out = Path(out)
    add_temporal_lora(transformer, cfg.rank)
    t0 = time.monotonic()
    ema, res = run_loop(
        transformer,
        temporal_loss_fn(transformer, vae, tokenizer, text_encoder, cfg),
        cfg,
        Checkpoint(Path(work) / "lora_ckpt"),
        "temporal lora",
    )
    file = save_temporal_lora(ema.module, out)
    label = "temporal LoRA (tile sequences)"
    plot_loss_curves({label: (res.history["step"], res.history["loss"])}, out / "loss.png")
    log = {"steps": res.step, "seconds": round(time.monotonic() - t0, 1), "history": res.history}
    log["config"] = asdict(cfg)
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    print(f"temporal LoRA: {res.step} steps, wrote {file}", flush=True)
    return log


def train_temporal_lora(model_dir: Path, out: Path, cfg: LoraTrainConfig, work: Path) -> dict:
    """Train the temporal LoRA for a SanaPipeline folder (all parts loaded from it)."""
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import AutoModel, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "transformer").is_dir():
        raise LoraError(f"{model_dir} is not a SanaPipeline folder (no transformer/); pass the model folder")
    torch.set_num_threads(cfg.threads)
    transformer = SanaTransformer2DModel.from_pretrained(model_dir / "transformer")
    vae = AutoencoderDC.from_pretrained(model_dir / "vae").eval().requires_grad_(False)
    text_encoder = AutoModel.from_pretrained(model_dir / "text_encoder").eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "tokenizer")
    return train_temporal_lora_modules(transformer, vae, tokenizer, text_encoder, cfg, out, work)
