"""Where the worst prompts' line jump peaked at 4×-8×: crops of the native render and the guided default.

Run from the repository root after ``bench.bench_enlargement --images DIR`` at 1024 px (the embedded
model into ``--images``, seamlab-sana-pe into ``--pe-images``): ``python -m bench.enlargement_lines_figure
--images DIR --pe-images DIR2``. Writes ``docs/enlargement_lines.png``: each case's crop zoomed 3×, the
native render left, the guided default right, a red tick in the margin at the line the former line jump
(the mean |ΔL*| along each boundary, 4 px border) called the worst, a green tick at the current one's
(the median along it, the outermost latent cell left out). The labelled night staircase of the verdict
tests closes it: there the former measure pointed at the moon, the current one at a tile row's step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from bench.bench_guide_first import ROOT
from temporal_tiling.metrics import line_jump

ZOOM = 3
MARGIN = 10
STAIRCASE = ROOT / "tests" / "unit" / "verdict_cases" / "guided_1024_night_staircase.png"
DEFAULT = "halo_4_+_low-band_pull"


def load(path: Path) -> Image.Image:
    with Image.open(path) as png:
        return png.convert("RGB")


def as_tensor(rgb: Image.Image) -> torch.Tensor:
    pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
    return pixels.view(rgb.height, rgb.width, 3).permute(2, 0, 1)[None].float() / 255


def crop_panel(rgb: Image.Image, box: tuple[int, int, int, int], former: tuple[str, int]) -> Image.Image:
    """``box`` of ``rgb`` zoomed, with ticks in a margin: red at ``former`` (axis, px), green at the
    current line jump's worst boundary when it falls inside the box."""
    x0, y0, x1, y1 = box
    zoomed = rgb.crop(box).resize(((x1 - x0) * ZOOM, (y1 - y0) * ZOOM), Image.NEAREST)
    panel = Image.new("RGB", (zoomed.width + MARGIN, zoomed.height + MARGIN), "white")
    panel.paste(zoomed, (MARGIN, MARGIN))
    draw = ImageDraw.Draw(panel)
    now = line_jump(as_tensor(rgb))
    for colour, (axis, at) in (("red", former), ("green", (now.axis, now.position))):
        if axis == "horizontal" and y0 <= at < y1:
            y = MARGIN + (at - y0) * ZOOM
            draw.line((0, y, MARGIN - 2, y), fill=colour, width=3)
        if axis == "vertical" and x0 <= at < x1:
            x = MARGIN + (at - x0) * ZOOM
            draw.line((x, 0, x, MARGIN - 2), fill=colour, width=3)
    return panel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="the embedded model's 1024 px canvases")
    parser.add_argument("--pe-images", type=Path, required=True, help="seamlab-sana-pe's 1024 px canvases")
    args = parser.parse_args()
    staircase = load(STAIRCASE)
    # (title, left image, right image, box, the former line jump's worst boundary in the right image)
    cases = [
        (
            "embedded, cyan sky with a sun, 6.4x, bottom edge: the decoder's last-cell strip, native's own "
            "worst line too (former: y 507, 1.30x native's)",
            load(args.images / "1_native.png"),
            load(args.images / f"1_{DEFAULT}.png"),
            (0, 448, 256, 512),
            ("horizontal", 507),
        ),
        (
            "embedded, night sky with a moon, 6.4x: the moon's left rim from the whole-scene pass, drawn "
            "sharp (former: x 298, 1.19x native's, which has no moon)",
            load(args.images / "0_native.png"),
            load(args.images / f"0_{DEFAULT}.png"),
            (200, 0, 456, 64),
            ("vertical", 298),
        ),
        (
            "seamlab-sana-pe, cyan sky with a sun, 6.4x, top edge: the decoder's first-cell strip "
            "(former: y 4, 1.21x native's, whose own worst is y 5)",
            load(args.pe_images / "1_native.png"),
            load(args.pe_images / f"1_{DEFAULT}.png"),
            (0, 0, 256, 64),
            ("horizontal", 4),
        ),
        (
            "seamlab-sana-pe, held-out magenta sky with a moon, 6.4x, bottom edge: a row-alternating hatch "
            "~7 cells deep, the whole-scene pass's edge cell held by the guide (not fixed; former: y 508)",
            load(args.pe_images / "5_native.png"),
            load(args.pe_images / f"5_{DEFAULT}.png"),
            (0, 448, 256, 512),
            ("horizontal", 508),
        ),
        (
            "labelled night staircase (verdict tests): left the moon's rim, the former worst (x 928, 6.8); "
            "right a tile row's step, the current worst (green)",
            staircase,
            staircase,
            (768, 24, 1024, 120),
            ("vertical", 928),
        ),
    ]
    label = 14
    legend = (
        "left: native render, right: guided, halo 4 + low-band pull in one step (the default less its "
        "chain), zoom 3x; red tick: the former "
        "line jump's worst line, green: the current one's (where inside the crop)"
    )
    rows = []
    for title, left, right, box, former in cases:
        if left is staircase:  # the same canvas: the moon box left, the tile row's step right
            pair = [crop_panel(left, box, former), crop_panel(right, (0, 330, 256, 426), former)]
        else:
            pair = [crop_panel(left, box, former), crop_panel(right, box, former)]
        rows.append((title, pair))
    width = max(sum(p.width for p in pair) + 8 for _, pair in rows)
    height = label + sum(label + max(p.height for p in pair) + 8 for _, pair in rows)
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    draw.text((2, 1), legend, fill="black")
    y = label
    for title, pair in rows:
        draw.text((2, y + 1), title, fill="black")
        y += label
        out.paste(pair[0], (0, y))
        out.paste(pair[1], (pair[0].width + 8, y))
        y += max(p.height for p in pair) + 8
    out.save(ROOT / "docs" / "enlargement_lines.png")


if __name__ == "__main__":
    main()
