"""SANA transformer variants: detect them from weights, convert original checkpoints, build diffusers models.

Supported: SANA 600M / 1600M at 512, 1024, 2K and 4K px (and SANA-1.5 1.6B / 4.8B with q/k RMS norm), from
  * original checkpoints (`.pth` / `.safetensors`; keys `x_embedder.*`, `blocks.N.attn.qkv.*`, `t_block.*`),
    converted with diffusers' own `convert_sana_transformer_to_diffusers`;
  * diffusers state dicts (`transformer_blocks.N.attn1.to_q.*`) and diffusers folders (`config.json`).
Nothing in the weights says how many cross-attention heads a model has, so the published sizes come from a
table; the native resolution and the sin-cos position embedding come from the original `pos_embed` buffer
(its token count, and whether it holds a sin-cos table and at which interpolation scale).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import SanaTransformer2DModel
from diffusers.loaders.single_file_utils import convert_sana_transformer_to_diffusers
from diffusers.models.embeddings import get_2d_sincos_pos_embed

from .checkpoint import CheckpointError, folder_load_error, load_checkpoint, read_json

ORIGINAL_MARKER = "blocks.0.cross_attn.q_linear.weight"
DIFFUSERS_MARKER = "transformer_blocks.0.attn2.to_q.weight"
# Wrappers that trainers and other UIs put in front of the transformer keys.
KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "module.", "net.", "model.")
# SANA's DC-AE turns 32 px into one latent cell; resolutions are reported in px through it.
DCAE_COMPRESSION = 32
LINEAR_HEAD_DIM = 32
# (hidden size, depth) -> (published name, cross-attention heads), from SANA's model configs.
PUBLISHED_SIZES: dict[tuple[int, int], tuple[str, int]] = {
    (1152, 28): ("600M", 16),
    (2240, 20): ("1600M", 20),
    (2240, 60): ("4800M", 20),
}
# Native resolution -> sin-cos PE interpolation scale, as in diffusers' conversion script (None = no PE).
PE_SCALE_BY_RESOLUTION: dict[int, float | None] = {512: None, 1024: None, 2048: 1.0, 4096: 2.0}
PE_SCALE_CANDIDATES = (0.5, 1.0, 2.0, 4.0)
# SANA-1.5's q/k RMS norms, which diffusers' single-file converter does not cover.
QK_NORM_KEY = re.compile(r"blocks\.(\d+)\.(attn|cross_attn)\.([qk])_norm\.")
# Original keys that diffusers drops: the learned null caption, the PE buffer, SANA-1.5's log-variance head.
SPRINT_MARKERS = ("cfg_embedder.mlp.0.weight", "time_embed.guidance_embedder.linear_1.weight")
DROPPED_ORIGINAL_KEYS = ("pos_embed", "y_embedder.y_embedding", "logvar_linear.weight", "logvar_linear.bias")


@dataclass(frozen=True)
class SanaVariant:
    """What a checkpoint is: enough to build the diffusers model and pick the sampling shift."""

    size: str  # "600M" | "1600M" | "4800M" | "custom"
    resolution: int  # native px (sample_size * patch_size * 32)
    config: dict[str, Any] = field(hash=False)  # SanaTransformer2DModel kwargs
    flow_shift: float
    layout: str  # "original" | "diffusers"

    @property
    def interpolation_scale(self) -> float | None:
        return self.config.get("interpolation_scale")

    @property
    def qk_norm(self) -> str | None:
        return self.config.get("qk_norm")

    @property
    def uses_pe(self) -> bool:
        return self.interpolation_scale is not None

    @property
    def name(self) -> str:
        family = "SANA-1.5" if self.qk_norm else "SANA"
        res = f"{self.resolution // 1024}K" if self.resolution >= 2048 else f"{self.resolution}px"
        pe = f", sin-cos PE x{self.interpolation_scale:g}" if self.uses_pe else ""
        return f"{family} {self.size} {res}{pe}"


def strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix ('model.diffusion_model.' ...) shared by the transformer keys."""
    for prefix in KEY_PREFIXES:
        if any(k.startswith(prefix) and _is_sana_key(k[len(prefix) :]) for k in state_dict):
            return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


def _is_sana_key(key: str) -> bool:
    return key in (ORIGINAL_MARKER, DIFFUSERS_MARKER)


def detect_layout(state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> str:
    """'original' or 'diffusers'; anything else is refused with a hint of what the file looks like."""
    if ORIGINAL_MARKER in state_dict and "x_embedder.proj.weight" in state_dict:
        return "original"
    if DIFFUSERS_MARKER in state_dict and "caption_projection.linear_1.weight" in state_dict:
        return "diffusers"
    sample = ", ".join(sorted(state_dict)[:4])
    raise CheckpointError(
        f"'{source}' is not a SANA transformer checkpoint (no '{ORIGINAL_MARKER}' or '{DIFFUSERS_MARKER}'; "
        f"first keys: {sample}). Pick a SANA checkpoint (Sana_600M_*/Sana_1600M_* .pth/.safetensors or a "
        "diffusers SANA folder)."
    )


def _depth(state_dict: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))}
    return max(indices) + 1


def _resolution_hint(name: str) -> int | None:
    """Native resolution from a file name such as 'Sana_1600M_4Kpx_BF16' or 'sana_512px'."""
    if m := re.search(r"(?<!\d)([124])k(?:px)?(?![a-z])", name.lower()):
        return int(m.group(1)) * 1024
    if m := re.search(r"(512|1024|2048|4096)(?:px)?", name.lower()):
        return int(m.group(1))
    return None


def _pe_scale(pos_embed: torch.Tensor | None, grid: int, resolution: int) -> float | None:
    """Interpolation scale of the sin-cos table stored in the original `pos_embed` buffer.

    An all-zero buffer means the model was trained without PE (SANA 512/1024); a sin-cos table is matched
    against diffusers' `get_2d_sincos_pos_embed`. Without readable values (missing or meta) the published
    resolution table decides.
    """
    if pos_embed is None or pos_embed.is_meta:
        return PE_SCALE_BY_RESOLUTION.get(resolution)
    table = pos_embed.float().reshape(grid * grid, -1)
    if not table.abs().sum():
        return None
    for scale in PE_SCALE_CANDIDATES:
        reference = get_2d_sincos_pos_embed(
            table.shape[1], grid, base_size=grid, interpolation_scale=scale, output_type="pt"
        )
        if torch.allclose(table, reference.float(), atol=2e-2):
            return scale
    raise CheckpointError(
        "The checkpoint's pos_embed is neither empty nor a sin-cos table diffusers can rebuild "
        f"(tried interpolation scales {PE_SCALE_CANDIDATES}); this SANA variant is not supported."
    )


def _heads(hidden: int, depth: int) -> tuple[str, int]:
    """Published size name and cross-attention heads; other sizes use 64-channel heads (DiT default)."""
    if (hidden, depth) in PUBLISHED_SIZES:
        return PUBLISHED_SIZES[(hidden, depth)]
    return "custom", hidden // 64 if hidden % 64 == 0 else hidden // LINEAR_HEAD_DIM


def _config(
    *,
    hidden: int,
    depth: int,
    in_channels: int,
    out_channels: int,
    caption_channels: int,
    mlp_hidden: int,
    patch_size: int,
    sample_size: int,
    interpolation_scale: float | None,
    qk_norm: bool,
    attention_bias: bool,
) -> tuple[str, dict[str, Any]]:
    size, cross_heads = _heads(hidden, depth)
    return size, {
        "in_channels": in_channels,
        "out_channels": out_channels,
        "num_attention_heads": hidden // LINEAR_HEAD_DIM,
        "attention_head_dim": LINEAR_HEAD_DIM,
        "num_layers": depth,
        "num_cross_attention_heads": cross_heads,
        "cross_attention_head_dim": hidden // cross_heads,
        "cross_attention_dim": hidden,
        "caption_channels": caption_channels,
        "mlp_ratio": mlp_hidden / (2 * hidden),
        "attention_bias": attention_bias,
        "sample_size": sample_size,
        "patch_size": patch_size,
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "interpolation_scale": interpolation_scale,
        "qk_norm": "rms_norm_across_heads" if qk_norm else None,
    }


def default_flow_shift(resolution: int) -> float:
    """SANA's sampling shift: 6.0 for its 4K model, 3.0 otherwise (diffusers' conversion script)."""
    return 6.0 if resolution >= 4096 else 3.0


@dataclass(frozen=True)
class _Keys:
    """Where each shape detect_variant reads lives in one key layout."""

    patch: str
    blocks: str
    out: str
    caption: str
    mlp: str
    q_norm: str
    q_bias: str
    pos_embed: str | None


_LAYOUT_KEYS = {
    "original": _Keys(
        patch="x_embedder.proj.weight",
        blocks=r"blocks\.(\d+)\.",
        out="final_layer.linear.weight",
        caption="y_embedder.y_proj.fc1.weight",
        mlp="blocks.0.mlp.inverted_conv.conv.weight",
        q_norm="blocks.0.attn.q_norm.weight",
        q_bias="blocks.0.attn.qkv.bias",
        pos_embed="pos_embed",
    ),
    "diffusers": _Keys(
        patch="patch_embed.proj.weight",
        blocks=r"transformer_blocks\.(\d+)\.",
        out="proj_out.weight",
        caption="caption_projection.linear_1.weight",
        mlp="transformer_blocks.0.ff.conv_inverted.weight",
        q_norm="transformer_blocks.0.attn1.norm_q.weight",
        q_bias="transformer_blocks.0.attn1.to_q.bias",
        pos_embed=None,
    ),
}


def detect_variant(state_dict: dict[str, torch.Tensor], name: str = "checkpoint") -> SanaVariant:
    """Variant of a (prefix-stripped) transformer state dict, from its keys and shapes.

    `name` (the file name) names the file in errors and supplies the resolution when the weights cannot
    (diffusers state dicts and original files without `pos_embed`).
    """
    layout = detect_layout(state_dict, name)
    if any(k in state_dict for k in SPRINT_MARKERS):
        raise CheckpointError(
            f"'{name}' is a SANA-Sprint checkpoint (guidance-distilled, SCM/TrigFlow sampling); only flow "
            "SANA models are supported. Use a SANA or SANA-1.5 checkpoint."
        )
    keys = _LAYOUT_KEYS[layout]
    patch = state_dict[keys.patch]
    hidden, in_channels, patch_size = patch.shape[0], patch.shape[1], patch.shape[2]
    depth = _depth(state_dict, keys.blocks)
    out_channels = state_dict[keys.out].shape[0] // patch_size**2
    caption_channels = state_dict[keys.caption].shape[1]
    mlp_hidden = state_dict[keys.mlp].shape[0]
    qk_norm = keys.q_norm in state_dict
    attention_bias = keys.q_bias in state_dict
    pos_embed = state_dict.get(keys.pos_embed) if keys.pos_embed else None
    tokens = pos_embed.shape[1] if pos_embed is not None and pos_embed.ndim == 3 else 0
    if tokens and math.isqrt(tokens) ** 2 == tokens:
        grid = math.isqrt(tokens)
        resolution = grid * patch_size * DCAE_COMPRESSION
        scale = _pe_scale(pos_embed, grid, resolution)
    else:
        resolution = _resolution_hint(Path(name).name) or 1024
        grid = resolution // (patch_size * DCAE_COMPRESSION)
        scale = PE_SCALE_BY_RESOLUTION.get(resolution)
    size, config = _config(
        hidden=hidden,
        depth=depth,
        in_channels=in_channels,
        out_channels=out_channels,
        caption_channels=caption_channels,
        mlp_hidden=mlp_hidden,
        patch_size=patch_size,
        sample_size=grid,
        interpolation_scale=scale,
        qk_norm=qk_norm,
        attention_bias=attention_bias,
    )
    return SanaVariant(size, resolution, config, default_flow_shift(resolution), layout)


def variant_from_config(config: dict[str, Any], flow_shift: float | None = None) -> SanaVariant:
    """Variant of a diffusers folder, read from its transformer config (and scheduler shift)."""
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    size = PUBLISHED_SIZES.get((hidden, config["num_layers"]), ("custom", 0))[0]
    resolution = config.get("sample_size", 32) * config.get("patch_size", 1) * DCAE_COMPRESSION
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    return SanaVariant(size, resolution, kwargs, flow_shift or default_flow_shift(resolution), "diffusers")


def convert_original(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original SANA keys -> diffusers keys, through diffusers' own converter.

    diffusers' single-file converter covers SANA 1.0; SANA-1.5's q/k RMS norms (`attn.q_norm`,
    `cross_attn.k_norm`, ...) are renamed here the way diffusers' conversion script names them.
    """
    work = dict(state_dict)
    norms = {k: work.pop(k) for k in list(work) if QK_NORM_KEY.match(k)}
    for key in DROPPED_ORIGINAL_KEYS[2:]:
        work.pop(key, None)
    # The converter pops these two unconditionally; files saved without the buffers still convert.
    work.setdefault("pos_embed", torch.empty(0))
    work.setdefault("y_embedder.y_embedding", torch.empty(0))
    try:
        converted = convert_sana_transformer_to_diffusers(work)
    except KeyError as exc:
        raise CheckpointError(f"The checkpoint lacks {exc}: it is an incomplete SANA transformer.") from exc
    if work:
        raise CheckpointError(
            f"The checkpoint has keys no SANA variant uses ({', '.join(sorted(work)[:5])}); it is not a "
            "supported SANA transformer."
        )
    for key, value in norms.items():
        block, attn, which = QK_NORM_KEY.match(key).groups()
        target = "attn1" if attn == "attn" else "attn2"
        converted[f"transformer_blocks.{block}.{target}.norm_{which}.{key.rsplit('.', 1)[1]}"] = value
    return converted


def build_transformer(
    state_dict: dict[str, torch.Tensor],
    variant: SanaVariant,
    dtype: torch.dtype | None = None,
    name: str = "checkpoint",
) -> SanaTransformer2DModel:
    """A diffusers SanaTransformer2DModel holding exactly these weights (strict: every key, every shape).

    The model is built without allocating its random init (accelerate's empty weights) and takes the
    tensors by assignment, so peak memory is the checkpoint itself.
    """
    weights = convert_original(state_dict) if variant.layout == "original" else dict(state_dict)
    with init_empty_weights():
        model = SanaTransformer2DModel(**variant.config)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"'{name}' does not fit {variant.name}: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"'{name}' does not fit {variant.name}: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}. It is not a complete SANA transformer."
        )
    if dtype is not None:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)


def load_transformer_file(
    path: str | Path, dtype: torch.dtype | None = None
) -> tuple[SanaTransformer2DModel, SanaVariant]:
    """Load a single-file SANA transformer (original or diffusers keys), detecting its variant."""
    path = Path(path)
    tensors, stored = load_checkpoint(path)
    state_dict = strip_prefix(tensors)
    variant = detect_variant(state_dict, path.name)
    if variant.size == "custom":
        variant = with_stored_cross_heads(variant, stored, path.name)
    return build_transformer(state_dict, variant, dtype, path.name), variant


def with_stored_cross_heads(variant: SanaVariant, stored: dict, name: str) -> SanaVariant:
    """A custom-size variant with the cross-attention heads its file stores.

    The weights fix the cross-attention width but not how it splits into heads, and each split is a
    different model; published sizes have known splits, a custom size must say its own.
    """
    heads = stored.get("num_cross_attention_heads")
    width = variant.config["cross_attention_dim"]
    if not isinstance(heads, int) or heads <= 0 or width % heads:
        raise CheckpointError(
            f"'{name}' is a custom-size SANA transformer ({width} wide, {variant.config['num_layers']} "
            "blocks): its weights do not tell how many cross-attention heads it has, and a wrong guess "
            "is a different model. Load it as a diffusers folder (transformer/config.json), or store its "
            "transformer config in the file: safetensors metadata 'config' = JSON with "
            "num_cross_attention_heads."
        )
    config = {
        **variant.config,
        "num_cross_attention_heads": heads,
        "cross_attention_head_dim": width // heads,
    }
    return replace(variant, config=config)


def load_transformer_folder(
    folder: str | Path, dtype: torch.dtype | None = None
) -> tuple[SanaTransformer2DModel, SanaVariant]:
    """Load the transformer of a diffusers SANA folder (pipeline root or its `transformer/`)."""
    folder = Path(folder)
    root = folder / "transformer" if (folder / "transformer" / "config.json").is_file() else folder
    if not (root / "config.json").is_file():
        raise CheckpointError(
            f"'{folder}' is not a diffusers SANA folder: no transformer/config.json. "
            "Point at the folder that holds model_index.json."
        )
    config = read_json(root / "config.json")
    if config.get("_class_name", "SanaTransformer2DModel") != "SanaTransformer2DModel":
        raise CheckpointError(f"'{root}' holds a {config['_class_name']}, not a SanaTransformer2DModel.")
    try:
        model = SanaTransformer2DModel.from_pretrained(
            root, local_files_only=True, low_cpu_mem_usage=True, torch_dtype=dtype
        )
    except TypeError as exc:  # diffusers builds the model from the config: a value of the wrong type
        raise CheckpointError(
            f"'{root / 'config.json'}' holds a value of the wrong type ({exc}); restore the model folder's "
            "config.json."
        ) from exc
    except Exception as exc:  # whatever diffusers raises on a broken file, named by folder_load_error
        raise folder_load_error("SANA transformer", root, exc) from exc
    return model.eval().requires_grad_(False), variant_from_config(dict(model.config), _folder_shift(folder))


def _folder_shift(folder: Path) -> float | None:
    """The flow shift a diffusers pipeline folder ships in its scheduler config, if any."""
    path = folder / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return None
    config = read_json(path)
    return config.get("flow_shift") or config.get("shift")
