"""The 32× benchmark model (bench/models/seamlab-sana-f32): DC-AE f32c32's shape (32× compression, 32
latent channels) on seam-lab scenes, so guided's latent and pixel enlargements can be compared where a
latent cell is 32 px, as in SANA's real autoencoder."""

from pathlib import Path

import torch

from temporal_tiling import cli
from temporal_tiling.sana import is_pipeline_folder

ROOT = Path(__file__).resolve().parents[2]
F32_MODEL = ROOT / "bench" / "models" / "seamlab-sana-f32"


def test_the_f32_model_loads_with_the_pack_loaders_and_compresses_32x():
    assert is_pipeline_folder(F32_MODEL)
    size = sum(f.stat().st_size for f in F32_MODEL.rglob("*.safetensors"))
    assert size < 7e6, "weights stay small enough to commit"
    model = cli.load_sana_folder(F32_MODEL, torch.device("cpu"))
    assert model.compression == 32 and model.transformer.config.in_channels == 32
    card = (F32_MODEL / "README.md").read_text()
    assert "32× compression, 32 latent channels" in card and "--ae-channels" in card
