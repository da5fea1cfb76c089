"""Loader nodes: SANA checkpoints / diffusers folders -> MODEL, CLIP, VAE that the stock nodes accept.

Files are listed only through ComfyUI's model folders (`folder_paths`: checkpoints, diffusion_models, vae,
text_encoders), plus diffusers folders found directly inside them (shown with a trailing '/') and the pack's
embedded model. Loading errors become one message naming the file and what to change; nothing that was
loaded before the failure stays referenced.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io

from ..temporal_tiling.errors import UserInputError
from ..temporal_tiling.sana import (
    EMBEDDED_MODEL,
    is_pipeline_folder,
    load_text_encoder,
    load_transformer_file,
    load_transformer_folder,
    load_vae_file,
    load_vae_folder,
)
from ..temporal_tiling.sana.text import INSTRUCTION_MODES
from .common import CATEGORY, cross_check
from .sana_model import SanaVAE, make_clip, make_model_patcher

EMBEDDED_ENTRY = "seamlab-sana (embedded)"
FROM_CHECKPOINT = "(from checkpoint folder)"
MODEL_KINDS = ("checkpoints", "diffusion_models")
DTYPES = {"default": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_TOOLTIP = (
    "Weight precision. default: bf16 where the device supports it, else fp32 (SANA is trained in bf16; "
    "fp16 can overflow)."
)
TEMPLATE_TOOLTIP = (
    "SANA's complex-human-instruction prompt template: 'auto' uses it for non-empty prompts and not for "
    "empty ones (as diffusers' SanaPipeline does for prompt / default negative), unless the model folder's "
    "prompt_settings.json says otherwise (the embedded model: never); 'always', 'never'."
)

TEXT_ENCODER_SETTINGS = (
    io.Combo.Input("weight_dtype", options=list(DTYPES), default="default", tooltip=DTYPE_TOOLTIP),
    io.Combo.Input(
        "prompt_template", options=list(INSTRUCTION_MODES), default="auto", tooltip=TEMPLATE_TOOLTIP
    ),
)
"""The last inputs of both Load SANA and Load SANA Text Encoder (schemas only read them)."""


class SanaLoadError(UserInputError):
    """A model the user picked cannot be loaded; the message names it and says what to change."""


SCAN_DEPTH = 3
"""Folder levels below a model folder that a listing reads: a diffusers folder one or two levels deep,
and a part (vae/, text_encoder/) below it."""


@dataclass(frozen=True)
class _Listing:
    """Diffusers folders found in one model folder kind, and the folders their listing depends on."""

    folders: list[str]
    mtimes: dict[str, float]
    """Every folder up to SCAN_DEPTH below the model folders -> its modification time (-1: missing).
    An entry added or removed anywhere the listing looks changes one of these, as in ComfyUI's own
    file-list cache (``folder_paths.cached_filename_list_``)."""

    def is_current(self) -> bool:
        return all(_mtime(folder) == mtime for folder, mtime in self.mtimes.items())


_listings: dict[tuple[str, tuple[str, ...]], _Listing] = {}
"""ComfyUI builds every node's schema on each queued prompt (validation) and on every node-list
refresh; the loaders' choices come from here instead of re-reading the model folders each time."""


def _mtime(folder: str) -> float:
    try:
        return os.stat(folder).st_mtime
    except OSError:
        return -1.0


def _folder_mtimes(bases: list[str]) -> dict[str, float]:
    mtimes = {}
    level = []
    for base in bases:
        mtimes[base] = _mtime(base)
        level += [base] if mtimes[base] >= 0 else []
    for _ in range(SCAN_DEPTH):
        below = []
        for folder in level:
            with contextlib.suppress(OSError), os.scandir(folder) as entries:
                below += [entry.path for entry in entries if entry.is_dir()]
        mtimes |= {folder: _mtime(folder) for folder in below}
        level = below
    return mtimes


def _scan_folders(bases: list[str], markers: tuple[str, ...]) -> list[str]:
    """Folders (one or two levels deep) of the model folders that hold one of `markers` (paths relative
    to the folder), as 'name/'; folders nested in another listed folder are parts of it, not entries."""
    found = set()
    for base in map(Path, bases):
        for marker in markers:
            for pattern in (f"*/{marker}", f"*/*/{marker}"):
                for path in base.glob(pattern):
                    folder = path.parents[marker.count("/")]
                    found.add(folder.relative_to(base).as_posix() + "/")
    return sorted(f for f in found if not any(f != other and f.startswith(other) for other in found))


def _folders(kind: str, markers: tuple[str, ...]) -> list[str]:
    """The diffusers folders of a model folder kind, read again only when a folder in it changed."""
    key = (kind, markers)
    listing = _listings.get(key)
    bases = folder_paths.get_folder_paths(kind)
    if listing is None or set(bases) - set(listing.mtimes) or not listing.is_current():
        mtimes = _folder_mtimes(bases)  # before the scan: a change during it makes the next call rescan
        listing = _listings[key] = _Listing(_scan_folders(bases, markers), mtimes)
    return listing.folders


def _files(kind: str, hide_under: list[str]) -> list[str]:
    """Model files of a folder kind, without the weight files that belong to listed diffusers folders."""
    return [f for f in folder_paths.get_filename_list(kind) if not any(f.startswith(d) for d in hide_under)]


def model_choices() -> list[str]:
    folders = sorted({f for kind in MODEL_KINDS for f in _folders(kind, ("model_index.json",))})
    files = sorted({f for kind in MODEL_KINDS for f in _files(kind, folders)})
    embedded = [EMBEDDED_ENTRY] if is_pipeline_folder(EMBEDDED_MODEL) else []
    return embedded + folders + files


def vae_choices() -> list[str]:
    folders = _folders("vae", ("config.json", "vae/config.json"))
    return [FROM_CHECKPOINT, *folders, *_files("vae", folders)]


def text_encoder_choices() -> list[str]:
    return [FROM_CHECKPOINT, *_folders("text_encoders", ("config.json", "text_encoder/config.json"))]


def _resolve(name: str, kinds: tuple[str, ...]) -> Path:
    """A listed name -> its path on disk, looked up only inside ComfyUI's folders for `kinds`."""
    if name == EMBEDDED_ENTRY:
        if not is_pipeline_folder(EMBEDDED_MODEL):
            raise SanaLoadError(f"The embedded model is missing from '{EMBEDDED_MODEL}'; reinstall the pack.")
        return EMBEDDED_MODEL
    for kind in kinds:
        if name.endswith("/"):
            for base in map(Path, folder_paths.get_folder_paths(kind)):
                if (base / name).is_dir():
                    return base / name
        elif path := folder_paths.get_full_path(kind, name):
            return Path(path)
    raise SanaLoadError(f"'{name}' is not in ComfyUI's {' or '.join(kinds)} folders; refresh the node list.")


def _dtype(choice: str, device: torch.device, supported: list[torch.dtype]) -> torch.dtype:
    if DTYPES[choice] is not None:
        return DTYPES[choice]
    if comfy.model_management.is_device_cpu(device):
        return torch.float32
    return (
        torch.bfloat16
        if comfy.model_management.should_use_bf16(device) and torch.bfloat16 in supported
        else (torch.float32)
    )


def _load_vae(name: str, checkpoint: Path | None):
    if name == FROM_CHECKPOINT:
        if checkpoint is None or not (checkpoint / "vae").is_dir():
            raise SanaLoadError(
                "This checkpoint is a single file without a VAE: pick SANA's DC-AE in vae_name "
                "(models/vae: dc-ae-f32c32-sana .safetensors or its diffusers folder)."
            )
        return load_vae_folder(checkpoint)
    path = _resolve(name, ("vae",))
    return load_vae_folder(path) if path.is_dir() else load_vae_file(path)


def _load_text_encoder(name: str, checkpoint: Path | None, dtype: torch.dtype, template: str):
    if name == FROM_CHECKPOINT:
        if checkpoint is None or not (checkpoint / "text_encoder").is_dir():
            raise SanaLoadError(
                "This checkpoint is a single file without a text encoder: pick SANA's Gemma-2 folder "
                "(gemma-2-2b-it with its tokenizer) in text_encoder_name (models/text_encoders)."
            )
        return load_text_encoder(checkpoint, dtype, template)
    return load_text_encoder(_resolve(name, ("text_encoders",)), dtype, template)


def _text_dtype(choice: str) -> torch.dtype:
    return _dtype(choice, comfy.model_management.text_encoder_device(), [torch.bfloat16, torch.float32])


def _guarded(load, *args):
    """Run a loader; on a user-caused error drop everything it loaded, then raise one clear message."""
    message = None
    try:
        return load(*args)
    except ValueError as exc:  # CheckpointError, SanaLoadError, mismatched parts
        message = str(exc)
    gc.collect()
    raise SanaLoadError(message)


def load_sana(ckpt_name: str, vae_name: str, text_encoder_name: str, weight_dtype: str, prompt_template: str):
    """MODEL, CLIP, VAE for one SANA checkpoint (file or diffusers folder) plus optional separate parts."""
    path = _resolve(ckpt_name, MODEL_KINDS)
    folder = path if path.is_dir() else None
    if folder is not None and not is_pipeline_folder(folder):
        raise SanaLoadError(
            f"'{ckpt_name}' has no model_index.json + transformer/: not a diffusers SANA folder."
        )
    dtype = _dtype(weight_dtype, comfy.model_management.get_torch_device(), [torch.bfloat16, torch.float32])
    transformer, variant = (
        load_transformer_folder(path, dtype) if folder else load_transformer_file(path, dtype)
    )
    vae = _load_vae(vae_name, folder)
    text = _load_text_encoder(text_encoder_name, folder, _text_dtype(weight_dtype), prompt_template)
    caption = transformer.config.caption_channels
    if text.hidden_size != caption:
        raise SanaLoadError(
            f"The text encoder gives {text.hidden_size}-wide features but {variant.name} expects {caption}. "
            "SANA uses Gemma-2 2B (2304); pick the text encoder that belongs to this checkpoint."
        )
    model = make_model_patcher(transformer, variant, vae)
    return model, make_clip(text, _text_dtype(weight_dtype)), SanaVAE(vae)


class SanaCheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTemporalCheckpointLoader",
            display_name="Load SANA",
            category=CATEGORY,
            description=(
                "Loads a SANA model (600M/1600M, 512px-4K; original .pth/.safetensors or a diffusers folder) "
                "as MODEL, CLIP and VAE that work with KSampler, CLIPTextEncode and VAEDecode."
            ),
            inputs=[
                io.Combo.Input(
                    "ckpt_name",
                    options=model_choices(),
                    tooltip="A SANA transformer from models/checkpoints or models/diffusion_models "
                    "(.pth, .safetensors or a diffusers folder), or the pack's embedded seam-lab model.",
                ),
                io.Combo.Input(
                    "vae_name",
                    options=vae_choices(),
                    tooltip="SANA's DC-AE from models/vae; required for single-file checkpoints, "
                    "a diffusers folder brings its own.",
                ),
                io.Combo.Input(
                    "text_encoder_name",
                    options=text_encoder_choices(),
                    tooltip="Gemma-2 folder with its tokenizer from models/text_encoders; required for "
                    "single-file checkpoints, a diffusers folder brings its own.",
                ),
                *TEXT_ENCODER_SETTINGS,
            ],
            outputs=[
                io.Model.Output(
                    tooltip="The SANA transformer as a flow model: KSampler, BCLA Cache, Causal Sampler."
                ),
                io.Clip.Output(tooltip="SANA's Gemma-2 text encoder for CLIPTextEncode."),
                io.Vae.Output(
                    tooltip="The DC-AE for VAEDecode / VAEDecodeTiled / VAEEncode and the Tile Planner."
                ),
            ],
        )

    @classmethod
    def validate_inputs(
        cls,
        ckpt_name: str | None = None,
        vae_name: str | None = None,
        text_encoder_name: str | None = None,
        weight_dtype: str | None = None,
        prompt_template: str | None = None,
    ) -> bool:
        return cross_check(cls, locals())

    @classmethod
    def execute(cls, ckpt_name, vae_name, text_encoder_name, weight_dtype, prompt_template) -> io.NodeOutput:
        return io.NodeOutput(
            *_guarded(load_sana, ckpt_name, vae_name, text_encoder_name, weight_dtype, prompt_template)
        )


class SanaVAELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTemporalVAELoader",
            display_name="Load SANA VAE (DC-AE)",
            category=CATEGORY,
            description="Loads SANA's DC-AE (file or diffusers folder in models/vae) as VAE for stock nodes.",
            inputs=[
                io.Combo.Input(
                    "vae_name", options=vae_choices()[1:], tooltip="SANA's DC-AE, file or diffusers folder."
                )
            ],
            outputs=[io.Vae.Output(tooltip="The DC-AE for VAEDecode / VAEDecodeTiled / VAEEncode.")],
        )

    @classmethod
    def validate_inputs(cls, vae_name: str | None = None) -> bool:
        return cross_check(cls, locals())

    @classmethod
    def execute(cls, vae_name) -> io.NodeOutput:
        return io.NodeOutput(SanaVAE(_guarded(_load_vae, vae_name, None)))


class SanaTextEncoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SanaTemporalTextEncoderLoader",
            display_name="Load SANA Text Encoder (Gemma-2)",
            category=CATEGORY,
            description="Loads SANA's Gemma-2 text encoder (folder in models/text_encoders) as CLIP.",
            inputs=[
                io.Combo.Input(
                    "text_encoder_name",
                    options=text_encoder_choices()[1:],
                    tooltip="Gemma-2 folder with its tokenizer (e.g. gemma-2-2b-it).",
                ),
                *TEXT_ENCODER_SETTINGS,
            ],
            outputs=[io.Clip.Output(tooltip="SANA's text conditioning for CLIPTextEncode.")],
        )

    @classmethod
    def validate_inputs(
        cls,
        text_encoder_name: str | None = None,
        weight_dtype: str | None = None,
        prompt_template: str | None = None,
    ) -> bool:
        return cross_check(cls, locals())

    @classmethod
    def execute(cls, text_encoder_name, weight_dtype, prompt_template) -> io.NodeOutput:
        dtype = _text_dtype(weight_dtype)
        text = _guarded(_load_text_encoder, text_encoder_name, None, dtype, prompt_template)
        return io.NodeOutput(make_clip(text, dtype))


NODES: list[type[io.ComfyNode]] = [SanaCheckpointLoader, SanaVAELoader, SanaTextEncoderLoader]
