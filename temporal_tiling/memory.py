"""Handing freed memory back to the system, for the stages that hold image-sized buffers one after another
(the refine's sampler then its decode, the metrics' regions)."""

from __future__ import annotations

import ctypes
import ctypes.util


def return_freed_memory() -> None:
    """Hands the heap pages that freed tensors left back to the system (glibc's ``malloc_trim``): glibc
    keeps blocks below its mmap threshold (raised up to 32 MiB as large blocks are freed) in the heap,
    still resident, so the sampler's freed buffers would otherwise sit under the decode's peak. Does
    nothing where the C library has no ``malloc_trim`` (macOS, Windows, musl)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)
