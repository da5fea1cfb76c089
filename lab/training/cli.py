"""`python -m lab.training`: `build` reproduces the embedded model, `lora` trains a temporal
LoRA."""

from __future__ import annotations

import argparse
from pathlib import Path

from temporal_tiling.options import EMBEDDED_MODEL


def train_lora(args: argparse.Namespace) -> None:
    """The `lora` command: train the temporal LoRA for a SanaPipeline folder."""
    from .temporal_lora import LoraTrainConfig, train_temporal_lora

    cfg = LoraTrainConfig(
        steps=args.steps,
        seed=args.seed,
        threads=args.threads,
        rank=args.rank,
        lr=args.lr,
        batch=args.batch,
        checkpoint_every=50,
        max_minutes=args.max_minutes,
    )
    train_temporal_lora(Path(args.model), Path(args.out), cfg, Path(args.work))


def latent_size(text: str) -> tuple[int, int]:
    """``"8x16"`` -> (8, 16): a training size in latent cells, height first."""
    try:
        height, width = (int(n) for n in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a latent size is HxW in cells, e.g. 8x16; got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"a latent size needs positive cells, got {text!r}")
    return height, width


def autoencoder_shape_problem(channels: list[int], crop: int) -> str | None:
    """Why ``--ae-channels``/``--ae-crop`` cannot train (None if they can): a crop must be whole latent
    cells, and at least two of them a side, or the decoder never sees a border between cells."""
    if len(channels) < 2 or min(channels) < 1:
        return f"--ae-channels needs at least two positive widths, got {channels}."
    compression = 2 ** (len(channels) - 1)
    if crop % compression or crop < 2 * compression:
        return (
            f"--ae-crop {crop} px with {len(channels)} --ae-channels ({compression}x compression): give a "
            f"multiple of {compression} px of at least {2 * compression} px (2 latent cells)."
        )
    return None


def overwrites_shipped_model(out: str) -> bool:
    """``out`` is the pack's embedded model or a folder inside it: a training run would replace what the
    nodes and the CLI load by default."""
    return Path(out).resolve().is_relative_to(EMBEDDED_MODEL.resolve())


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each flag's default, except where there is none to show (None, a switch's off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpWithDefaults,
        prog="python -m lab.training",
        description="Train the embedded seam-lab SANA model and its temporal LoRA.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser(
        "build",
        help="train the embedded seam-lab model from scratch and export it",
        formatter_class=HelpWithDefaults,
    )
    b.add_argument("--out", required=True, metavar="FOLDER", help="where the SanaPipeline folder is exported")
    b.add_argument("--work", default="out/seamlab-train", help="checkpoints; rerun the command to resume")
    b.add_argument("--seed", type=int, default=0, help="seed of the scenes, the weights and the noise")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    b.add_argument("--latent-channels", type=int, default=16, help="channels of the DC-AE latent")
    b.add_argument(
        "--ae-channels",
        type=int,
        nargs="+",
        default=[16, 32, 64, 64],
        help="DC-AE block widths; compression = 2^(count - 1): 4 widths = 8x, 6 = 32x (DC-AE f32)",
    )
    b.add_argument("--ae-steps", type=int, default=1200, help="autoencoder training steps")
    b.add_argument("--ae-batch", type=int, default=16, help="autoencoder crops per step")
    b.add_argument(
        "--ae-crop",
        type=int,
        default=32,
        help="autoencoder training crop in px: a multiple of the compression, at least 2 latent cells wide",
    )
    b.add_argument("--steps", type=int, default=3000, help="transformer training steps")
    b.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate of both stages")
    b.add_argument("--hidden", type=int, default=128, help="transformer width (attention heads × head size)")
    b.add_argument("--heads", type=int, default=4, help="transformer attention heads")
    b.add_argument("--layers", type=int, default=4, help="transformer blocks")
    b.add_argument(
        "--tokens-per-step", type=int, default=1024, help="latent cells per transformer step (batch × cells)"
    )
    b.add_argument(
        "--latent-sizes",
        type=latent_size,
        nargs="+",
        metavar="HxW",
        help="transformer training sizes in latent cells, drawn uniformly each step (repeat one to weight "
        "it); 8x8 is 64 px at 8x compression, 256 px at 32x (default: 8x8 8x8 8x16 16x8 16x16)",
    )
    b.add_argument("--lora-steps", type=int, default=200, help="temporal LoRA steps (0 = skip)")
    b.add_argument("--max-minutes", type=float, default=0.0, help="cap on the transformer stage (minutes)")
    b.add_argument(
        "--reuse-components",
        metavar="FOLDER",
        help="take tokenizer, text encoder and DC-AE from this SanaPipeline folder (no autoencoder "
        "training; exported as relative symlinks) and train only a new transformer",
    )
    b.add_argument(
        "--position-embedding",
        action="store_true",
        help="give the transformer SANA 2K/4K's sin-cos position embedding (interpolation_scale 1)",
    )
    b.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="bf16",
        help="autocast of the autoencoder and transformer stages (fp32 is several times faster on CPUs "
        "without native bf16)",
    )
    b.add_argument("--crop-prob", type=float, default=0.3, help="share of square batches cut from 2x scenes")
    lo = sub.add_parser(
        "lora",
        help="train the temporal LoRA (tile sequences with the BCLA cache)",
        formatter_class=HelpWithDefaults,
    )
    lo.add_argument("--model", default=str(EMBEDDED_MODEL), help="SanaPipeline folder the LoRA is for")
    lo.add_argument(
        "--out", required=True, metavar="FOLDER", help="where the LoRA file and its log are written"
    )
    lo.add_argument(
        "--work", default="out/temporal-lora-train", help="checkpoints; rerun the command to resume"
    )
    lo.add_argument("--steps", type=int, default=200, help="training steps")
    lo.add_argument("--seed", type=int, default=0, help="seed of the scenes, the LoRA weights and the noise")
    lo.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    lo.add_argument("--rank", type=int, default=32, help="LoRA rank")
    lo.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    lo.add_argument("--batch", type=int, default=4, help="tile sequences per step")
    lo.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock cap in minutes (0 = none)")
    for command in (b, lo):
        command.add_argument(
            "--overwrite-embedded",
            action="store_true",
            help=f"allow --out inside the shipped model ({EMBEDDED_MODEL.name}); without it that is refused",
        )
    return p


def main(argv: list[str] | None = None) -> None:
    p = parser()
    args = p.parse_args(argv)  # before the heavy imports: --help and bad flags answer at once
    if overwrites_shipped_model(args.out) and not args.overwrite_embedded:
        p.error(
            f"--out {args.out} is inside the shipped model {EMBEDDED_MODEL}; give another --out, or add "
            "--overwrite-embedded to replace it."
        )
    if args.cmd == "build":
        if problem := autoencoder_shape_problem(args.ae_channels, args.ae_crop):
            p.error(problem)
        from .embedded_recipe import build

        build(args)
    else:
        train_lora(args)
