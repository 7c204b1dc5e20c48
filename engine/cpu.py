"""A CPU runtime setting that pays for training and evaluation on Linux (glibc)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)
_kept = False


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the OS; True if set.

    glibc serves every block above 32 MB (most activations at 256-512 px) with a fresh mmap and
    unmaps it on free, so each training step faults all its activations in again, page by page.
    With mmap off and trimming off, a step reuses the previous step's memory: about 1.5x faster
    CPU training steps here (BENCHMARKS.md). Peak memory is the same; it is kept until exit.
    """
    global _kept
    if _kept:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False
    _kept = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    if _kept:
        logger.debug("glibc keeps freed memory for reuse (mmap and trimming off)")
    return _kept
