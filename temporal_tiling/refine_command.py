"""``python -m temporal_tiling refine``: an image file refined (and enlarged) by the run path.

    python -m temporal_tiling refine --image photo.jpg --scale 2 --prompt "a harbour at dusk" --out out/

writes ``out/refined.png`` at exactly round(scale × width) × round(scale × height) px (16-bit for a
16-bit input, with the input's ICC profile and EXIF), and ``metrics.md`` / ``metrics.json``: the
Quality Metrics of the refined image, judged against the input enlarged bicubically to the same size.
Each file reaches ``out`` whole or not at all (Ctrl-C leaves nothing half-written): refined.png as soon
as the refine is done, then metrics.md and metrics.json together; if the metrics fail, a warning says
why and refined.png stays.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import write_atomic

if TYPE_CHECKING:
    import numpy as np

    from .metrics import SeamReport
    from .plan import TilePlan
    from .word_maps import AutoTilePrompts

REFINE_METHODS = ("guided", "causal", "independent", "multidiffusion")
"""``--method``: the default (tiles refined from the enlarged image as their guide) and baselines."""
MIN_TILE = 128
"""Smallest default tile in px: the model's native size (1024 px for SANA 1024px) unless smaller."""


def default_tile(transformer: Any, compression: int) -> int:
    """The refine's tile side in px when none is given: the model's native size, at least MIN_TILE."""
    from .position import patch_size

    native = getattr(transformer.config, "sample_size", 0) * patch_size(transformer) * compression
    return max(MIN_TILE, native)


def too_many_tiles(sizes_of: Callable[[int], dict[str, int]], tile: int, max_tiles: int, token: int) -> str:
    """The refusal of a plan above ``--max-tiles``, with the two ways out: the ceiling that runs it as
    asked, and the smallest ``--tile`` (in whole tokens) that fits under it. ``sizes_of(side)``: the
    plan's sizes for tiles of ``side`` px (:func:`refine.refine_plan_sizes`); the plans are counted,
    not built."""
    from .plan import check_plan
    from .refine import REFINE_FIT

    def count(sizes: dict[str, int]) -> tuple[int, int, int]:
        rows, cols = check_plan(**sizes, fit=REFINE_FIT, max_tiles=1 << 62)
        return rows, cols, sizes["tile_width_px"]

    asked_sizes = sizes_of(tile)
    rows, cols, asked = count(asked_sizes)
    canvas = max(asked_sizes["width_px"], asked_sizes["height_px"])
    sides = (count(sizes_of(side)) for side in range(tile + token, canvas + token, token))
    fitting = next(((r * c, side) for r, c, side in sides if r * c <= max_tiles), None)
    larger = f", or --tile {fitting[1]} ({fitting[0]} tiles)" if fitting else ""
    return (
        f"argument --max-tiles: the image in {asked} px tiles is {rows * cols} tiles ({cols}×{rows}), more "
        f"than --max-tiles {max_tiles}: every tile is a full sampling run. Pass --max-tiles {rows * cols} to "
        f"run it so{larger}."
    )


def refine_settings(method: str, denoise: float, steps: int) -> tuple[dict[str, Any], int]:
    """The ``RunSettings`` fields and the sampler steps of a refine with ``method``.

    ``guided`` tiles run the last ``denoise`` share of a ``steps``-step schedule (GuideFirst) from the
    image as their guide; the img2img baselines run ``denoise`` from the image with steps × denoise
    steps, so every method makes the same number of model calls per tile."""
    from .bcla import BCLAConfig
    from .pipeline import CAUSAL_METHODS, GuideFirst

    guided = method == "guided"
    settings = {
        "method": method,
        "cache_config": BCLAConfig() if method in CAUSAL_METHODS else None,
        "guide_first": GuideFirst(denoise=denoise) if guided else None,
        "denoise": 1.0 if guided else denoise,
    }
    return settings, steps if guided else max(1, round(steps * denoise))


def run_refine(
    args: argparse.Namespace,
    load_model: Callable[[], Any],
    progress: Callable[[str], Any],
    staging: Callable[[Path], AbstractContextManager[Path]],
    automatic: Callable[[Any], AutoTilePrompts | None] = lambda model: None,
) -> list[Path]:
    """Refine ``args.image`` into ``args.out``; returns the files written.

    The command line supplies the model (``load_model()``: a ``cli.LoadedModel`` on the chosen
    device), its progress bar (``progress(label)``: ``bar(done, total)``, ``bar.close()``) and its
    all-or-nothing output folder (``staging(out)``), as for ``generate``, and ``--tile-prompts auto``'s
    settings for the loaded model (``automatic(model)``: None without it)."""
    import torch

    from .image_io import Picture, read_image, write_png
    from .pipeline import generate
    from .plan import PlanError
    from .position import patch_size
    from .refine import Autoencoder, RefineError, output_size, refine_image, refine_plan, refine_plan_sizes
    from .tile_prompts import AUTOMATIC, encode_tile_prompts, read_tile_prompts, tile_texts

    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise RefineError(f"argument --out: '{out}' exists and is not a folder")
    manual = args.tile_prompts not in (None, AUTOMATIC)
    prompts = read_tile_prompts(args.tile_prompts, args.method) if manual else None
    picture = read_image(args.image)
    height, width = output_size(*picture.pixels.shape[:2], args.scale)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load_model()
    if model.encode is None:
        raise RefineError(f"argument --model: {model.name} has no image encoder to read the image with")
    patch = patch_size(model.transformer)
    tile = args.tile or default_tile(model.transformer, model.compression)

    def overlap_of(side: int) -> int:
        return side // 4 if args.overlap is None else args.overlap

    try:
        plan = refine_plan(
            height,
            width,
            tile,
            overlap_of(tile),
            model.compression,
            patch,
            seed=args.seed,
            max_tiles=args.max_tiles,
        )
    except PlanError as error:
        if "max_tiles" not in str(error):
            raise RefineError(f"argument --tile: {error}") from None

        def sizes_of(side: int) -> dict[str, int]:
            return refine_plan_sizes(height, width, side, overlap_of(side), model.compression, patch)

        raise RefineError(too_many_tiles(sizes_of, tile, args.max_tiles, model.compression * patch)) from None
    texts = tile_texts(plan, prompts, args.prompt) if prompts else {}
    method_settings, steps = refine_settings(args.method, args.denoise, args.steps)
    method_settings["tile_prompts"] = encode_tile_prompts(texts, model.encode_prompt) or None
    method_settings["auto_tile_prompts"] = automatic(model)
    method_settings["tile_prompt_sigma"] = args.tile_prompt_sigma
    prompt_embeds = model.encode_prompt(args.prompt)
    negative_embeds = model.encode_prompt(args.negative) if args.cfg != 1.0 else None
    shift = args.shift if args.shift is not None else model.flow_shift
    print(
        f"{model.name}: {args.image.name} {picture.pixels.shape[1]}×{picture.pixels.shape[0]} px → "
        f"{width}×{height} px, {plan.cols}×{plan.rows} tiles of {plan.tile_width_px}×{plan.tile_height_px} "
        f"px, {args.method}, denoise {args.denoise}",
        file=sys.stderr,
    )
    bar = progress(args.method)

    def sample(latent: torch.Tensor) -> torch.Tensor:
        return generate(
            plan,
            model.transformer,
            prompt_embeds,
            negative_embeds,
            steps=steps,
            cfg=args.cfg,
            sampler=args.sampler,
            shift=shift,
            latent=latent.to(next(model.transformer.parameters()).device),
            progress=bar,
            seed=args.seed,
            canvas_only=True,  # no per-tile latents (and no copy of the encoded image but for guided)
            **method_settings,
        ).canvas

    start = time.perf_counter()
    try:
        autoencoder = Autoencoder(model.encode, model.decode, model.compression)
        pixels = refine_image(
            picture.pixels,
            (height, width),
            plan,
            autoencoder,
            sample,
            color_correct=args.color_correct == "input",
        )
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    with staging(out) as stage:  # the image lands on its own first: the metrics can never cost it
        write_png(stage / "refined.png", Picture(pixels, picture.icc_profile, picture.exif))
    paths = [out / "refined.png"]
    if args.metrics:
        write = partial(_write_metrics, picture.pixels, pixels, plan, args, seconds)
        paths += _metrics_files(write, out, staging)
    for path in paths:
        print(path)
    return paths


def _metrics_files(
    write: Callable[[Path], None], out: Path, staging: Callable[[Path], AbstractContextManager[Path]]
) -> list[Path]:
    """metrics.md and metrics.json (``write(folder)``) in ``out``, both or neither (their own staging); a
    failure (memory, a bug, a full disk) is a one-line warning, since refined.png is already written."""
    try:
        with staging(out) as stage:
            write(stage)
    except Exception as error:
        reason = next(iter(str(error).strip().splitlines()), "")
        print(
            f"warning: metrics.md / metrics.json not written ({type(error).__name__}"
            f"{': ' + reason if reason else ''}); {out / 'refined.png'} is complete",
            file=sys.stderr,
        )
        return []
    return [out / "metrics.md", out / "metrics.json"]


def _write_metrics(
    source: np.ndarray,
    refined: np.ndarray,
    plan: TilePlan,
    args: argparse.Namespace,
    seconds: float,
    out: Path,
) -> None:
    """The Quality Metrics (:func:`refine_report`) written as metrics.md and metrics.json."""
    height, width = refined.shape[:2]
    report = refine_report(source, refined, plan)
    about = (
        f"{args.image.name} ({source.shape[1]}×{source.shape[0]} px) refined at ×{args.scale:g} to "
        f"{width}×{height} px with {args.method}, denoise {args.denoise}, {args.steps} steps, seed "
        f"{args.seed}, in {seconds:.1f} s. The reference is the input enlarged bicubically to the same size."
    )
    write_atomic(out / "metrics.md", f"# Refine metrics\n\n{about}\n\n{report.to_markdown()}\n".encode())
    payload = {
        "image": str(args.image),
        "input_size": [source.shape[1], source.shape[0]],
        "output_size": [width, height],
        "method": args.method,
        "denoise": args.denoise,
        "seconds": seconds,
        **report.to_dict(),
    }
    write_atomic(out / "metrics.json", json.dumps(payload, indent=2).encode())


def refine_report(
    source: np.ndarray, refined: np.ndarray, plan: TilePlan, *, ssim: bool = True
) -> SeamReport:
    """Quality Metrics of ``refined`` [H, W, 3] against ``source`` enlarged bicubically to its size (the
    plan's padding is the image mirrored, as the run saw it); ``ssim=False`` skips the slowest part.

    Both are read region by region (:class:`metrics.Pixels`): neither the refined image as floats nor
    the enlarged reference is ever made whole, so the metrics' memory does not grow with the image."""
    from .metrics import Pixels, seam_report
    from .refine import enlarged

    height, width = refined.shape[:2]
    image = Pixels(_mirrored(refined), 1, plan.height_px, plan.width_px)
    reference = Pixels(enlarged(source, height, width), 1, plan.height_px, plan.width_px, name="reference")
    return seam_report(image, plan, reference=reference, ssim=ssim)


def _mirrored(image: np.ndarray) -> Callable[[int, int, int, int], Any]:
    """A pixel reader of ``image`` [H, W, 3] (unsigned integers) as floats in [0, 1] [1, 3, h, w],
    mirrored beyond its bottom and right edges (as ``np.pad(mode="symmetric")``)."""
    import numpy as np
    import torch

    peak = float(np.iinfo(image.dtype).max)

    def mirror(start: int, stop: int, size: int) -> np.ndarray:
        index = np.arange(start, stop) % (2 * size)
        return np.where(index < size, index, 2 * size - 1 - index)

    def region(top: int, bottom: int, left: int, right: int) -> torch.Tensor:
        if bottom <= image.shape[0] and right <= image.shape[1]:
            crop = image[top:bottom, left:right]  # inside the image: a view, no index arrays
        else:
            rows, cols = mirror(top, bottom, image.shape[0]), mirror(left, right, image.shape[1])
            crop = image[rows[:, None], cols[None, :]]
        pixels = torch.from_numpy(crop.astype(np.float32) / peak)
        return pixels.permute(2, 0, 1)[None]

    return region
