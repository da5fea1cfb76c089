"""Command line: a high-resolution canvas from a prompt by causal temporal tiling, no ComfyUI needed.

    python -m temporal_tiling generate --prompt "a navy night sky over a grey metal plate, one moon" \\
        --width 1024 --height 512 --tile 256 --overlap 64 --method compare --out out/

``--method compare`` renders independent tiles, MultiDiffusion and causal BCLA from the same noise,
writes each as PNG plus a labelled strip (``compare.png``) and the seam metrics of each
(``metrics.md`` / ``metrics.json``). The model is the pack's embedded SANA-architecture model
(``temporal_tiling/embedded/seamlab-sana``) unless ``--model`` names another diffusers SANA folder.
Every file is written to a temporary name and renamed into place, so an error or Ctrl-C never
leaves a half-written output. Every mistake the user can fix (a flag, a path, a model file) ends the
run with one line, ``python -m temporal_tiling <command>: error: ...`` naming what to change, and exit
status 2, before the model loads wherever it can be known without it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from .atomic import write_atomic
from .errors import UserInputError
from .options import (
    BCLA_MODES,
    BCLA_SOURCES,
    DEFAULT_FIT,
    DEFAULT_GUIDE_BCLA_SEED,
    DEFAULT_GUIDE_DENOISE,
    DEFAULT_GUIDE_HALO,
    DEFAULT_GUIDE_MAX_UPSCALE,
    DEFAULT_GUIDE_SKIP_RESIDUAL,
    DEFAULT_GUIDE_STATS,
    DEFAULT_LOCK_FEATHER,
    DEFAULT_LOCK_MARGIN,
    DEFAULT_LOCK_RELEASE,
    DEFAULT_METHOD,
    DEFAULT_RELEASE_BAND,
    DEFAULT_RESAMPLE_BAND,
    DEFAULT_RESAMPLE_SIGMA,
    DEFAULT_TILE_PROMPT_SIGMA,
    DEFAULT_WORD_SIGMA,
    DEFAULT_WORD_THRESHOLD,
    EMBEDDED_MODEL,
    FITS,
    GUIDE_UPSCALES,
    MAX_SIDE,
    MAX_TILES,
    METHODS,
    ORDERS,
    SAMPLER_NAMES,
    WARN_TILES,
)

if (
    TYPE_CHECKING
):  # torch, diffusers & co. load only when a run starts: --help and argument errors are instant
    import torch
    from PIL import Image
    from torch import Tensor

    from .context import ContextSettings
    from .pipeline import GuideFirst
    from .plan import TilePlan
    from .word_maps import AutoTilePrompts, PromptTokens

COMPARE = ("independent", "multidiffusion", "causal", "guided")
"""What ``--method compare`` renders, in strip order."""

SEED_MAX = 2**64 - 1
"""The largest seed torch.Generator.manual_seed takes (and ComfyUI's seed widget)."""
NOISE_SEEDS = 2**32
"""Distinct noises of torch's CPU generator: it seeds its Mersenne Twister with a seed's low 32 bits."""
TRAIN_COMMAND = (
    "python -m lab.training build --out temporal_tiling/embedded/seamlab-sana --overwrite-embedded"
)
FULL_DECODE_CELLS = 128 * 128
"""Larger latent canvases are decoded tile by tile (DC-AE decoder memory grows with the canvas)."""


class CLIError(UserInputError):
    """A problem the user fixes on the command line; ``flag`` names the option to change."""

    def __init__(self, message: str, flag: str | None = None) -> None:
        super().__init__(message)
        self.flag = flag


@dataclass
class LoadedModel:
    """What the CLI needs from a model, whatever its source (diffusers folder, tests' tiny model)."""

    transformer: torch.nn.Module
    encode_prompt: Callable[[str], Tensor]
    """prompt -> embeds [1, L, D] of its valid tokens only (see ``load_sana_folder``)."""
    decode: Callable[[Tensor], Tensor]
    """latent [B, C, h, w] (the model's scaled space) -> image [B, 3, H, W] in [0, 1]."""
    compression: int
    flow_shift: float = 3.0
    name: str = "model"
    prompt_notes: Callable[[str], list[str]] = lambda prompt: []
    """prompt -> what the model will not see of it (unknown words, tokens cut off)."""
    encode: Callable[[Tensor], Tensor] | None = None
    """image [B, 3, H, W] in [0, 1] -> latent (the model's scaled space); for --guide-upscale pixel."""
    prompt_tokens: Callable[[str], PromptTokens] | None = None
    """prompt -> its text and each token's characters, for ``--tile-prompts auto``; None: not offered."""


Loader = Callable[[Path, "torch.device"], LoadedModel]


# --- model ----------------------------------------------------------------------------------------


def load_sana_folder(folder: Path, device: torch.device) -> LoadedModel:
    """A diffusers SANA pipeline folder: transformer/, vae/ (AutoencoderDC), text_encoder/ + tokenizer/."""
    import diffusers
    import torch
    import transformers

    from .sana import load_text_encoder, load_transformer_folder, load_vae_folder
    from .sana.vae import compression, decode_tiled, scaling_factor
    from .word_maps import PromptTokens

    check_model_folder(folder)
    for library in (diffusers, transformers):  # the run's own bars follow; an error stays one line
        library.utils.logging.disable_progress_bar()
    transformer, variant = load_transformer_folder(folder)
    vae = load_vae_folder(folder).to(device)
    text = load_text_encoder(folder).to(device)
    scale = scaling_factor(vae)

    def encode_prompt(prompt: str) -> Tensor:
        # Right padding: cutting the padded positions is exactly SANA's encoder_attention_mask for one
        # prompt (masked keys get a -10000 bias, i.e. zero weight), and generate() pads cond and uncond
        # of different lengths with a mask of its own.
        embeds, mask = text.encode(prompt)
        return embeds[:, : max(1, int(mask[0].sum()))]

    @torch.no_grad()
    def decode(latent: Tensor) -> Tensor:
        latent = latent.to(device, next(vae.parameters()).dtype) / scale
        if latent.shape[-2] * latent.shape[-1] > FULL_DECODE_CELLS:
            pixels = decode_tiled(vae, latent, tile=64, overlap=8)
        else:
            pixels = vae.decode(latent).sample
        return ((pixels.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode(image: Tensor) -> Tensor:
        pixels = image.to(device, next(vae.parameters()).dtype) * 2 - 1
        return vae.encode(pixels).latent.float() * scale

    def prompt_tokens(prompt: str) -> PromptTokens:
        read, spans = text.token_spans(prompt)
        return PromptTokens(read, tuple(spans))

    return LoadedModel(
        transformer.to(device),
        encode_prompt,
        decode,
        compression(vae),
        variant.flow_shift,
        folder.name,
        prompt_notes=text.prompt_notes,
        encode=encode,
        prompt_tokens=prompt_tokens,
    )


def check_model_folder(folder: Path) -> None:
    """A CLIError naming --model unless ``folder`` looks like a diffusers SANA pipeline folder."""
    from .sana import is_pipeline_folder

    if is_pipeline_folder(folder):
        return
    if folder.resolve() == EMBEDDED_MODEL:
        raise CLIError(
            f"the embedded model is missing (expected a diffusers SANA folder at {folder}); "
            f"train it with `{TRAIN_COMMAND}` or pass --model DIR",
            "--model",
        )
    raise CLIError(
        f"'{folder}' is not a diffusers SANA folder (needs model_index.json and transformer/config.json)",
        "--model",
    )


def folder_compression(folder: Path) -> int | None:
    """Pixels per latent cell of a SANA folder's DC-AE, read from ``vae/config.json`` so that the plan is
    checked before any model loads (diffusers' AutoencoderDC halves the side once per encoder block after
    the first); None without that file (the loader then says what is missing)."""
    from .sana.checkpoint import CheckpointError, read_json

    path = folder / "vae" / "config.json"
    if not path.is_file():
        return None
    try:
        blocks = read_json(path).get("encoder_block_out_channels")
    except CheckpointError as error:
        raise CLIError(str(error), "--model") from None
    return 2 ** (len(blocks) - 1) if isinstance(blocks, list) and blocks else None


# --- output ---------------------------------------------------------------------------------------


def to_pil(image: Tensor) -> Image.Image:
    """First image of a [B, 3, H, W] batch in [0, 1] as an 8-bit RGB PIL image."""
    import numpy as np
    from PIL import Image

    array = (image[0].detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def save_png(image: Image.Image, path: Path) -> None:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def compare_strip(images: dict[str, Image.Image]) -> Image.Image:
    """Labelled panels, stacked along the canvas's short side (wide canvases one above the other)."""
    from PIL import Image, ImageDraw

    first = next(iter(images.values()))
    width, height = first.size
    label = 16
    vertical = width >= height
    count = len(images)
    size = (width, count * (height + label)) if vertical else (count * width, height + label)
    strip = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(strip)
    for i, (name, image) in enumerate(images.items()):
        x, y = (0, i * (height + label)) if vertical else (i * width, 0)
        draw.text((x + 4, y + 2), name, fill="black")
        strip.paste(image, (x, y + label))
    return strip


# --- arguments ------------------------------------------------------------------------------------


def default_threads() -> int:
    """CPU threads when --threads is not given: OMP_NUM_THREADS if set (as torch reads it), else half the
    CPUs this process may use, at least 1. Torch's own default takes every core, and on a machine whose
    cores other jobs also use its threads wait on each other (docs/cli_threads.md)."""
    from_env = os.environ.get("OMP_NUM_THREADS", "")
    if from_env.isdigit() and int(from_env) > 0:
        return int(from_env)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // 2)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``prog: error: message`` and exit 2, without the usage block (the
    message names the flag; ``--help`` has the rest). Subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)}\n")


def _one_line(message: str) -> str:
    return " ".join(line.strip() for line in message.splitlines() if line.strip())


def _number(kind: type, low: float | None = None, high: float | None = None, low_open: bool = False):
    """argparse type: a number in [low, high] (or (low, high] with ``low_open``)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)):
            bound = f"> {low:g}" if low_open else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        if high is not None and value > high:
            shown = high if kind is int else format(high, "g")
            raise argparse.ArgumentTypeError(f"must be <= {shown}, got {text}")
        return value

    return parse


def _folder(text: str) -> Path:
    """argparse type: a folder path; an empty one is refused (it would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder name, got an empty path")
    return Path(text)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help does not already say what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        unset = action.default is None or action.default is False or action.default == ""
        if unset or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m temporal_tiling",
        description="SANA temporal tiling: high-resolution canvases generated tile after tile.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    g = commands.add_parser(
        "generate",
        help="generate a canvas from a prompt (and compare tiling methods)",
        description="Generate a canvas from a prompt with causal temporal tiling or a baseline.",
        formatter_class=_HelpFormatter,
    )
    g.add_argument("--prompt", required=True, help="text prompt")
    g.add_argument(
        "--negative", default="", help="negative prompt (CFG's unconditional branch; default: empty)"
    )
    g.add_argument("--width", type=_number(int, 1, MAX_SIDE), default=512, help="canvas width in px")
    g.add_argument("--height", type=_number(int, 1, MAX_SIDE), default=256, help="canvas height in px")
    g.add_argument("--tile", type=_number(int, 1), default=128, help="tile width in px (and height)")
    g.add_argument(
        "--tile-height",
        type=_number(int, 1),
        default=None,
        help="tile height in px if not square (default: --tile)",
    )
    g.add_argument(
        "--overlap", type=_number(int, 0), default=32, help="least overlap of neighbouring tiles, px"
    )
    g.add_argument(
        "--max-tiles",
        type=_number(int, 1),
        default=MAX_TILES,
        help=f"refuse plans with more tiles (each is a whole sampling run; warns above {WARN_TILES})",
    )
    g.add_argument("--order", choices=ORDERS, default="raster", help="tile generation order")
    g.add_argument(
        "--fit",
        choices=FITS,
        default=DEFAULT_FIT,
        help="grow: overlap-free tile count, tiles enlarged by the overlap; shift: exact tile size",
    )
    g.add_argument(
        "--method",
        choices=(*METHODS, "compare"),
        default=DEFAULT_METHOD,
        help="compare = " + " / ".join(COMPARE),
    )
    g.add_argument(
        "--guide-denoise",
        type=_number(float, 0, 1, low_open=True),
        default=DEFAULT_GUIDE_DENOISE,
        help="guided: share of the schedule the tiles run from the upscaled whole-scene pass",
    )
    g.add_argument(
        "--guide-upscale",
        choices=GUIDE_UPSCALES,
        default=GUIDE_UPSCALES[0],
        help="guided: enlarge the whole-scene pass bilinearly in latent space or bicubic in pixels "
        "(decode, resize, encode)",
    )
    g.add_argument(
        "--guide-tile-steps",
        type=_number(int, 1),
        default=None,
        help="guided: sampler steps of each tile (default: steps × guide denoise, the last part of the "
        "whole-scene pass's own schedule)",
    )
    g.add_argument(
        "--guide-max-upscale",
        type=_number(float, 1, low_open=True),
        default=DEFAULT_GUIDE_MAX_UPSCALE,
        help="guided: progressive chain (DemoFusion): refine intermediate canvases so that no step enlarges "
        "the long side more than this (2: 1× → 2× → 4×; at least the enlargement: one step)",
    )
    _add_sampling_flags(g)
    g.add_argument(
        "--lock-feather",
        type=_number(int, 0),
        default=DEFAULT_LOCK_FEATHER,
        help="latent cells of earlier content a new tile may blend into (causal; 0 = hard lock)",
    )
    g.add_argument(
        "--lock-margin",
        type=_number(int, 0),
        default=DEFAULT_LOCK_MARGIN,
        help="outermost latent cells of each earlier tile that a new tile regenerates instead of locking "
        "(causal; a tile paints its window edge as an image edge)",
    )
    g.add_argument(
        "--lock-release",
        type=_number(float, 0, 1),
        default=DEFAULT_LOCK_RELEASE,
        help="share of the lock released by the last step near its edge (causal; 0 = constant lock)",
    )
    g.add_argument(
        "--release-band",
        type=_number(int, 0),
        default=DEFAULT_RELEASE_BAND,
        help="latent cells of the overlap next to the new area that --lock-release applies to (0 = all)",
    )
    g.add_argument(
        "--seam-refine",
        type=_number(float, 0, 1),
        default=0.0,
        metavar="DENOISE",
        help="once the canvas is done, re-denoise a band across every tile border at this denoise "
        "(any method; 0 = off, 0.15-0.3 repaints only the border)",
    )
    g.add_argument(
        "--halo",
        type=_number(int, 0),
        default=None,
        metavar="CELLS",
        help="sample every tile with a ring of this many neighbouring latent cells that is then discarded, "
        f"so the tile's border is not the model's image border (tiled methods; default: {DEFAULT_GUIDE_HALO} "
        "for guided, which removes the row-to-row steps at large enlargements; 0 in refine, whose guide is "
        "the picture at the output size; 0 for the other methods)",
    )
    g.add_argument(
        "--border-resample",
        type=_number(int, 0),
        default=0,
        metavar="REPEATS",
        help="RePaint-style resampling near the lock edge (causal and guided): at σ ≤ "
        f"{DEFAULT_RESAMPLE_SIGMA}, every model call predicts, composites the known cells, re-noises "
        f"and predicts again this many times, within {DEFAULT_RESAMPLE_BAND} latent cells of the edge "
        "(0 = off)",
    )
    g.add_argument("--bcla-mode", choices=BCLA_MODES, default=BCLA_MODES[0], help="BCLA cache mode (causal)")
    g.add_argument("--bcla-strength", type=_number(float, 0), default=1.0, help="BCLA α")
    g.add_argument(
        "--bcla-source", choices=BCLA_SOURCES, default=BCLA_SOURCES[0], help="BCLA statistics source"
    )
    g.add_argument(
        "--context-skip",
        type=_number(float, 0, 1),
        default=None,
        help="global context: DemoFusion skip-residual strength, the pull of each tile's low band toward "
        f"the low-res pass (causal, guided; default {DEFAULT_GUIDE_SKIP_RESIDUAL:g}, held to the last step, "
        "which keeps causal tiles, and their tile prompts' objects, on the pass's layout; 0 = off)",
    )
    g.add_argument(
        "--context-stats",
        type=_number(float, 0, 1),
        default=None,
        help="global context: CMod/AdaIN statistics strength (causal, guided; default "
        f"{DEFAULT_GUIDE_STATS:g})",
    )
    g.add_argument(
        "--context-seed",
        type=_number(float, 0),
        default=None,
        help="global context: BCLA seed strength from the low-res pass (causal, guided; default "
        f"{DEFAULT_GUIDE_BCLA_SEED:g}). causal uses a global context when any --context-* flag is "
        "above 0, the flags not given at their values here (e.g. --context-seed 1 alone)",
    )
    g.add_argument(
        "--context-size",
        type=_number(int, 1),
        default=None,
        help="long side in px of the low-res pass (default: the tile's long side; causal, guided)",
    )
    g.add_argument(
        "--reference",
        action="store_true",
        help="also render the whole canvas in one pass and score every method against it",
    )
    g.add_argument(
        "--model",
        type=Path,
        default=None,
        help="diffusers SANA folder (default: the embedded seam-lab model)",
    )
    _add_tile_prompt_flags(
        g,
        'JSON words per tile or canvas rectangle, combined with --prompt: {"tiles": {"1": "a sun"}, '
        '"regions": [{"x": 0, "y": 0, "w": 256, "h": 128, "prompt": "a sun"}], "combine": "append"} '
        "(tiles numbered as generated, 1 = first; causal, guided, independent; default: none, every tile "
        "hears --prompt)",
    )
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument(
        "--threads",
        type=_number(int, 1),
        default=default_threads(),
        help="CPU threads for torch (default here: %(default)s = OMP_NUM_THREADS if set, else half the CPUs "
        "this process may use; torch's own choice, every core, made the quick start 6× slower on a "
        "busy 2-core machine: docs/cli_threads.md)",
    )
    g.add_argument("--out", type=_folder, required=True, help="output folder (created if missing)")
    g.set_defaults(command_parser=g, run=run_generate)
    _add_refine(commands)
    return parser


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    """The sampler's flags, the same for ``generate`` and ``refine``."""
    parser.add_argument(
        "--steps", type=_number(int, 1), default=20, help="sampling steps of the whole schedule"
    )
    parser.add_argument(
        "--cfg", type=_number(float, 0, low_open=True), default=4.5, help="classifier-free guidance"
    )
    parser.add_argument(
        "--seed",
        type=_number(int, 0, SEED_MAX),
        default=0,
        help=f"seed of the one canvas noise, 0 to {SEED_MAX} like ComfyUI's (torch's CPU generator keeps "
        f"the low 32 bits: seeds that differ by a multiple of {NOISE_SEEDS} draw the same noise)",
    )
    parser.add_argument("--sampler", choices=SAMPLER_NAMES, default="euler", help="flow sampler")
    parser.add_argument(
        "--shift",
        type=_number(float, 0, low_open=True),
        default=None,
        help="flow shift (default: the model's)",
    )


def _tile_prompts_source(text: str) -> Path | str:
    """``--tile-prompts``: a file, or ``auto`` (a file named auto: ``./auto``)."""
    from .tile_prompts import AUTOMATIC

    return AUTOMATIC if text == AUTOMATIC else Path(text)


def _add_tile_prompt_flags(parser: argparse.ArgumentParser, file_help: str) -> None:
    """``--tile-prompts`` and its options, the same for ``generate`` and ``refine``."""
    parser.add_argument(
        "--tile-prompts",
        type=_tile_prompts_source,
        default=None,
        metavar="FILE|auto",
        help=f"{file_help}. auto: automatic tile prompts, each tile drops the words of --prompt whose "
        "cross-attention on the whole scene (the guide) lies outside it, and every tile the words "
        "the scene barely attends (an object the guide did not draw) (a diffusers SANA model)",
    )
    parser.add_argument(
        "--word-threshold",
        type=_number(float, 0, 1, low_open=True),
        default=None,
        metavar="T",
        help="--tile-prompts auto: a word's region is where its attention rises T of the way from its "
        "lowest to its peak; a word whose region fits in one tile goes to the tile that paints its peak "
        f"only, the others stay in every tile; higher drops more words (default {DEFAULT_WORD_THRESHOLD}, "
        "docs/tile_prompts.md)",
    )
    parser.add_argument(
        "--word-sigma",
        type=_number(float, 0, 1),
        default=None,
        metavar="S",
        help="--tile-prompts auto: the tile that paints an object hears its words at noise levels σ >= S "
        "(where the layout is placed) and every tile the words all tiles keep below S, so the object's "
        f"tile paints no small copies around it; 0: at every step (default {DEFAULT_WORD_SIGMA:g}, "
        "docs/tile_prompts.md)",
    )
    parser.add_argument(
        "--tile-prompt-sigma",
        type=_number(float, 0, 1),
        default=None,
        metavar="S",
        help="--tile-prompts: a tile hears its own words at noise levels σ >= S (the early steps, which "
        "place objects) and --prompt below (the detail steps, so neighbouring tiles paint what they share "
        f"from the same words); 0: its words at every step (default {DEFAULT_TILE_PROMPT_SIGMA:g}, "
        "docs/tile_prompts.md). With --tile-prompts auto: --word-sigma",
    )


def check_tile_prompt_flags(args: argparse.Namespace) -> None:
    """A CLIError for --word-threshold or --word-sigma without --tile-prompts auto, or --tile-prompt-sigma
    without a --tile-prompts file (before the model loads); then --tile-prompt-sigma's default fills in."""
    from .tile_prompts import AUTOMATIC, check_method

    if args.tile_prompt_sigma is not None and args.tile_prompts is None:
        raise CLIError("is read with --tile-prompts only; add that or drop it", "--tile-prompt-sigma")
    if args.tile_prompt_sigma is not None and args.tile_prompts == AUTOMATIC:
        raise CLIError(
            "is read with a --tile-prompts file only; --tile-prompts auto has its own gate, --word-sigma",
            "--tile-prompt-sigma",
        )
    if args.tile_prompt_sigma is None:
        args.tile_prompt_sigma = DEFAULT_TILE_PROMPT_SIGMA
    for flag, value in (("--word-threshold", args.word_threshold), ("--word-sigma", args.word_sigma)):
        if value is not None and args.tile_prompts != AUTOMATIC:
            raise CLIError("is read by --tile-prompts auto only; add that or drop it", flag)
    if args.tile_prompts == AUTOMATIC:
        check_method(args.method)


def auto_tile_prompts(args: argparse.Namespace, model: LoadedModel) -> AutoTilePrompts | None:
    """``--tile-prompts auto``'s settings for ``model``, printing each tile's words when they are known;
    None without it."""
    from .tile_prompts import AUTOMATIC
    from .word_maps import AutoTilePrompts

    if args.tile_prompts != AUTOMATIC:
        return None
    if model.prompt_tokens is None:
        raise CLIError(f"auto needs a model with a tokenizer; {model.name} has none", "--tile-prompts")

    def report(texts: dict[int, str]) -> None:
        for index, text in texts.items():
            print(f"tile {index + 1} hears: {text}", file=sys.stderr)
        if not texts:
            print("every tile hears the whole prompt", file=sys.stderr)

    threshold = DEFAULT_WORD_THRESHOLD if args.word_threshold is None else args.word_threshold
    sigma = DEFAULT_WORD_SIGMA if args.word_sigma is None else args.word_sigma
    return AutoTilePrompts(
        model.prompt_tokens(args.prompt), model.encode_prompt, threshold, report, sigma=sigma
    )


def _add_refine(commands: argparse._SubParsersAction) -> None:
    """``refine``: the flags of :func:`refine_command.run_refine` (sampling flags as ``generate``'s)."""
    from .refine_command import REFINE_METHODS

    r = commands.add_parser(
        "refine",
        help="refine and enlarge an image (PNG, JPEG, TIFF) tile by tile",
        description="Refine an image at any size: enlarged by --scale, repainted tile after tile from "
        "itself as the guide. Writes refined.png (exactly round(scale × side) px; 16-bit for 16-bit "
        "input; ICC profile and EXIF kept) and metrics.md / metrics.json judged against the input.",
        formatter_class=_HelpFormatter,
    )
    r.add_argument("--image", type=Path, required=True, help="input image: PNG, JPEG or TIFF, 8 or 16 bit")
    r.add_argument(
        "--scale", type=_number(float, 1), default=1.0, help="output size over input size (1 = refine only)"
    )
    r.add_argument("--prompt", required=True, help="text prompt: what the image shows")
    r.add_argument("--negative", default="", help="negative prompt (CFG's unconditional branch)")
    r.add_argument(
        "--denoise",
        type=_number(float, 0, 1, low_open=True),
        default=DEFAULT_GUIDE_DENOISE,
        help="share of the schedule the tiles repaint (low keeps the image, high invents more)",
    )
    r.add_argument(
        "--method",
        choices=REFINE_METHODS,
        default=DEFAULT_METHOD,
        help="guided: causal tiles with BCLA, refined from the image as their guide; the others are "
        "baselines for comparison",
    )
    r.add_argument(
        "--tile",
        type=_number(int, 1),
        default=None,
        help="tile side in px, rounded to the model (default: the model's native size, at least 128)",
    )
    r.add_argument(
        "--overlap",
        type=_number(int, 0),
        default=None,
        help="overlap of neighbouring tiles in px, rounded (default: a quarter of the tile)",
    )
    r.add_argument(
        "--color-correct",
        choices=("input", "none"),
        default="input",
        help="replace the refined image's low frequencies (colour, light) by the input's",
    )
    _add_sampling_flags(r)
    r.add_argument(
        "--max-tiles", type=_number(int, 1), default=MAX_TILES, help="refuse plans with more tiles"
    )
    r.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_false",
        help="skip metrics.md / metrics.json (written by default, after refined.png, which a failure of "
        "the metrics never costs; read region by region, they take a few hundred MB up to 8K and 1.5 GB "
        "at 16K, and 4-5 s per megapixel on one CPU thread)",
    )
    r.add_argument(
        "--model", type=Path, default=None, help="diffusers SANA folder (default: the embedded model)"
    )
    _add_tile_prompt_flags(
        r, "JSON words per tile or rectangle of the output (px), combined with --prompt; as generate's"
    )
    r.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    r.add_argument(
        "--threads",
        type=_number(int, 1),
        default=default_threads(),
        help="CPU threads for torch (default here: %(default)s, as for generate)",
    )
    r.add_argument("--out", type=_folder, required=True, help="output folder (created if missing)")
    r.set_defaults(command_parser=r, run=run_refine)


def run_refine(args: argparse.Namespace, loader: Loader) -> None:
    """``refine``: the command's own module does the work, with this CLI's loader, progress bar and
    all-or-nothing output folder."""
    from .refine_command import run_refine as refine

    check_tile_prompt_flags(args)

    def load() -> LoadedModel:
        return loader(args.model or EMBEDDED_MODEL, _device(args.device))

    refine(args, load, _Progress, _staging, lambda model: auto_tile_prompts(args, model))


_PLAN_FLAGS = (
    (r"^(tile_width|The tile)", "--tile"),
    (r"^tile_height", "--tile-height"),
    (r"^width", "--width"),
    (r"^height", "--height"),
    (r"^overlap", "--overlap"),
    (r"^The plan has \d+ tiles", "--max-tiles"),
)
"""Which flag a PlanError is about, from how its message starts (make_plan names its parameter first)."""


def _plan(args: argparse.Namespace, compression: int) -> TilePlan:
    """The tile plan the flags ask for, or a CLIError naming the flag to change and only flag names."""
    from .plan import PlanError, make_plan

    tile_height = args.tile_height or args.tile
    try:
        return make_plan(
            width_px=args.width,
            height_px=args.height,
            tile_width_px=args.tile,
            tile_height_px=tile_height,
            overlap_px=args.overlap,
            compression=compression,
            order=args.order,
            seed=args.seed,
            fit=args.fit,
            max_tiles=args.max_tiles,
        )
    except PlanError as error:
        tile_height_flag = "--tile" if args.tile_height is None else "--tile-height"
        message = str(error)
        flag = next((f for pattern, f in _PLAN_FLAGS if re.match(pattern, message)), "--tile")
        if flag == "--tile-height":
            flag = tile_height_flag
        # make_plan's messages use its parameter names; a CLI user knows the flags.
        names = {"tile_width": "--tile", "tile_height": tile_height_flag, "max_tiles": "--max-tiles"}
        for name, replacement in names.items():
            message = re.sub(rf"\b{name}\b", replacement, message)
        raise CLIError(message, flag) from None


# --- the job --------------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar over tile-steps, fed by ``generate``'s ``progress(done, total)``."""

    def __init__(self, label: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(desc=f"{label:>14}", unit="step", file=sys.stderr, dynamic_ncols=True, leave=True)

    def __call__(self, done: int, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _global_context(
    args: argparse.Namespace, model: LoadedModel, plan: TilePlan, conditioning: dict, shift: float, out: Path
) -> ContextSettings | None:
    """The low-res pass (the whole scene in one model pass of ``conditioning``, saved as guide.png) and the
    context the flags ask for, the others at their defaults; the causal run records the guide's BCLA
    statistics itself."""
    from .context import ContextSettings
    from .pipeline import generate, guide_plan

    if not _uses_context(args):
        return None
    low = guide_plan(plan, args.context_size)
    bar = _Progress("low-res guide")
    try:
        guide = generate(
            low, model.transformer, method="full", progress=bar, **conditioning, **_sampling(args, shift)
        ).canvas
    finally:
        bar.close()
    save_png(to_pil(model.decode(guide)), out / "guide.png")
    return ContextSettings(guide, seed=args.seed, **_context_strengths(args))


def _context_strengths(args: argparse.Namespace) -> dict[str, float]:
    """The --context-* strengths the user gave (the others keep the engine's defaults)."""
    given = {"skip_residual": args.context_skip, "stats": args.context_stats, "bcla_seed": args.context_seed}
    return {name: value for name, value in given.items() if value is not None}


def _uses_context(args: argparse.Namespace) -> bool:
    return bool(args.context_skip or args.context_stats or args.context_seed)


def _check_context_size(args: argparse.Namespace, plan: TilePlan) -> None:
    """A CLIError naming --context-size if the low-res pass (``guide_plan``) cannot be made."""
    from .context import ContextError
    from .pipeline import guide_plan

    try:
        guide_plan(plan, args.context_size)
    except ContextError as error:
        raise CLIError(str(error), "--context-size") from None


def _guide_first(args: argparse.Namespace, model: LoadedModel) -> GuideFirst:
    from .pipeline import GuideFirst, pixel_upscale

    upscale = None
    if args.guide_upscale == "pixel":
        if model.encode is None:
            raise CLIError(
                f"{model.name} has no image encoder; use --guide-upscale latent", "--guide-upscale"
            )
        upscale = pixel_upscale(model.decode, model.encode, model.compression)
    return GuideFirst(
        long_side=args.context_size,
        denoise=args.guide_denoise,
        upscale=upscale,
        tile_steps=args.guide_tile_steps,
        max_upscale=args.guide_max_upscale,
        **_context_strengths(args),
    )


def _sampling(args: argparse.Namespace, shift: float) -> dict:
    return {"steps": args.steps, "cfg": args.cfg, "sampler": args.sampler, "shift": shift, "seed": args.seed}


def _summary(reports: dict, seconds: dict[str, float]) -> str:
    def fmt(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    lines = [
        "| method | seam ratio mean / worst (× floor) | ΔE − floor | drift ΔE − floor | line jump | verdict "
        "| overlap PSNR dB | PSNR vs full dB | time s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in reports.items():
        excess = r.excess()
        lines.append(
            f"| {name} | {r.gradient_ratio_mean:.3f} / {r.gradient_ratio_worst:.3f} "
            f"(×{excess['gradient_ratio']:.2f}) | {excess['delta_e']:+.2f} | "
            f"{excess['drift_delta_e']:+.2f} | {r.line_jump:.2f} | "
            f"{'pass' if r.meets_targets() else 'seams'} | {fmt(r.overlap_psnr_mean, '.2f')} | "
            f"{fmt(r.psnr, '.2f')} | {seconds[name]:.1f} |"
        )
    return "\n".join(lines)


def _device(name: str | None) -> torch.device:
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"unknown torch device {name!r}; use cpu, cuda or cuda:N", "--device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("CUDA is not available on this machine; use --device cpu", "--device")
    return device


def run_generate(args: argparse.Namespace, loader: Loader) -> list[Path]:
    """Render every requested method into ``args.out``; returns the files written.

    Every setting, path and the plan are checked before the model loads (the plan with the compression
    that ``vae/config.json`` states, again with the loaded model's), and the files reach ``args.out`` only
    when the whole run succeeded, so a failure leaves the folder as it was.
    """
    import torch

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CLIError(f"'{out}' exists and is not a folder", "--out")
    device = _device(args.device)
    torch.set_num_threads(args.threads)
    if args.method not in ("causal", "guided", "compare") and _uses_context(args):
        raise CLIError(
            f"global context is only used by the causal and guided methods, not {args.method!r}", "--method"
        )
    from .tile_prompts import AUTOMATIC, read_tile_prompts, tile_texts, whole_scene_text

    methods = list(COMPARE) if args.method == "compare" else [args.method]
    check_tile_prompt_flags(args)
    manual = args.tile_prompts not in (None, AUTOMATIC)
    prompts = read_tile_prompts(args.tile_prompts, args.method) if manual else None
    folder = args.model or EMBEDDED_MODEL
    check_model_folder(folder)
    compression = folder_compression(folder)
    if compression is not None:
        _check_plan(args, methods, compression)
    with _staging(out) as stage:  # made first: an unwritable --out is found before the model loads
        try:
            model = loader(folder, device)
        except CLIError:
            raise
        except UserInputError as error:  # a broken model file: the CLI's answer is another --model
            raise CLIError(str(error), "--model") from None
        plan = _check_plan(args, methods, model.compression)
        texts = tile_texts(plan, prompts, args.prompt) if prompts else {}
        guide_text = whole_scene_text(prompts, args.prompt) if prompts else None
        guide_first = _guide_first(args, model) if "guided" in methods else None
        if args.reference and "full" not in methods:
            methods.append("full")
        _warn(args, model, plan, methods)
        written = _render(args, model, plan, methods, guide_first, stage, texts, guide_text)
    for path in written:
        print(out / path.name)
    return [out / path.name for path in written]


def _check_plan(args: argparse.Namespace, methods: list[str], compression: int) -> TilePlan:
    """The plan, and the low-res pass's plan where one runs: a CLIError naming the flag if either fails."""
    plan = _plan(args, compression)
    if _uses_context(args) or "guided" in methods:
        _check_context_size(args, plan)
    return plan


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _warn(args: argparse.Namespace, model: LoadedModel, plan: TilePlan, methods: list[str]) -> None:
    """Warnings about what the run will not do as the user may expect; it still runs."""
    for flag, prompt in (("--prompt", args.prompt), ("--negative", args.negative)):
        if prompt.strip() or flag == "--prompt":
            for note in model.prompt_notes(prompt):
                print(f"warning: {flag}: {note}", file=sys.stderr)
    if args.seed >= NOISE_SEEDS:
        print(
            f"warning: --seed: {args.seed} draws the same canvas noise as --seed {args.seed % NOISE_SEEDS} "
            "(torch's CPU generator keeps a seed's low 32 bits)",
            file=sys.stderr,
        )
    if args.tile_prompts is not None and "causal" in methods and not _uses_context(args):
        print(
            "warning: --tile-prompts: causal without a global context has nothing that keeps its tiles on "
            "one layout (bands at the tile rows); add --context-seed 1 (a low-res pass that hears every "
            "tile's words, with the held pull) or use --method guided",
            file=sys.stderr,
        )
    if len(plan) > WARN_TILES:
        passes = len(plan) * args.steps * len(methods)
        print(
            f"warning: {_plural(len(plan), 'tile')} × {_plural(args.steps, 'step')} × "
            f"{_plural(len(methods), 'method')} = {passes} tile passes; this run will be long "
            "(larger --tile means fewer tiles)",
            file=sys.stderr,
        )


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A hidden folder in ``out`` that a run writes into; its files move into ``out`` only when the run
    succeeded. On any failure it is removed, and so is ``out`` if the run created it. A folder that
    cannot be written (read-only, full disk) is a CLIError naming ``out``, never the hidden folder."""
    created = not out.exists()
    stage = None
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
        yield stage
        for path in sorted(stage.iterdir()):
            path.replace(out / path.name)
    except OSError as error:
        if error.filename is not None and not Path(error.filename).resolve().is_relative_to(out.resolve()):
            raise
        raise CLIError(f"cannot write into '{out}': {error.strerror or error}", "--out") from None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _render(
    args: argparse.Namespace,
    model: LoadedModel,
    plan: TilePlan,
    methods: list[str],
    guide_first: GuideFirst | None,
    out: Path,
    tile_texts: dict[int, str] | None = None,
    guide_text: str | None = None,
) -> list[Path]:
    """Run every method and write its files into ``out``; returns them (``guide_first``: for guided;
    ``tile_texts``: the prompt of each tile with words of its own, ``guide_text``: then the whole-scene
    pass's)."""
    from .bcla import BCLAConfig
    from .border_resample import BorderResample
    from .pipeline import CAUSAL_METHODS, generate
    from .sampling import LockRelease
    from .seam_refine import SeamRefine
    from .tile_prompts import encode_tile_prompts

    shift = args.shift if args.shift is not None else model.flow_shift
    prompt_embeds = model.encode_prompt(args.prompt)
    negative_embeds = model.encode_prompt(args.negative) if args.cfg != 1.0 else None
    conditioning = {"prompt_embeds": prompt_embeds, "negative_embeds": negative_embeds}
    tile_prompts = encode_tile_prompts(tile_texts or {}, model.encode_prompt) or None
    automatic = auto_tile_prompts(args, model)
    guide_prompt = None if guide_text is None else model.encode_prompt(guide_text)
    cache_config = BCLAConfig(mode=args.bcla_mode, strength=args.bcla_strength, source=args.bcla_source)
    border_resample = BorderResample(repeats=args.border_resample) if args.border_resample > 0 else None
    print(
        f"{model.name}: {plan.width_px}×{plan.height_px} px, {plan.cols}×{plan.rows} tiles of "
        f"{plan.tile_width_px}×{plan.tile_height_px} px, {args.steps} steps, {', '.join(methods)}",
        file=sys.stderr,
    )
    context = None
    if "causal" in methods:  # its low-res pass, like guided's, hears every tile's words
        scene = conditioning if guide_prompt is None else conditioning | {"prompt_embeds": guide_prompt}
        context = _global_context(args, model, plan, scene, shift, out)
    written = [out / "guide.png"] if context is not None else []
    images: dict[str, Tensor] = {}
    tiles: dict[str, Tensor] = {}
    seconds: dict[str, float] = {}
    for method in methods:
        bar = _Progress(method)
        start = time.perf_counter()
        try:
            result = generate(
                plan,
                model.transformer,
                method=method,
                cache_config=cache_config if method in CAUSAL_METHODS else None,
                context=context if method == "causal" else None,
                guide_first=guide_first if method == "guided" else None,
                lock_feather=args.lock_feather,
                lock_margin=args.lock_margin,
                lock_release=LockRelease(args.lock_release, args.release_band),
                seam_refine=SeamRefine(args.seam_refine) if args.seam_refine > 0 else None,
                halo=args.halo,
                border_resample=border_resample if method in CAUSAL_METHODS else None,
                tile_prompts=tile_prompts if method != "full" else None,
                auto_tile_prompts=automatic if method != "full" else None,
                tile_prompt_sigma=args.tile_prompt_sigma,
                guide_prompt=guide_prompt if method == "guided" else None,
                progress=bar,
                **conditioning,
                **_sampling(args, shift),
            )
        finally:
            bar.close()
        images[method] = model.decode(result.canvas)
        if method != "full":
            tiles[method] = model.decode(result.tiles)
        seconds[method] = time.perf_counter() - start
        if result.guide is not None and out / "guide.png" not in written:
            save_png(to_pil(model.decode(result.guide)), out / "guide.png")
            written.append(out / "guide.png")
        path = out / f"{method}.png"
        save_png(to_pil(images[method]), path)
        written.append(path)
    if len(methods) > 1:
        shown = {m: to_pil(images[m]) for m in methods}
        save_png(compare_strip(shown), out / "compare.png")
        written.append(out / "compare.png")
    return written + _write_metrics(plan, images, tiles, seconds, out)


def _write_metrics(
    plan: TilePlan, images: dict[str, Tensor], tiles: dict[str, Tensor], seconds: dict[str, float], out: Path
) -> list[Path]:
    """Seam metrics of every tiled method (vs the full pass when there is one), if metrics exist."""
    try:
        from .metrics import seam_report
    except ImportError:
        return []
    reference = images.get("full")
    reports = {
        m: seam_report(images[m], plan, tiles=tiles[m], reference=reference) for m in images if m != "full"
    }
    if not reports:
        return []
    table = _summary(reports, seconds)
    details = "\n\n".join(f"## {m}\n\n{r.to_markdown()}" for m, r in reports.items())
    write_atomic(out / "metrics.md", f"# Seam metrics\n\n{table}\n\n{details}\n".encode())
    payload = {m: {**r.to_dict(), "seconds": seconds[m]} for m, r in reports.items()}
    write_atomic(out / "metrics.json", json.dumps(payload, indent=2).encode())
    print(table)
    return [out / "metrics.md", out / "metrics.json"]


# --- entry point ----------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, *, loader: Loader = load_sana_folder) -> int:
    """``python -m temporal_tiling``; ``loader`` is injectable so tests can run a tiny model.

    The one place that turns a user's mistake into ``prog COMMAND: error: message`` and exit 2, for every
    subcommand (each sets ``run`` and ``command_parser`` with ``set_defaults``): argparse's own errors,
    any ``UserInputError`` the engine or the loaders raise (a ``CLIError`` also names its flag), and an
    ``OSError`` (a file that cannot be read or written). No traceback, no usage block.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    command: argparse.ArgumentParser = args.command_parser
    try:
        import torch

        with torch.no_grad():
            args.run(args, loader)
    except UserInputError as error:
        flag = getattr(error, "flag", None)
        command.error(f"argument {flag}: {error}" if flag else str(error))
    except OSError as error:
        command.error(str(error))
    except KeyboardInterrupt:
        print("\ninterrupted: no partial files were written", file=sys.stderr)
        return 130
    return 0
