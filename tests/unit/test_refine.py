"""``python -m temporal_tiling refine`` and the engine's tiled autoencoder passes, on the tiny model."""

from __future__ import annotations

import gc
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms
from test_cli import COMPRESSION, tiny_loader

from temporal_tiling import cli
from temporal_tiling.plan import make_plan
from temporal_tiling.refine import Autoencoder, decode_tiled, encode_tiled, enlarged, refine_plan

SETTINGS = ["--prompt", "a harbour at dusk", "--tile", "128", "--overlap", "32", "--steps", "2",
            "--threads", "1"]  # fmt: skip


def encode(image: torch.Tensor) -> torch.Tensor:
    """A tiny 'autoencoder' that is close to the identity: pooled logits + one zero channel."""
    rgb = torch.logit(F.avg_pool2d(image, COMPRESSION).clamp(0.01, 0.99))
    return torch.cat([rgb, torch.zeros_like(rgb[:, :1])], 1)


def loader(folder: Path, device: torch.device) -> cli.LoadedModel:
    model = tiny_loader(folder, device)
    model.encode = encode
    return model


def refine(image: Path, out: Path, *extra: str, model=loader) -> int:
    return cli.main(["refine", "--image", str(image), *SETTINGS, *extra, "--out", str(out)], loader=model)


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colour field with some texture, [h, w, 3] float in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=generator)
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    texture = 0.05 * torch.rand(1, 3, height, width, generator=generator)
    return (smooth + texture).clamp(0, 1)[0].permute(1, 2, 0).numpy()


def png_header(path: Path) -> tuple[int, int, int]:
    """(width, height, bit depth) from a PNG's IHDR."""
    data = path.read_bytes()
    width, height, depth = struct.unpack(">IIB", data[16:25])
    return width, height, depth


def test_refine_writes_exactly_the_scaled_size_for_odd_inputs(tmp_path: Path, capsys) -> None:
    source = tmp_path / "odd.png"
    Image.fromarray((photo(217, 333) * 255).round().astype(np.uint8)).save(source)
    assert refine(source, tmp_path / "out", "--scale", "1.5") == 0
    with Image.open(tmp_path / "out" / "refined.png") as image:
        assert image.size == (round(1.5 * 333), round(1.5 * 217)) == (500, 326)
        refined = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    reference = enlarged(np.asarray(Image.open(source)), 326, 500)(0, 326, 0, 500)[0].permute(1, 2, 0).numpy()
    assert np.abs(refined - reference).mean() < 0.1  # a refine of the input, not a new picture
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["output_size"] == [500, 326] and metrics["psnr"] > 15 and "verdict" in metrics
    assert "refined at ×1.5" in (tmp_path / "out" / "metrics.md").read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "metrics.json",
        "metrics.md",
        "refined.png",
    ]
    assert "guided" in capsys.readouterr().err


def test_refine_keeps_icc_and_exif_and_honours_the_orientation(tmp_path: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    pixels = (photo(24, 40, seed=1) * 255).round().astype(np.uint8)
    pixels[:4, :4] = (255, 0, 0)  # a red corner at the stored image's top left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned: display it rotated 90° clockwise
    exif[0x010F] = "h23 camera"  # Make
    source = tmp_path / "turned.jpg"
    Image.fromarray(pixels).save(source, quality=95, icc_profile=icc, exif=exif.tobytes())
    assert refine(source, tmp_path / "out", "--no-metrics", "--tile", "64", "--overlap", "16") == 0
    with Image.open(tmp_path / "out" / "refined.png") as image:
        assert image.size == (24, 40)  # upright: the stored 40×24 turned
        assert image.info.get("icc_profile") == icc
        kept = image.getexif()
        assert kept.get(0x010F) == "h23 camera" and kept.get(0x0112, 1) == 1
        upright = np.asarray(image.convert("RGB")).astype(int)
    assert upright[1, -2, 0] > upright[1, -2, 1] + 60  # the red corner is now at the top right
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["refined.png"]


def test_16_bit_tiff_gives_a_16_bit_png(tmp_path: Path) -> None:
    pixels = (photo(40, 56, seed=2) * 65535).round().astype(np.uint16)
    source = tmp_path / "deep.tif"
    tifffile.imwrite(source, pixels, photometric="rgb")
    assert refine(source, tmp_path / "out", "--no-metrics", "--scale", "2") == 0
    out = tmp_path / "out" / "refined.png"
    assert png_header(out) == (112, 80, 16)
    data = out.read_bytes()
    idat, at = b"", 8
    while at < len(data):
        (length,), kind = struct.unpack(">I", data[at : at + 4]), data[at + 4 : at + 8]
        idat += data[at + 8 : at + 8 + length] if kind == b"IDAT" else b""
        at += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(80, 1 + 112 * 6)[:, 1:]
    values = rows.copy().view(">u2").reshape(80, 112, 3).astype(np.int64)
    assert (values % 257 != 0).mean() > 0.9  # real 16-bit values, not 8-bit ones scaled up
    assert abs(values.mean() / 65535 - pixels.mean() / 65535) < 0.1


def test_a_failure_of_the_metrics_still_leaves_the_refined_image(tmp_path: Path, capsys, monkeypatch) -> None:
    """The metrics run after the refine; running out of memory there (as a 15000 px photo did, after a
    whole refine) must not cost the refined image: refined.png lands, metrics.md / .json do not (never one
    without the other), and one line says why."""
    from temporal_tiling import refine_command

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 58 GB\nmore")

    monkeypatch.setattr(refine_command, "refine_report", out_of_memory)
    source = tmp_path / "in.png"
    Image.fromarray((photo(100, 150) * 255).round().astype(np.uint8)).save(source)
    assert refine(source, tmp_path / "out") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["refined.png"]
    with Image.open(tmp_path / "out" / "refined.png") as image:
        assert image.size == (150, 100)
    warning = [line for line in capsys.readouterr().err.splitlines() if "metrics" in line]
    assert len(warning) == 1 and "can't allocate memory" in warning[0] and "refined.png" in warning[0]


def test_refine_report_reads_its_image_as_the_padded_image_whole() -> None:
    """``refine_report`` reads the refined image through a mirroring reader and the reference region by
    region; it gives the report of the padded image and the enlarged input held whole, as it did when it
    made both as float tensors."""
    from temporal_tiling.metrics import seam_report
    from temporal_tiling.refine_command import refine_report

    refined = (photo(217, 333, seed=3) * 255).round().astype(np.uint8)
    source = (photo(109, 167, seed=4) * 255).round().astype(np.uint8)
    plan = refine_plan(217, 333, 128, 32, 8, 2)  # 336×224 px: padded by 3 and 7 px
    padded = np.pad(refined, ((0, plan.height_px - 217), (0, plan.width_px - 333), (0, 0)), mode="symmetric")
    image = torch.from_numpy(padded.astype(np.float32) / 255).permute(2, 0, 1)[None]
    reference = enlarged(source, 217, 333)(0, plan.height_px, 0, plan.width_px)
    whole = seam_report(image, plan, reference=reference).to_dict()
    read = refine_report(source, refined, plan).to_dict()
    assert read["verdict"] == whole["verdict"]
    for key in ("psnr", "ssim", "seam_zone_psnr", "noise_lstar", "line_jump", "gradient_ratio_mean"):
        assert read[key] == pytest.approx(whole[key], rel=1e-5), key


def test_ctrl_c_leaves_nothing_half_written(tmp_path: Path) -> None:
    def interrupted(folder: Path, device: torch.device) -> cli.LoadedModel:
        model = loader(folder, device)
        decode = model.decode

        def stop_at_second_tile(latent: torch.Tensor, calls: list[int] = []) -> torch.Tensor:  # noqa: B006
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return decode(latent)

        model.decode = stop_at_second_tile
        return model

    source = tmp_path / "in.png"
    Image.fromarray((photo(300, 700) * 255).astype(np.uint8)).save(source)
    assert refine(source, tmp_path / "out", "--no-metrics", model=interrupted) == 130
    assert not (tmp_path / "out").exists()


def test_bad_input_ends_with_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(SystemExit) as stop:
        refine(tmp_path / "notes.png", tmp_path / "out")
    assert stop.value.code == 2 and "not an image Pillow can read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        refine(tmp_path / "in.png", tmp_path / "out", "--scale", "0.5")
    assert "--scale" in capsys.readouterr().err


def test_too_many_tiles_names_the_ceiling_that_runs_it_and_the_tile_that_fits(tmp_path: Path, capsys) -> None:
    """A plan above --max-tiles is refused before any sampling, with both ways out, and each is right:
    the suggested --max-tiles is the plan's own count, the suggested --tile is the smallest (in whole
    tokens) whose plan fits."""
    source = tmp_path / "wide.png"
    Image.fromarray((photo(64, 1024) * 255).astype(np.uint8)).save(source)
    with pytest.raises(SystemExit) as stop:
        refine(source, tmp_path / "out", "--scale", "2", "--max-tiles", "20")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    asked = refine_plan(128, 2048, 128, 32, COMPRESSION)
    assert stop.value.code == 2 and f"is {len(asked)} tiles" in line and f"--max-tiles {len(asked)} " in line
    tile = int(line.split("--tile ")[1].split()[0])
    assert len(refine_plan(128, 2048, tile, 32, COMPRESSION, max_tiles=20)) <= 20  # SETTINGS' overlap
    with pytest.raises(Exception, match="max_tiles"):
        refine_plan(128, 2048, tile - COMPRESSION, 32, COMPRESSION, max_tiles=20)
    assert not (tmp_path / "out").exists()


# --- the engine's tiled autoencoder passes -----------------------------------------------------------


def test_tiled_encode_and_decode_see_one_tile_at_a_time_and_leave_no_seam() -> None:
    height, width = 200, 328  # 25×41 cells: tiles of 8 cells, the last ones shifted inward
    image = photo(height, width, seed=3)
    plan = refine_plan(height, width, 64, 16, COMPRESSION)
    sizes: list[tuple[int, int]] = []

    def decode(latent: torch.Tensor) -> torch.Tensor:
        sizes.append(tuple(latent.shape[-2:]))
        # a decoder whose output depends on its neighbourhood, as a real one does
        smooth = F.avg_pool2d(latent[:, :3], 3, 1, 1, count_include_pad=False)
        return torch.sigmoid(F.interpolate(smooth, scale_factor=COMPRESSION, mode="bilinear"))

    autoencoder = Autoencoder(encode, decode, COMPRESSION, tile_px=64, overlap_px=16)
    pixels = enlarged((image * 65535).astype(np.uint16), height, width)
    latent = encode_tiled(autoencoder, pixels, plan)
    whole = encode(pixels(0, plan.height_px, 0, plan.width_px))
    assert torch.allclose(latent, whole, atol=1e-5)  # a local encoder: tiling changes nothing
    out = torch.zeros(3, plan.height_px, plan.width_px)

    def write(top: int, left: int, block: torch.Tensor) -> None:
        assert not out[:, top : top + block.shape[2], left : left + block.shape[3]].any()  # written once
        out[:, top : top + block.shape[2], left : left + block.shape[3]] = block[0]

    decode_tiled(autoencoder, latent, write)
    assert out.gt(0).all()  # every pixel written
    assert max(sizes) == (8, 8) and len(sizes) == 4 * 7  # never the whole canvas
    full = decode(latent)[0]
    gap = (out - full).abs()
    assert gap.mean() < 0.01  # cross-faded: tile borders blend into the whole decode
    hard = torch.zeros_like(out)  # the same tiles pasted without the cross-fade
    tiling = make_plan(
        width_px=plan.width_px,
        height_px=plan.height_px,
        tile_width_px=64,
        tile_height_px=64,
        overlap_px=16,
        compression=COMPRESSION,
        fit="shift",
    )
    for tile in tiling.tiles:
        rows, cols = tile.pixel_slices(COMPRESSION)
        hard[:, rows, cols] = decode(latent[..., tile.slices[0], tile.slices[1]])[0]
    assert gap.mean() < 0.5 * (hard - full).abs().mean()


def test_tiled_decode_holds_one_tile_and_the_overlap_rows_not_a_row_of_tiles() -> None:
    """The decode's working set at every tile: the tensors it made stay under half a row of tiles
    (4 × 64 px × the canvas width, float32) on a canvas 40 tiles wide: only the 16 overlap rows the
    next tile row adds to span the width, also above the last row, shifted 5 cells up to end on the
    canvas's edge (it fades in over the overlap only)."""
    latent = torch.randn(1, 4, 3 * 6 + 3, 40 * 6 + 2)  # 8-cell tiles, 2 cells overlap: 4 rows of 40 tiles

    def storages() -> dict[int, int]:
        tensors = (t for t in gc.get_objects() if type(t) is torch.Tensor)
        return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}

    before = storages()
    held: list[int] = []

    def decode(tile: torch.Tensor) -> torch.Tensor:
        held.append(sum(size for pointer, size in storages().items() if pointer not in before))
        return torch.sigmoid(F.interpolate(tile[:, :3], scale_factor=COMPRESSION, mode="nearest"))

    autoencoder = Autoencoder(encode, decode, COMPRESSION, tile_px=64, overlap_px=16)
    decode_tiled(autoencoder, latent, lambda top, left, block: None)
    row_of_tiles = 4 * 64 * latent.shape[-1] * COMPRESSION * 4
    assert len(held) == 4 * 40 and max(held) < row_of_tiles / 2, (max(held), row_of_tiles)


def test_refine_samples_with_the_canvas_the_guide_and_the_noise_alone(tmp_path: Path) -> None:
    """While the tiles sample, the canvas-sized latents alive are the canvas, the encoded image (the
    guide every tile is pulled toward) and the noise: no per-tile latents (1.25 canvases here)."""
    source = tmp_path / "strip.png"
    Image.fromarray((photo(64, 512) * 255).astype(np.uint8)).save(source)
    model = loader(tmp_path, torch.device("cpu"))
    plan = refine_plan(64, 512, 128, 32, COMPRESSION)  # 8×64 cells, 5 tiles of 8×16
    canvas = 4 * plan.canvas_height * plan.canvas_width
    held: list[int] = []

    def record(*_) -> None:
        tensors = (t for t in gc.get_objects() if type(t) is torch.Tensor and t.numel() >= canvas)
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
        held.append(sum(storages.values()))

    model.transformer.register_forward_pre_hook(record)
    gc.collect()  # earlier tests' cyclic garbage (a caught exception's frames) is not the refine's
    assert refine(source, tmp_path / "out", "--scale", "1", "--no-metrics", model=lambda *_: model) == 0
    assert held and max(held) <= 3 * canvas * 4, (max(held), canvas * 4)


def test_refine_decode_lets_the_canvas_latent_go_as_it_passes(tmp_path: Path) -> None:
    """The decode drops the canvas latent band by band behind its tile rows: at the last of its four
    tile rows (512 px autoencoder tiles on a 1536 px tall canvas) less than half of it is left."""
    source = tmp_path / "tall.png"
    Image.fromarray((photo(1536, 64) * 255).astype(np.uint8)).save(source)
    model = loader(tmp_path, torch.device("cpu"))
    decode, width, held = model.decode, 64 // COMPRESSION, []

    def recording(tile: torch.Tensor) -> torch.Tensor:
        # the canvas latent or its bands: full width, not the 64 cells high tile being decoded
        tensors = (t for t in gc.get_objects() if type(t) is torch.Tensor and t.ndim == 4)
        latents = (t for t in tensors if t.shape[-1] == width and t.shape[-2] != 512 // COMPRESSION)
        held.append(
            sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in latents}.values())
        )
        return decode(tile)

    model.decode = recording
    gc.collect()  # earlier tests' cyclic garbage is not the refine's
    assert refine(source, tmp_path / "out", "--scale", "1", "--no-metrics", model=lambda *_: model) == 0
    canvas = 4 * (1536 // COMPRESSION) * width * 4
    assert len(held) == 4 and held[0] == canvas and held[-1] < canvas / 2, (held, canvas)


def test_tiled_decode_of_handed_over_bands_equals_the_decode_of_the_tensor() -> None:
    """A batch of two canvases decoded from the tensor and from bands of uneven heights gives the same
    pixels (a decoder that starts as the real ones do, rescaling its input, then a convolution); the
    band above the last tile row is dropped from the handed-over list."""
    latent = torch.randn(2, 4, 21, 14, generator=torch.Generator().manual_seed(5))

    def decode(tile: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.avg_pool2d(tile[:, :3] / 0.7, 3, 1, 1))

    autoencoder = Autoencoder(encode, decode, 1, tile_px=8, overlap_px=2)
    outputs = []
    for source in (latent, bands := list(latent.split([5, 9, 3, 4], dim=-2))):
        out = torch.zeros(2, 3, 21, 14)

        def write(top: int, left: int, block: torch.Tensor, out: torch.Tensor = out) -> None:
            out[..., top : top + block.shape[-2], left : left + block.shape[-1]] = block

        decode_tiled(autoencoder, source, write)
        outputs.append(out)
    assert torch.equal(*outputs) and outputs[0].gt(0).all()
    assert [band is None for band in bands] == [True, False, False, False]  # the last tile row: rows 13-21


def test_refine_plan_rounds_every_size_to_whole_tokens() -> None:
    plan = refine_plan(217, 333, 100, 30, 8, patch=2)
    assert (plan.height_px, plan.width_px) == (224, 336)  # up to 16 px tokens
    assert plan.tile_width_px % 16 == 0 and plan.overlap * 8 % 16 == 0
    small = refine_plan(20, 30, 512, 64, 32)  # a tile larger than the image: one tile of the canvas
    assert (len(small), small.width_px, small.height_px) == (1, 32, 32)
