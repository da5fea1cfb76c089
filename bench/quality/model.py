"""The model the quality benchmark samples with: the embedded SANA folder or the tests' tiny random one."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from temporal_tiling.sana import load_text_encoder, load_transformer_folder, load_vae_folder
from temporal_tiling.sana.vae import compression, scaling_factor

TEXT_LENGTH = 32
"""The embedded model's prompt length (bare prompts, right-padded, with attention mask)."""
CFG = 4.0
"""The embedded model's sampling guidance (its model card's samples)."""


@dataclass
class Model:
    transformer: torch.nn.Module
    text: torch.nn.Module
    vae: torch.nn.Module
    compression: int
    scale: float
    shift: float
    name: str
    lora: torch.nn.Module | None = None
    lora_path: Path | None = None

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        return self.text.encode(prompts)

    @torch.no_grad()
    def decode(self, latent: Tensor, chunk: int = 32) -> Tensor:
        parts = [self.vae.decode(x / self.scale).sample for x in latent.split(chunk)]
        return ((torch.cat(parts).float() + 1) / 2).clamp(0, 1)


def load_model(folder: Path, lora: Path | None) -> Model:
    """A diffusers SANA folder the way the CLI loads the embedded model (bare prompts, 32 tokens)."""
    transformer, variant = load_transformer_folder(folder)
    vae = load_vae_folder(folder)
    text = load_text_encoder(folder, instruction="never")
    text.max_sequence_length = TEXT_LENGTH
    model = Model(
        transformer, text, vae, compression(vae), scaling_factor(vae), variant.flow_shift, folder.name
    )
    if lora is not None and lora.exists():
        from temporal_tiling.lora import load_temporal_lora

        model.lora = load_temporal_lora(copy.deepcopy(transformer), lora).eval().requires_grad_(False)
        model.lora_path = lora
    return model


def quick_model(folder: Path) -> Model:
    """The tests' tiny random SANA folder (real classes, random weights): exercises every code path."""
    from lab.fixtures import write_pipeline_folder

    if not (folder / "model_index.json").is_file():
        write_pipeline_folder(folder)
    return load_model(folder, None)
