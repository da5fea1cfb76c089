"""SANA as ComfyUI objects: MODEL (flow BaseModel around diffusers' SanaTransformer2DModel), VAE (DC-AE) and
CLIP (Gemma-2), each usable by the stock nodes (KSampler, CLIPTextEncode, VAEEncode/VAEDecode/VAEDecodeTiled).

The engine loads the diffusers models (``temporal_tiling.sana``); this module only adapts them:
* ``diffusion_model`` delegates attribute lookups to the diffusers transformer, so object patches on a clone
  at ``diffusion_model.transformer_blocks.{i}.attn1.processor`` replace diffusers' attention processors;
* the latent format is the DC-AE's (channels, scaling factor) with preview colours fitted on the VAE.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, ClassVar

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models_base
import torch
from diffusers import AutoencoderDC, SanaTransformer2DModel

from ..temporal_tiling.sana import SanaTextEncoder, SanaVariant, compression, decode_tiled, fit_latent_rgb

LOADER_DISPLAY_NAME = "Load SANA (SanaTemporalCheckpointLoader)"
LINEAR_PROCESSOR_PREFIX = "SanaLinearAttnProcessor"
DEFAULT_DECODE_TILE = 512  # px per tiled-decode tile when ComfyUI falls back to tiling after an OOM
DEFAULT_DECODE_OVERLAP = 64


class SanaLatentFormat(comfy.latent_formats.LatentFormat):
    """DC-AE latent space: its channel count, scaling factor and compression; preview colours fitted on
    the VAE.

    The least-squares fit encodes a few images, which takes seconds for the full DC-AE on a CPU, so it runs
    on first use (when ComfyUI builds a latent previewer) and only once.
    """

    latent_dimensions = 2

    def __init__(self, vae: AutoencoderDC) -> None:
        self.latent_channels = int(vae.config.latent_channels)
        self.scale_factor = float(vae.config.scaling_factor)
        self.downscale_ratio = compression(vae)
        """Pixels per latent cell; the sampler checks a tile plan's compression against it."""
        self.spacial_downscale_ratio = self.downscale_ratio
        """The same, under the name newer ComfyUI cores read (default 8) when they resize an empty latent
        made for another compression (`downscale_ratio_spacial` / this)."""
        self._vae = vae
        self._rgb: tuple[list, list] | None = None

    def _fit(self) -> tuple[list, list]:
        if self._rgb is None:
            factors, bias = fit_latent_rgb(self._vae, self.scale_factor)
            self._rgb = factors.tolist(), bias.tolist()
        return self._rgb

    @property
    def latent_rgb_factors(self) -> list[list[float]]:
        return self._fit()[0]

    @property
    def latent_rgb_factors_bias(self) -> list[float]:
        return self._fit()[1]


class SanaDiffusionModel(torch.nn.Module):
    """ComfyUI's diffusion_model call convention mapped onto diffusers' SanaTransformer2DModel.

    Unknown attributes resolve on the transformer, so ComfyUI paths such as
    `diffusion_model.transformer_blocks.0.attn1.processor` reach diffusers' modules.
    """

    def __init__(self, transformer: SanaTransformer2DModel) -> None:
        super().__init__()
        self.transformer = transformer

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("transformer"), name)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """ComfyUI's extra arguments (transformer_options, control, ...) have no diffusers counterpart."""
        return self.transformer(
            x,
            encoder_hidden_states=context,
            timestep=timesteps,
            encoder_attention_mask=attention_mask,
            return_dict=False,
        )[0]


class SanaModelConfig(comfy.supported_models_base.BASE):
    """Model config of one loaded SANA transformer (not auto-detected: the pack's loader builds it)."""

    unet_config: ClassVar[dict] = {"image_model": "sana", "disable_unet_model_creation": True}
    unet_extra_config: ClassVar[dict] = {}
    supported_inference_dtypes: ClassVar[list] = [torch.bfloat16, torch.float16, torch.float32]

    def __init__(self, variant: SanaVariant, latent_format: SanaLatentFormat) -> None:
        super().__init__(dict(self.unet_config))
        self.latent_format = latent_format
        self.sampling_settings = {"shift": variant.flow_shift, "multiplier": 1000.0}
        hidden = variant.config["num_attention_heads"] * variant.config["attention_head_dim"]
        # Linear attention: activations grow with tokens x width only; 1.6B (2240 wide) needs ~3x the
        # per-token budget ComfyUI's formula gives 1.0.
        self.memory_usage_factor = 3.0 * hidden / 2240


class SanaModel(comfy.model_base.BaseModel):
    """Flow-matching (rectified flow, timestep = sigma * 1000) SANA model for ComfyUI's samplers."""

    def __init__(
        self, model_config: SanaModelConfig, transformer: SanaTransformer2DModel, device=None
    ) -> None:
        super().__init__(model_config, comfy.model_base.ModelType.FLOW, device=device)
        self.diffusion_model = SanaDiffusionModel(transformer)

    def extra_conds(self, **kwargs: Any) -> dict[str, Any]:
        out = super().extra_conds(**kwargs)
        mask = kwargs.get("attention_mask")
        if mask is not None:
            out["attention_mask"] = comfy.conds.CONDRegular(mask)
        return out


def make_model_patcher(
    transformer: SanaTransformer2DModel, variant: SanaVariant, vae: AutoencoderDC
) -> comfy.model_patcher.ModelPatcher:
    """Wrap a loaded transformer as ComfyUI MODEL whose latent format matches `vae`."""
    if vae.config.latent_channels != transformer.config.in_channels:
        raise ValueError(
            f"The VAE makes {vae.config.latent_channels}-channel latents but {variant.name} expects "
            f"{transformer.config.in_channels}. Pick the DC-AE that belongs to this SANA model."
        )
    config = SanaModelConfig(variant, SanaLatentFormat(vae))
    load_device = comfy.model_management.get_torch_device()
    model = SanaModel(config, transformer, device=load_device)
    return comfy.model_patcher.ModelPatcher(
        model, load_device=load_device, offload_device=comfy.model_management.unet_offload_device()
    )


def require_sana_linear_attention(model: comfy.model_patcher.ModelPatcher) -> SanaTransformer2DModel:
    """The diffusers transformer of a MODEL from this pack's loader, or a clear refusal.

    The LoRA loader maps diffusers' module names, which MODELs from other loaders (ExtraModels' SANA with
    its original-layout modules, any non-SANA model) do not have.
    """
    inner = getattr(getattr(model, "model", None), "diffusion_model", None)
    if not isinstance(inner, SanaDiffusionModel):
        raise ValueError(
            f"This MODEL ({type(inner).__name__}) does not use diffusers' SANA modules (ExtraModels' SANA "
            f"loader builds the original layout). Load the same checkpoint with '{LOADER_DISPLAY_NAME}' from "
            "this pack instead."
        )
    for i in range(len(inner.transformer.transformer_blocks)):
        # the processor the model runs: a pending object patch, else the original (also while patched)
        processor = model.get_model_object(f"diffusion_model.transformer_blocks.{i}.attn1.processor")
        if not type(processor).__name__.startswith(LINEAR_PROCESSOR_PREFIX):
            raise ValueError(
                f"Block {i} of this MODEL uses {type(processor).__name__}, not diffusers' SANA linear "
                f"attention; BCLA needs an unmodified model from '{LOADER_DISPLAY_NAME}'."
            )
    return inner.transformer


class _DCAE(torch.nn.Module):
    """AutoencoderDC with the encode/decode signature ComfyUI's VAE calls (tensors in, tensors out)."""

    def __init__(self, vae: AutoencoderDC) -> None:
        super().__init__()
        self.vae = vae

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(pixels).latent

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents).sample


def _to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """DC-AE output [-1, 1] to IMAGE [0, 1], in place and returned.

    ComfyUI 0.3.x uses the return value; newer cores decode into a preallocated buffer and call
    `process_output(buffer_slice)` ignoring the return, so the change must also land in the tensor given.
    """
    return image.add_(1.0).div_(2.0).clamp_(0.0, 1.0)


def _to_signed_range(image: torch.Tensor) -> torch.Tensor:
    """IMAGE [0, 1] to the DC-AE's [-1, 1], as a new tensor: every core uses the return value, and the
    caller's IMAGE (shared with other nodes) must stay untouched."""
    return image * 2.0 - 1.0


@contextlib.contextmanager
def _without_core_vae_warning():
    """`VAE.__init__` with no weights logs "No VAE weights detected"; for the adapter that is expected."""
    logger = logging.getLogger()
    quiet = logging.Filter()
    quiet.filter = lambda record: "No VAE weights detected" not in record.getMessage()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class SanaVAE(comfy.sd.VAE):
    """ComfyUI VAE around SANA's DC-AE; `spacial_compression_decode()` gives its 32x for the Tile Planner.

    Every attribute a stock VAE has comes from the installed ComfyUI: `VAE.__init__` runs with an empty state
    dict, which sets all defaults (whatever that version adds, e.g. `handles_tiling`, `format_encoded`,
    `pad_channel_value`, `size`) and returns before building a model; only the DC-AE's own values are set
    here. Tiled decoding (VAEDecodeTiled and ComfyUI's out-of-memory fallback) runs the engine's DC-AE tiler.
    """

    def __init__(self, vae: AutoencoderDC, dtype: torch.dtype | None = None) -> None:
        with _without_core_vae_warning():
            super().__init__(sd={})
        ratio = compression(vae)
        self.autoencoder = vae
        self.first_stage_model = _DCAE(vae).eval()
        self.memory_used_encode = lambda shape, dt: (
            700 * shape[-2] * shape[-1] * comfy.model_management.dtype_size(dt)
        )
        self.memory_used_decode = lambda shape, dt: (
            700 * shape[-2] * shape[-1] * ratio * ratio * comfy.model_management.dtype_size(dt)
        )
        self.downscale_ratio = self.upscale_ratio = ratio
        self.latent_channels = int(vae.config.latent_channels)
        self.latent_dim = 2
        self.output_channels = 3
        self.process_input = _to_signed_range
        self.process_output = _to_unit_range
        self.working_dtypes = [torch.bfloat16, torch.float32]
        self.device = comfy.model_management.vae_device()
        self.vae_dtype = dtype or comfy.model_management.vae_dtype(self.device, self.working_dtypes)
        self.first_stage_model.to(self.vae_dtype)
        self.output_device = comfy.model_management.intermediate_device()
        # diffusers' layers have none of ComfyUI's cast hooks, so they can only be loaded whole: say so
        # (core then loads with force_full_load) and use the plain ModelPatcher core picks for such VAEs,
        # not the dynamic-VRAM one that streams ComfyUI's own layers.
        self.disable_offload = True
        self.patcher = comfy.model_patcher.ModelPatcher(
            self.first_stage_model,
            load_device=self.device,
            offload_device=comfy.model_management.vae_offload_device(),
        )

    def decode_tiled_(self, samples, tile_x=None, tile_y=None, overlap=None):
        ratio = self.upscale_ratio
        tile = min(tile_x or DEFAULT_DECODE_TILE // ratio, tile_y or DEFAULT_DECODE_TILE // ratio)
        overlap = DEFAULT_DECODE_OVERLAP // ratio if overlap is None else overlap
        overlap = min(overlap, tile - 1)
        pixels = decode_tiled(
            self.autoencoder,
            samples.to(self.device, self.vae_dtype),
            tile=max(tile, 1),
            overlap=max(overlap, 0),
        )
        return self.process_output(pixels.to(self.output_device).float())


class SanaClipModel(torch.nn.Module):
    """ComfyUI's cond_stage_model interface over the engine's SANA text encoder."""

    disable_offload = True
    """Newer cores (Dynamic VRAM) build text encoders on a dynamic patcher unless this is set; that patcher
    streams weights of ComfyUI's own cast layers, while this Gemma-2 is transformers' model, already loaded
    whole. Set, core uses the plain ModelPatcher that 0.3.x always used."""

    def __init__(self, encoder: SanaTextEncoder, dtype=None, device=None, model_options=None) -> None:
        super().__init__()
        self.encoder = encoder
        if dtype is not None:
            self.encoder.to(dtype)
        if device is not None:
            self.encoder.to(device)
        self.dtypes = {next(encoder.parameters()).dtype}

    def reset_clip_options(self) -> None:
        """SANA's encoder has no layer/pooling options."""

    def set_clip_options(self, options: dict) -> None:
        """SANA's encoder has no layer/pooling options."""

    def encode_token_weights(self, tokens: dict[str, dict[str, torch.Tensor]]):
        """Hidden states with the padding rows zeroed, and the mask. This pack's SANA masks the padding
        either way; ExtraModels' SANA ignores the mask and attends all 300 rows, and its own Gemma node
        zeroes the padding, so the same conditioning reaches its model from either text node."""
        embeds, mask = self.encoder.encode_tokens(tokens["sana"])
        out = comfy.model_management.intermediate_device()
        embeds = embeds * mask[..., None].to(embeds.dtype)
        return embeds.float().to(out), None, {"attention_mask": mask.to(out)}

    def load_sd(self, sd: dict[str, torch.Tensor]):
        return self.encoder.text_model.load_state_dict(sd, strict=False)


class SanaTokenizer:
    """ComfyUI tokenizer interface: the prompt's token ids behind SANA's template (weights are not used).
    Words the model does not know and prompts cut short are logged as warnings (CLIPTextEncode is a
    stock node, so the console is where this can show)."""

    def __init__(self, encoder: SanaTextEncoder, embedding_directory=None, tokenizer_data=None) -> None:
        self.encoder = encoder

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False, **kwargs: Any):
        if text.strip():  # an empty prompt is the usual negative, not a mistake
            for note in self.encoder.prompt_notes(text):
                logging.warning("SANA prompt %r: %s", text[:60], note)
        return {"sana": self.encoder.tokenize(text)}

    def untokenize(self, token_weight_pair):
        return token_weight_pair

    def state_dict(self) -> dict:
        return {}


def make_clip(encoder: SanaTextEncoder, dtype: torch.dtype) -> comfy.sd.CLIP:
    """A ComfyUI CLIP whose encode gives SANA's conditioning: [B, 300, D] hidden states + attention_mask."""
    target = comfy.supported_models_base.ClipTarget(
        functools.partial(SanaTokenizer, encoder), functools.partial(SanaClipModel, encoder)
    )
    params = sum(p.numel() for p in encoder.parameters())
    return comfy.sd.CLIP(target=target, parameters=params, model_options={"dtype": dtype})
