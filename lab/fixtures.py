"""Tiny SANA models with the real key layouts, built on the fly: the one place tests and benchmarks build
models from.

No SANA weights can be downloaded where this pack is tested, so the loaders are exercised with state dicts
that have exactly the keys and shape relations of the published checkpoints: at the published sizes on the
`meta` device (no memory, for key/shape checks), at toy sizes with random values (to run), or at the
published sizes with random values (`bench/bench_scale.py`, `bench/bench_gpu.py`). The engine's own tests
and benchmarks run on `tiny_transformer` (and `tiny_video_transformer` for SANA-Video's RoPE path).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel, SanaVideoTransformer3DModel
from diffusers.models.embeddings import get_2d_sincos_pos_embed
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import Gemma2Config, Gemma2Model, PreTrainedTokenizerFast

from temporal_tiling.sana.text import COMPLEX_HUMAN_INSTRUCTION
from temporal_tiling.sana.vae import SANA_DCAE_F32C32_CONFIG

TIMESTEP_FREQUENCIES = 256  # diffusers' Timesteps(num_channels=256) feeding t_embedder.mlp.0
# original_state_dict keywords of published checkpoints (SANA's configs: hidden, depth, latent grid, PE).
PUBLISHED_TRANSFORMERS: dict[str, dict] = {
    "Sana_600M_1024px": {"hidden": 1152, "depth": 28, "grid": 32},
    "Sana_1600M_1024px": {"hidden": 2240, "depth": 20, "grid": 32},
    "Sana_1600M_4Kpx": {"hidden": 2240, "depth": 20, "grid": 128, "pe_scale": 2.0},
}
# google/gemma-2-2b-it, SANA's text encoder (2.6 B parameters).
GEMMA2_2B_CONFIG = {
    "vocab_size": 256000,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "max_position_embeddings": 8192,
    "sliding_window": 4096,
    "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "bos_token_id": 2,
}


def original_state_dict(
    hidden: int,
    depth: int,
    *,
    grid: int = 32,
    caption_channels: int = 2304,
    in_channels: int = 32,
    patch_size: int = 1,
    mlp_ratio: float = 2.5,
    qk_norm: bool = False,
    pe_scale: float | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """An original-layout SANA state dict (`blocks.N.attn.qkv.weight` ...), as SANA's training code saves it.

    On `meta` the tensors take no memory; on a real device they are small random values in `dtype` (drawn
    on that device, so a GPU fills a published size in seconds). `pos_embed` is the zero buffer SANA keeps
    when it trains without PE, or its sin-cos table at `pe_scale` (float32, as SANA saves it).
    """
    mlp_hidden = int(mlp_ratio * hidden)
    t = _random_tensors(device, dtype, seed)

    sd: dict[str, torch.Tensor] = {
        "x_embedder.proj.weight": t(hidden, in_channels, patch_size, patch_size),
        "x_embedder.proj.bias": t(hidden),
        "t_embedder.mlp.0.weight": t(hidden, TIMESTEP_FREQUENCIES),
        "t_embedder.mlp.0.bias": t(hidden),
        "t_embedder.mlp.2.weight": t(hidden, hidden),
        "t_embedder.mlp.2.bias": t(hidden),
        "t_block.1.weight": t(6 * hidden, hidden),
        "t_block.1.bias": t(6 * hidden),
        "y_embedder.y_embedding": t(300, caption_channels),
        "y_embedder.y_proj.fc1.weight": t(hidden, caption_channels),
        "y_embedder.y_proj.fc1.bias": t(hidden),
        "y_embedder.y_proj.fc2.weight": t(hidden, hidden),
        "y_embedder.y_proj.fc2.bias": t(hidden),
        "attention_y_norm.weight": t(hidden),
        "final_layer.linear.weight": t(patch_size * patch_size * in_channels, hidden),
        "final_layer.linear.bias": t(patch_size * patch_size * in_channels),
        "final_layer.scale_shift_table": t(2, hidden),
    }
    if str(device) == "meta":
        sd["pos_embed"] = torch.empty(1, grid * grid, hidden, device="meta")
    elif pe_scale is None:
        sd["pos_embed"] = torch.zeros(1, grid * grid, hidden)
    else:
        table = get_2d_sincos_pos_embed(
            hidden, grid, base_size=grid, interpolation_scale=pe_scale, output_type="pt"
        )
        sd["pos_embed"] = table.float().unsqueeze(0)
    for i in range(depth):
        b = f"blocks.{i}."
        sd |= {
            b + "scale_shift_table": t(6, hidden),
            b + "attn.qkv.weight": t(3 * hidden, hidden),
            b + "attn.proj.weight": t(hidden, hidden),
            b + "attn.proj.bias": t(hidden),
            b + "cross_attn.q_linear.weight": t(hidden, hidden),
            b + "cross_attn.q_linear.bias": t(hidden),
            b + "cross_attn.kv_linear.weight": t(2 * hidden, hidden),
            b + "cross_attn.kv_linear.bias": t(2 * hidden),
            b + "cross_attn.proj.weight": t(hidden, hidden),
            b + "cross_attn.proj.bias": t(hidden),
            b + "mlp.inverted_conv.conv.weight": t(2 * mlp_hidden, hidden, 1, 1),
            b + "mlp.inverted_conv.conv.bias": t(2 * mlp_hidden),
            b + "mlp.depth_conv.conv.weight": t(2 * mlp_hidden, 1, 3, 3),
            b + "mlp.depth_conv.conv.bias": t(2 * mlp_hidden),
            b + "mlp.point_conv.conv.weight": t(hidden, mlp_hidden, 1, 1),
        }
        if qk_norm:
            for attn in ("attn", "cross_attn"):
                sd[b + f"{attn}.q_norm.weight"] = t(hidden)
                sd[b + f"{attn}.k_norm.weight"] = t(hidden)
    return sd


def _random_tensors(device: str | torch.device, dtype: torch.dtype, seed: int):
    """shape -> tensor of N(0, 0.02²) values in `dtype` on `device` (empty on `meta`), one seeded stream."""
    if str(device) == "meta":
        return lambda *shape: torch.empty(shape, device="meta", dtype=dtype)
    generator = torch.Generator(device=device).manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=device, dtype=dtype).mul_(0.02)

    return draw


def random_state_dict(
    module: torch.nn.Module, dtype: torch.dtype = torch.float32, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random N(0, 0.02²) values in the keys and shapes of `module`'s state dict (`module` may be on `meta`).

    Building the module on `meta` and drawing only its state dict skips the framework's weight init, which
    takes minutes at published sizes on a CPU.
    """
    draw = _random_tensors("cpu", dtype, seed)
    return {key: draw(*value.shape) for key, value in module.state_dict().items()}


def published_dcae_state_dict(dtype: torch.dtype = torch.float32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in the diffusers layout of SANA's DC-AE f32c32 (312 M parameters)."""
    with torch.device("meta"):
        vae = AutoencoderDC(**SANA_DCAE_F32C32_CONFIG)
    return random_state_dict(vae, dtype, seed)


def write_gemma2_folder(
    folder: str | Path, num_hidden_layers: int = 26, dtype: torch.dtype = torch.bfloat16, seed: int = 0
) -> Path:
    """A Gemma-2-2B-shaped text encoder folder (config, random safetensors, tokenizer) for
    `load_text_encoder`; `num_hidden_layers` < 26 keeps Gemma-2-2B's width with fewer layers.

    The tokenizer is `tiny_tokenizer` (word level, Gemma's special tokens): the real SentencePiece
    vocabulary cannot be downloaded, so the template tokenises into its words, not Gemma's pieces.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = Gemma2Config(**(GEMMA2_2B_CONFIG | {"num_hidden_layers": num_hidden_layers}), dtype=dtype)
    with torch.device("meta"):
        model = Gemma2Model(config)
    save_file(random_state_dict(model, dtype, seed), str(folder / "model.safetensors"))
    config.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


# The unit tests' SanaTransformer2DModel: 4 latent channels, 16-wide captions, 2 linear heads x 8, 2 layers,
# an 8 x 8 latent (no position embedding). Milliseconds per call on a CPU.
TINY_TRANSFORMER = {
    "in_channels": 4,
    "out_channels": 4,
    "num_attention_heads": 2,
    "attention_head_dim": 8,
    "num_layers": 2,
    "num_cross_attention_heads": 2,
    "cross_attention_head_dim": 8,
    "cross_attention_dim": 16,
    "caption_channels": 16,
    "sample_size": 8,
    "patch_size": 1,
}
# Its SANA-Video counterpart: rotary position embedding, which splits each head over frame, row and column
# (hence 12-wide heads).
TINY_VIDEO_TRANSFORMER = {
    "in_channels": 4,
    "out_channels": 4,
    "num_attention_heads": 2,
    "attention_head_dim": 12,
    "num_layers": 2,
    "num_cross_attention_heads": 2,
    "cross_attention_head_dim": 12,
    "cross_attention_dim": 24,
    "caption_channels": 16,
    "sample_size": 8,
    "patch_size": (1, 1, 1),
}


def tiny_transformer(seed: int = 0, **config) -> SanaTransformer2DModel:
    """A random SanaTransformer2DModel in eval mode: `TINY_TRANSFORMER` updated with `config`.

    The global torch seed is set to `seed` right before the build, so every caller with the same arguments
    gets the same weights (saved reference outputs depend on it).
    """
    torch.manual_seed(seed)
    return SanaTransformer2DModel(**(TINY_TRANSFORMER | config)).eval()


def tiny_video_transformer(seed: int = 0, **config) -> SanaVideoTransformer3DModel:
    """A random SanaVideoTransformer3DModel in eval mode: `TINY_VIDEO_TRANSFORMER` updated with `config`,
    seeded like `tiny_transformer`."""
    torch.manual_seed(seed)
    return SanaVideoTransformer3DModel(**(TINY_VIDEO_TRANSFORMER | config)).eval()


def pipeline_transformer_config(
    in_channels: int = 8, caption_channels: int = 32, sample_size: int = 4
) -> dict:
    """The transformer config of `write_pipeline_folder` (fits `tiny_vae` and `tiny_gemma2`): 2 linear heads
    x 32, 2 layers (runs in milliseconds on CPU)."""
    return {
        "in_channels": in_channels,
        "out_channels": in_channels,
        "num_attention_heads": 2,
        "attention_head_dim": 32,
        "num_layers": 2,
        "num_cross_attention_heads": 2,
        "cross_attention_head_dim": 32,
        "cross_attention_dim": 64,
        "caption_channels": caption_channels,
        "mlp_ratio": 2.5,
        "sample_size": sample_size,
        "patch_size": 1,
    }


def tiny_vae(latent_channels: int = 8, seed: int = 0) -> AutoencoderDC:
    """A toy AutoencoderDC (4x compression) with DC-AE's block types."""
    torch.manual_seed(seed)
    return AutoencoderDC(
        latent_channels=latent_channels,
        attention_head_dim=8,
        encoder_block_types=["ResBlock", "EfficientViTBlock", "EfficientViTBlock"],
        decoder_block_types=["ResBlock", "EfficientViTBlock", "EfficientViTBlock"],
        encoder_block_out_channels=[8, 16, 16],
        decoder_block_out_channels=[8, 16, 16],
        encoder_layers_per_block=[1, 1, 1],
        decoder_layers_per_block=[1, 1, 1],
        encoder_qkv_multiscales=[[], [3], [3]],
        decoder_qkv_multiscales=[[], [3], [3]],
        upsample_block_type="interpolate",
        downsample_block_type="conv",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.5,
    ).eval()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with Gemma's special tokens (<pad>=0, <eos>=1, <bos>=2) that adds <bos>."""
    words = sorted({w for line in COMPLEX_HUMAN_INSTRUCTION for w in line.lower().split()})
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3} | {w: i + 4 for i, w in enumerate(words)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_gemma2(vocab_size: int, hidden_size: int = 32, seed: int = 0) -> Gemma2Model:
    """A one-layer Gemma-2 decoder (the class SANA's text encoder is)."""
    torch.manual_seed(seed)
    config = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden_size // 2,
        max_position_embeddings=1024,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    return Gemma2Model(config).eval()


def write_pipeline_folder(
    folder: str | Path, seed: int = 0, flow_shift: float = 3.0, **transformer_config: object
) -> Path:
    """A complete toy diffusers SANA folder (model_index.json, transformer/, vae/, text_encoder/,
    tokenizer/, scheduler/) that loads exactly like a published one; ``transformer_config`` overrides
    the transformer's (e.g. ``interpolation_scale`` for SANA 2K/4K's sin-cos PE)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = tiny_tokenizer()
    text_model = tiny_gemma2(len(tokenizer), seed=seed)
    vae = tiny_vae(seed=seed)
    config = pipeline_transformer_config(vae.config.latent_channels, text_model.config.hidden_size)
    transformer = tiny_transformer(seed, **{**config, **transformer_config})
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    text_model.save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": flow_shift})
    )
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "SanaPipeline",
                "transformer": ["diffusers", "SanaTransformer2DModel"],
                "vae": ["diffusers", "AutoencoderDC"],
                "text_encoder": ["transformers", "Gemma2Model"],
                "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
                "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
            }
        )
    )
    return folder


def param_count(module: torch.nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())
