"""Image files in and out of the refine: PNG, JPEG and TIFF, 8 or 16 bits per channel, with their
colour profile and EXIF kept and the EXIF orientation applied.

Pillow reads every format and its metadata but holds RGB at 8 bits only, so 16-bit TIFFs take their
pixels from tifffile, and 16-bit output is written as a PNG here (plain zlib chunks, no filtering).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import write_atomic
from .errors import UserInputError

FORMATS = ("PNG", "JPEG", "TIFF")
ORIENTATION = 0x0112
"""EXIF tag of the orientation (1 = upright; 2-8 = the flips and turns to apply)."""


class ImageFileError(UserInputError):
    """An input image that cannot be read; the message says what to change."""


@dataclass
class Picture:
    """An image as the refine uses it: upright RGB pixels and the metadata to write back."""

    pixels: np.ndarray
    """[h, w, 3] uint8 or uint16, upright (EXIF orientation applied)."""
    icc_profile: bytes | None = None
    exif: bytes | None = None
    """EXIF without the orientation (the pixels are upright), or None."""


def read_image(path: Path) -> Picture:
    """The image at ``path`` upright, as 8- or 16-bit RGB with its ICC profile and EXIF."""
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise ImageFileError(f"'{path}' does not exist.") from None
    except (UnidentifiedImageError, OSError) as error:
        raise ImageFileError(f"'{path}' is not an image Pillow can read ({error}).") from None
    with image:
        if image.format not in FORMATS:
            raise ImageFileError(f"'{path}' is {image.format}; give a PNG, JPEG or TIFF.")
        icc = image.info.get("icc_profile") or None
        exif = image.getexif()
        orientation = exif.get(ORIENTATION, 1)
        if _is_16_bit_png(image):
            raise ImageFileError(
                f"'{path}' is a 16-bit PNG, which Pillow reads at 8 bits only; save it as a 16-bit TIFF "
                "to keep the 16 bits (or as an 8-bit PNG)."
            )
        if image.format == "TIFF" and _tiff_bits(path) == 16:
            pixels = _orient(_tiff_pixels(path), orientation)
        else:
            pixels = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    exif.pop(ORIENTATION, None)
    return Picture(np.ascontiguousarray(pixels), icc, exif.tobytes() if len(exif) else None)


def write_png(path: Path, picture: Picture) -> None:
    """``picture`` as a PNG at its bit depth, with its ICC profile and EXIF; all or nothing."""
    pixels = picture.pixels
    if pixels.dtype == np.uint8:
        buffer = io.BytesIO()
        extra = {"icc_profile": picture.icc_profile} if picture.icc_profile else {}
        if picture.exif:
            extra["exif"] = picture.exif
        Image.fromarray(pixels, "RGB").save(buffer, format="PNG", **extra)
        data = buffer.getvalue()
    else:
        data = _png_16(pixels, picture.icc_profile, picture.exif)
    write_atomic(path, data)


def _is_16_bit_png(image: Image.Image) -> bool:
    return image.format == "PNG" and any(";16" in str(tile.args) for tile in image.tile or [])


def _tiff_bits(path: Path) -> int:
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        return tiff.pages[0].dtype.itemsize * 8


def _tiff_pixels(path: Path) -> np.ndarray:
    """A 16-bit TIFF's pixels as [h, w, 3] uint16 (grey repeated, alpha dropped)."""
    import tifffile

    pixels = tifffile.imread(path)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4):
        raise ImageFileError(f"'{path}' holds a {pixels.shape} array; give one RGB or grey image.")
    channels = pixels.shape[-1]
    rgb = np.repeat(pixels[..., :1], 3, axis=-1) if channels in (1, 2) else pixels[..., :3]
    return rgb.astype(np.uint16)


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels upright for an EXIF ``orientation`` (what ``ImageOps.exif_transpose`` does)."""
    turns = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 1)[::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return turns.get(orientation, lambda a: a)(pixels)


def _png_16(pixels: np.ndarray, icc: bytes | None, exif: bytes | None) -> bytes:
    """A 16-bit RGB PNG: IHDR, iCCP, eXIf, one IDAT of unfiltered rows, IEND."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = pixels.shape[:2]
    rows = pixels.astype(">u2").view(np.uint8).reshape(height, width * 6)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()
    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))]
    if icc:
        parts.append(chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc)))
    if exif:
        parts.append(chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif))
    parts += [chunk(b"IDAT", zlib.compress(raw, 6)), chunk(b"IEND", b"")]
    return b"".join(parts)
