"""Command line: a high-resolution canvas from a prompt by causal temporal tiling, no ComfyUI needed.

    python -m temporal_tiling generate --prompt "a navy night sky over a grey metal plate, one moon" \\
        --width 1024 --height 512 --tile 256 --overlap 64 --method compare --out out/

``--method compare`` renders independent tiles, MultiDiffusion and causal BCLA from the same noise,
writes each as PNG plus a labelled strip (``compare.png``) and the seam metrics of each
(``metrics.md`` / ``metrics.json``). The model is the pack's embedded SANA-architecture model
(``temporal_tiling/embedded/seamlab-sana``) unless ``--model`` names another diffusers SANA folder.
Every file is written to a temporary name and renamed into place, so an error or Ctrl-C never
leaves a half-written output. Bad settings end with an argparse-style message naming the flag.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .atomic import write_atomic
from .errors import UserInputError
from .options import (
    BCLA_MODES,
    BCLA_SOURCES,
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

COMPARE = ("independent", "multidiffusion", "causal", "guided")
"""What ``--method compare`` renders, in strip order."""

TRAIN_COMMAND = "python -m temporal_tiling.training build --out temporal_tiling/embedded/seamlab-sana"
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


Loader = Callable[[Path, "torch.device"], LoadedModel]


# --- model ----------------------------------------------------------------------------------------


def load_sana_folder(folder: Path, device: torch.device) -> LoadedModel:
    """A diffusers SANA pipeline folder: transformer/, vae/ (AutoencoderDC), text_encoder/ + tokenizer/."""
    import torch

    from .sana import is_pipeline_folder, load_text_encoder, load_transformer_folder, load_vae_folder
    from .sana.vae import compression, decode_tiled, scaling_factor

    if not is_pipeline_folder(folder):
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

    return LoadedModel(
        transformer.to(device),
        encode_prompt,
        decode,
        compression(vae),
        variant.flow_shift,
        folder.name,
        prompt_notes=text.prompt_notes,
        encode=encode,
    )


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
            raise argparse.ArgumentTypeError(f"must be <= {high:g}, got {text}")
        return value

    return parse


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" only where the help does not already say what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "", False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    g.add_argument("--negative", default="", help="negative prompt (CFG's unconditional branch)")
    g.add_argument("--width", type=_number(int, 1, MAX_SIDE), default=512, help="canvas width in px")
    g.add_argument("--height", type=_number(int, 1, MAX_SIDE), default=256, help="canvas height in px")
    g.add_argument("--tile", type=_number(int, 1), default=128, help="tile width in px (and height)")
    g.add_argument(
        "--tile-height", type=_number(int, 1), default=None, help="tile height in px if not square"
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
        default="grow",
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
    g.add_argument("--steps", type=_number(int, 1), default=20, help="sampling steps")
    g.add_argument(
        "--cfg", type=_number(float, 0, low_open=True), default=4.5, help="classifier-free guidance"
    )
    g.add_argument("--seed", type=_number(int, 0), default=0, help="seed of the one canvas noise")
    g.add_argument("--sampler", choices=SAMPLER_NAMES, default="euler", help="flow sampler")
    g.add_argument(
        "--shift",
        type=_number(float, 0, low_open=True),
        default=None,
        help="flow shift (default: the model's)",
    )
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
        "for guided, which removes the row-to-row steps at large enlargements, 0 for the others)",
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
        help="global context: DemoFusion skip-residual strength (causal, guided; default 0 for causal, "
        f"{DEFAULT_GUIDE_SKIP_RESIDUAL:g} held to the last step for guided)",
    )
    g.add_argument(
        "--context-stats",
        type=_number(float, 0, 1),
        default=None,
        help="global context: CMod/AdaIN statistics strength (causal, guided; default 0 for causal, "
        f"{DEFAULT_GUIDE_STATS} for guided)",
    )
    g.add_argument(
        "--context-seed",
        type=_number(float, 0),
        default=None,
        help="global context: BCLA seed strength from the low-res pass (causal, guided; default 0 for "
        f"causal, {DEFAULT_GUIDE_BCLA_SEED} for guided)",
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
    g.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    g.add_argument(
        "--threads",
        type=_number(int, 1),
        default=None,
        help="CPU threads for torch (default: torch's; 1 is fastest on a busy machine)",
    )
    g.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    g.set_defaults(command_parser=g)
    return parser


_PLAN_FLAGS = (
    (r"^(tile_width|The tile)", "--tile"),
    (r"^tile_height", "--tile-height"),
    (r"^width", "--width"),
    (r"^height", "--height"),
    (r"^overlap", "--overlap"),
    (r"^The plan has \d+ tiles", "--max-tiles"),
)


def _plan(args: argparse.Namespace, compression: int) -> TilePlan:
    from .plan import PlanError, make_plan

    tile_height = args.tile_height or args.tile
    try:
        return make_plan(
            args.width,
            args.height,
            args.tile,
            tile_height,
            args.overlap,
            compression,
            args.order,
            args.seed,
            args.fit,
            args.max_tiles,
        )
    except PlanError as error:
        message = str(error)
        flag = next((f for pattern, f in _PLAN_FLAGS if re.match(pattern, message)), "--tile")
        if flag == "--tile-height" and args.tile_height is None:
            flag = "--tile"
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
    """The low-res pass (the whole scene in one model pass, saved as guide.png) and the context the
    flags ask for; the causal run records the guide's BCLA statistics itself."""
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
    return ContextSettings(
        guide,
        skip_residual=args.context_skip or 0.0,
        stats=args.context_stats or 0.0,
        bcla_seed=args.context_seed or 0.0,
        seed=args.seed,
    )


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
    given = {"skip_residual": args.context_skip, "stats": args.context_stats, "bcla_seed": args.context_seed}
    strengths = {name: value for name, value in given.items() if value is not None}
    return GuideFirst(
        long_side=args.context_size,
        denoise=args.guide_denoise,
        upscale=upscale,
        tile_steps=args.guide_tile_steps,
        max_upscale=args.guide_max_upscale,
        **strengths,
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

    Every setting is checked before the model runs, and the files reach ``args.out`` only when the whole
    run succeeded, so a failure leaves the folder as it was.
    """
    import torch

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise CLIError(f"'{out}' exists and is not a folder", "--out")
    device = _device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.method not in ("causal", "guided", "compare") and _uses_context(args):
        raise CLIError(
            f"global context is only used by the causal and guided methods, not {args.method!r}", "--method"
        )
    model = loader(args.model or EMBEDDED_MODEL, device)
    plan = _plan(args, model.compression)
    methods = list(COMPARE) if args.method == "compare" else [args.method]
    if _uses_context(args) or "guided" in methods:
        _check_context_size(args, plan)
    guide_first = _guide_first(args, model) if "guided" in methods else None
    if args.reference and "full" not in methods:
        methods.append("full")
    _warn(args, model, plan, methods)
    with _staging(out) as stage:
        written = _render(args, model, plan, methods, guide_first, stage)
    for path in written:
        print(out / path.name)
    return [out / path.name for path in written]


def _warn(args: argparse.Namespace, model: LoadedModel, plan: TilePlan, methods: list[str]) -> None:
    """Warnings about what the run will not do as the user may expect; it still runs."""
    for flag, prompt in (("--prompt", args.prompt), ("--negative", args.negative)):
        if prompt.strip() or flag == "--prompt":
            for note in model.prompt_notes(prompt):
                print(f"warning: {flag}: {note}", file=sys.stderr)
    if len(plan) > WARN_TILES:
        passes = len(plan) * args.steps * len(methods)
        print(
            f"warning: {len(plan)} tiles × {args.steps} steps × {len(methods)} method(s) = {passes} tile "
            "passes; this run will be long (larger --tile means fewer tiles)",
            file=sys.stderr,
        )


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A hidden folder in ``out`` that a run writes into; its files move into ``out`` only when the run
    succeeded. On any failure it is removed, and so is ``out`` if the run created it."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".partial-", dir=out))
    try:
        yield stage
        for path in sorted(stage.iterdir()):
            path.replace(out / path.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()


def _render(
    args: argparse.Namespace,
    model: LoadedModel,
    plan: TilePlan,
    methods: list[str],
    guide_first: GuideFirst | None,
    out: Path,
) -> list[Path]:
    """Run every method and write its files into ``out``; returns them (``guide_first``: for guided)."""
    from .bcla import BCLAConfig
    from .border_resample import BorderResample
    from .pipeline import CAUSAL_METHODS, generate
    from .sampling import LockRelease
    from .seam_refine import SeamRefine

    shift = args.shift if args.shift is not None else model.flow_shift
    prompt_embeds = model.encode_prompt(args.prompt)
    negative_embeds = model.encode_prompt(args.negative) if args.cfg != 1.0 else None
    conditioning = {"prompt_embeds": prompt_embeds, "negative_embeds": negative_embeds}
    cache_config = BCLAConfig(mode=args.bcla_mode, strength=args.bcla_strength, source=args.bcla_source)
    border_resample = BorderResample(repeats=args.border_resample) if args.border_resample > 0 else None
    print(
        f"{model.name}: {plan.width_px}×{plan.height_px} px, {plan.cols}×{plan.rows} tiles of "
        f"{plan.tile_width_px}×{plan.tile_height_px} px, {args.steps} steps, {', '.join(methods)}",
        file=sys.stderr,
    )
    context = None
    if "causal" in methods:
        context = _global_context(args, model, plan, conditioning, shift, out)
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
    """``python -m temporal_tiling``; ``loader`` is injectable so tests can run a tiny model."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command: argparse.ArgumentParser = args.command_parser
    try:
        import torch

        with torch.no_grad():
            run_generate(args, loader)
    except CLIError as error:
        command.error(f"argument {error.flag}: {error}" if error.flag else str(error))
    except UserInputError as error:
        command.error(str(error))
    except OSError as error:  # unwritable --out, full disk: say so, no traceback
        command.error(f"cannot write the output: {error}")
    except KeyboardInterrupt:
        print("\ninterrupted: no partial files were written", file=sys.stderr)
        return 130
    return 0
