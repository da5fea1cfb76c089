"""Images read region by region: the measures never hold a large image (or its Lab) whole.

A 16K refine output is 268 Mpx: its Lab in float32 alone is 3 GiB, and the running sums the band
measures used were several times that. Every measure instead asks a :class:`Pixels` for the regions
it needs (a band and its sides, a strip of rows), at most ``Pixels.chunk`` pixels at a time; an image that
fits one chunk is converted to Lab once and kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..memory import return_freed_memory
from .colour import to_lab
from .inputs import MetricsError

CHUNK_PX = 1 << 20
"""Pixels (× batch) read and converted at a time: 1 Mpx, a few hundred MB of working memory at most (Lab,
float64 running sums, SSIM's filtered maps of one region)."""

RETURN_EVERY = 16
"""Chunks read between two hand-backs of freed heap pages to the system (``return_freed_memory``): the
measures free a chunk's buffers as they go, but glibc keeps most of them in its heap, resident and
fragmented by the small tensors every band leaves; at 8K that doubled the peak (879 MiB against 495 MiB
with every buffer returned at once, which took 2.6× the time)."""

PixelReader = Callable[[int, int, int, int], Tensor]
"""``(top, bottom, left, right)`` px → that region of the image, ``[B, 3, bottom - top, right - left]``
floats in [0, 1]."""


@dataclass
class Pixels:
    """An image of ``batch`` × ``height`` × ``width`` px that is read by region (``read``), with its Lab."""

    read: PixelReader
    batch: int
    height: int
    width: int
    name: str = "image"
    chunk: int = CHUNK_PX
    """Pixels (× batch) read and converted at a time."""
    _lab: Tensor | None = field(default=None, repr=False)
    _unreturned: int = field(default=0, repr=False)

    @classmethod
    def of(cls, image: Tensor, name: str = "image", chunk: int = CHUNK_PX) -> Pixels:
        """A [B, 3, H, W] tensor, read by slicing."""
        return cls(
            lambda top, bottom, left, right: image[..., top:bottom, left:right],
            image.shape[0],
            *image.shape[-2:],
            name=name,
            chunk=chunk,
        )

    @property
    def pixels(self) -> int:
        return self.batch * self.height * self.width

    @property
    def whole(self) -> bool:
        """Whether the image fits one chunk: then it is converted once and measured whole."""
        return self.pixels <= self.chunk

    def rgb(self, top: int, bottom: int, left: int, right: int) -> Tensor:
        """The region as float RGB; a NaN pixel is a MetricsError naming the image."""
        region = self.read(top, bottom, left, right)
        self._unreturned += region.shape[0] * region.shape[-2] * region.shape[-1]
        if self._unreturned > RETURN_EVERY * self.chunk:
            self._unreturned = 0
            return_freed_memory()
        if torch.isnan(region).any():
            raise MetricsError(
                f"{self.name} contains NaN pixels; fix the upstream node (decode/blend) first."
            )
        return region

    def lab(self, top: int, bottom: int, left: int, right: int) -> Tensor:
        """CIE Lab of the region [B, 3, h, w] (float32); the whole image's, converted once, when it fits a
        chunk."""
        if self.whole:
            if self._lab is None:
                self._lab = to_lab(self.rgb(0, self.height, 0, self.width))
            return self._lab[..., top:bottom, left:right]
        return to_lab(self.rgb(top, bottom, left, right))

    def lab_along(self, transposed: bool, along: tuple[int, int], across: tuple[int, int]) -> Tensor:
        """Lab of rows ``along`` × columns ``across`` ([B, 3, along, across]); ``transposed``: of the
        image transposed (columns ``along`` × rows ``across`` of the image)."""
        if transposed:
            return self.lab(*across, *along).transpose(-1, -2)
        return self.lab(*along, *across)

    def row_strips(self, extra: int = 0) -> Iterator[tuple[int, int, int]]:
        """``(top, stop, bottom)`` of strips of whole rows, about a chunk each: rows top..stop-1 are the
        strip's own, read up to ``bottom`` (the next strip's first ``extra`` rows, clamped)."""
        return _strips(self.height, max(1, self.chunk // max(1, self.batch * self.width) - extra), extra)

    def column_strips(self, extra: int = 0) -> Iterator[tuple[int, int, int]]:
        """``(left, stop, right)`` of strips of whole columns, as :meth:`row_strips`."""
        return _strips(self.width, max(1, self.chunk // max(1, self.batch * self.height) - extra), extra)

    def regions(self, margin: int = 0) -> Iterator[tuple[tuple[int, int, int, int], tuple[slice, slice]]]:
        """Square-ish regions that tile the image, each read with ``margin`` px more on every side
        (clamped): ``(top, bottom, left, right)`` to read and the slices of the region itself in it."""
        side = max(1, math.isqrt(self.chunk // self.batch) - 2 * margin)
        for top in range(0, self.height, side):
            for left in range(0, self.width, side):
                bottom, right = min(top + side, self.height), min(left + side, self.width)
                t, lft = max(top - margin, 0), max(left - margin, 0)
                read = (t, min(bottom + margin, self.height), lft, min(right + margin, self.width))
                yield read, (slice(top - t, bottom - t), slice(left - lft, right - lft))


def _strips(size: int, step: int, extra: int) -> Iterator[tuple[int, int, int]]:
    for start in range(0, size, step):
        stop = min(start + step, size)
        yield start, stop, min(stop + extra, size)
