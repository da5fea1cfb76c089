"""The second benchmark model (bench/models/seamlab-sana-pe): a transformer with SANA 2K/4K's sin-cos
position embedding next to the embedded one, sharing its DC-AE and text encoder through symlinks."""

import os
from pathlib import Path

import torch

from lab.training.cli import main as train
from temporal_tiling import cli
from temporal_tiling.position import has_sincos_pos_embed
from temporal_tiling.sana import (
    EMBEDDED_MODEL,
    is_pipeline_folder,
    load_text_encoder,
    load_transformer_folder,
    load_vae_folder,
)

ROOT = Path(__file__).resolve().parents[2]
PE_MODEL = ROOT / "bench" / "models" / "seamlab-sana-pe"
SHARED = ("vae", "text_encoder", "tokenizer")


def assert_shares_the_embedded_parts(folder: Path) -> None:
    """vae/, text_encoder/, tokenizer/ are relative symlinks to the embedded model's folders."""
    for part in SHARED:
        link = folder / part
        assert link.is_symlink() and not os.path.isabs(os.readlink(link)), part
        assert link.resolve() == (EMBEDDED_MODEL / part).resolve(), part


def test_the_pe_model_loads_with_the_pack_loaders_and_has_pe():
    assert is_pipeline_folder(PE_MODEL)
    assert_shares_the_embedded_parts(PE_MODEL)
    own = sum(f.stat().st_size for f in PE_MODEL.rglob("*") if f.is_file() and not f.is_symlink())
    assert own < 8e6, "only the transformer and pictures are the folder's own files"
    transformer, variant = load_transformer_folder(PE_MODEL)
    assert variant.uses_pe and has_sincos_pos_embed(transformer)
    assert not has_sincos_pos_embed(load_transformer_folder(EMBEDDED_MODEL)[0])
    vae = load_vae_folder(PE_MODEL)
    text = load_text_encoder(PE_MODEL)
    embeds, _ = text.encode("a blue to pink sky with one sun at top left")
    assert embeds.shape[-1] == transformer.config.caption_channels
    assert vae.config.latent_channels == transformer.config.in_channels
    model = cli.load_sana_folder(PE_MODEL, torch.device("cpu"))
    assert model.compression == 8


def test_build_reuses_the_parts_of_a_model_and_adds_pe(tmp_path: Path):
    """One training step of a tiny PE transformer on the embedded model's parts: the export links
    them instead of copying, and the card's command replays the run with the same flags."""
    out = tmp_path / "pe"
    train(
        ["build", "--out", str(out), "--work", str(tmp_path / "work"), "--reuse-components",
         str(EMBEDDED_MODEL), "--position-embedding", "--crop-prob", "0", "--precision", "fp32",
         "--steps", "1", "--lora-steps", "0", "--hidden", "16", "--heads", "2", "--layers", "1",
         "--tokens-per-step", "64"]
    )  # fmt: skip
    assert_shares_the_embedded_parts(out)
    transformer, variant = load_transformer_folder(out)
    assert variant.uses_pe and has_sincos_pos_embed(transformer)
    assert not (tmp_path / "work" / "ae_done.json").exists(), "the autoencoder was not retrained"
    card = (out / "README.md").read_text()
    command = next(line for line in card.splitlines() if line.startswith("python -m"))
    flags = ("--reuse-components", "--position-embedding", "--crop-prob 0.0", "--precision fp32")
    assert all(flag in command for flag in flags) and "--ae-steps" not in command
    assert "sin-cos positional embedding" in card and "fp32 (no autocast)" in card
