"""The image grid of the quality benchmark (``docs/quality_grid.png``): methods side by side per pair."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw
from torch import Tensor

from .session import Bench
from .specs import CANVASES, Spec, canvas_px


def grid_figure(bench: Bench, specs: list[tuple[str, Spec]], path: Path) -> None:
    """Held-out pairs, one panel per (label, method), labelled; < 1 MB PNG."""
    label_h = 14
    columns = [(label, s.key) for label, s in specs]
    panels = []
    for canvas in CANVASES:
        shown = 2 if canvas == next(iter(CANVASES)) else 1  # keeps the PNG well under 1 MB
        for b in range(min(shown, len(bench.pairs))):
            row = []
            for name, key in columns:
                img = bench.images.get((canvas, key))
                if img is not None:
                    row.append((name, img[b]))
            panels.append((canvas, b, row))
    vertical = {canvas: canvas_px(canvas, bench.model.compression) for canvas in CANVASES}
    width = 0
    blocks = []
    for canvas, b, row in panels:
        w, h = vertical[canvas]
        wide = w > 2 * h
        if wide:  # panoramas: methods stacked vertically
            block_w, block_h = w, len(row) * (h + label_h)
        else:
            block_w, block_h = len(row) * (w + 4), h + label_h
        blocks.append((canvas, b, row, wide, block_w, block_h, w, h))
    grid_blocks = [blk for blk in blocks if not blk[3]]
    pano_blocks = [blk for blk in blocks if blk[3]]
    width = max([blk[4] for blk in grid_blocks] + [sum(blk[4] + 8 for blk in pano_blocks)] + [1])
    height = sum(blk[5] + 18 for blk in grid_blocks) + max([blk[5] + 18 for blk in pano_blocks] + [0])
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for canvas, b, row, _, _, block_h, w, _h in grid_blocks:
        title = f"{canvas} - {bench.pairs.prompts[b]} (seed {bench.pairs.seeds[b]})"
        draw.text((2, y + 2), _ascii(title, width), fill="black")
        y += 18
        for i, (name, img) in enumerate(row):
            x = i * (w + 4)
            draw.text((x + 2, y), _ascii(name, w), fill="black")
            sheet.paste(_pil(img), (x, y + label_h))
        y += block_h
    x0 = 0
    for canvas, b, row, _, block_w, _, pano_w, h in pano_blocks:
        title = f"{canvas} - {bench.pairs.prompts[b]}"
        draw.text((x0 + 2, y + 2), _ascii(title, pano_w), fill="black")
        for i, (name, img) in enumerate(row):
            yy = y + 18 + i * (h + label_h)
            draw.text((x0 + 2, yy), _ascii(name, pano_w), fill="black")
            sheet.paste(_pil(img), (x0, yy + label_h))
        x0 += block_w + 8
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, optimize=True)
    if path.stat().st_size > 950_000:  # last resort; palette banding would hide faint seams
        sheet.quantize(256).save(path, optimize=True)


def _ascii(text: str, width_px: int) -> str:
    """PIL's default bitmap font has no × / — / σ glyphs; keep labels ASCII and inside their panel."""
    for a, b in (("×", "x"), ("—", "-"), ("σ", "s"), ("α", "a"), ("→", "->"), ("·", "|")):
        text = text.replace(a, b)
    return text[: max(4, width_px // 6)]


def _pil(img: Tensor) -> Image.Image:
    array = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    return Image.fromarray(array, "RGB")
