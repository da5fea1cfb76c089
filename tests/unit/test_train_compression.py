"""The trainer builds autoencoders of other compressions (DC-AE f32 style: 32×, 32 latent channels) from
its flags, and the exported card describes what was built."""

from pathlib import Path

import pytest
from diffusers import AutoencoderDC

from lab.training.cli import main as train
from temporal_tiling.sana import load_transformer_folder
from temporal_tiling.sana.vae import compression


def test_build_trains_a_32x_autoencoder_and_its_card_replays_the_flags(tmp_path: Path):
    """One step of each stage on tiny widths: the exported DC-AE compresses 32×, the transformer reads
    its latent channels, the card's pictures are whole latent cells and its command repeats the flags."""
    out = tmp_path / "f32"
    train(
        ["build", "--out", str(out), "--work", str(tmp_path / "work"), "--latent-channels", "8",
         "--ae-channels", "4", "4", "4", "4", "4", "8", "--ae-crop", "64", "--ae-batch", "2",
         "--ae-steps", "1", "--precision", "fp32", "--steps", "1", "--lora-steps", "0", "--hidden", "16",
         "--heads", "2", "--layers", "1", "--tokens-per-step", "64", "--latent-sizes", "2x4", "4x2"]
    )  # fmt: skip
    vae = AutoencoderDC.from_pretrained(out / "vae")
    transformer, _ = load_transformer_folder(out)
    assert compression(vae) == 32 and vae.config.latent_channels == transformer.config.in_channels == 8
    card = (out / "README.md").read_text()
    command = next(line for line in card.splitlines() if line.startswith("python -m"))
    flags = ("--latent-channels 8", "--ae-channels 4 4 4 4 4 8", "--ae-crop 64", "--ae-batch 2",
             "--latent-sizes 2x4 4x2")  # fmt: skip
    assert all(flag in command for flag in flags), command
    assert card.startswith("# f32 — a SANA-architecture seam-lab model with a 32× autoencoder")
    assert "random 64 px crops" in card and "EMA 0.99, fp32 (no autocast)." in card
    assert "over latent sizes [[2, 4], [4, 2]];" in card
    assert "(64 unseen scenes, 256×256)" in card and "renders at 1024×512 (no tiling)" in card


def test_default_flags_leave_the_card_command_as_before(tmp_path: Path):
    """The embedded model's widths, crop and batch are the defaults, so its command names none of them."""
    from lab.training.embedded_recipe import _autoencoder_flags

    args = {"latent_channels": 16, "ae_channels": [16, 32, 64, 64], "ae_crop": 32, "ae_batch": 16}
    assert _autoencoder_flags(args, None) == []
    assert _autoencoder_flags({**args, "ae_crop": 64}, None) == ["--ae-crop 64"]
    assert _autoencoder_flags({**args, "ae_crop": 64}, "some/folder") == []


@pytest.mark.parametrize(
    ("widths", "crop", "message"),
    [
        (["8"] * 6, "32", "give a multiple of 32 px of at least 64 px"),
        (["8"] * 6, "80", "give a multiple of 32 px"),
        (["8"], "32", "at least two positive widths"),
    ],
)
def test_a_crop_that_is_not_two_whole_latent_cells_is_refused_before_training(
    tmp_path: Path, capsys, widths: list[str], crop: str, message: str
):
    with pytest.raises(SystemExit):
        train(
            [
                "build",
                "--out",
                str(tmp_path / "out"),
                "--work",
                str(tmp_path),
                "--ae-channels",
                *widths,
                "--ae-crop",
                crop,
            ]
        )
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing was written"


def test_a_latent_size_that_is_not_h_x_w_cells_is_refused(capsys):
    with pytest.raises(SystemExit):
        train(["build", "--latent-sizes", "8by8"])
    assert "a latent size is HxW in cells" in capsys.readouterr().err
