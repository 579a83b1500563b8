"""Keep freed memory in the process, so that tensors of the same sizes at every step are not
page-faulted in again (glibc's ``malloc``; a no-op elsewhere).

A training step allocates the same large tensors every time (the per-sample gradient blocks
of ``torch.func.vmap``, megabytes each). With glibc's defaults each of them above the mmap
threshold is a fresh ``mmap`` that the kernel zero-fills page by page on first touch, and each
one freed is returned at once: on a 2-core machine the per-sample gradients of the digits CNN
(6 workers × b = 50) take 25 ms a call that way and 13 ms once freed memory is kept
(``benchmarks/README.md``). :func:`keep_freed_memory` raises the mmap and trim thresholds with
``mallopt``, as the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` environment
variables would before start-up. It changes speed only, never a number.

The command line and sweep pool workers call it, and the book's notebook kernels start with
:func:`environment`; a library user calls it once if they want the same.
``DPBR_KEEP_FREED_MEMORY=0`` turns both off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

#: ``mallopt`` parameters (glibc's ``malloc.h``).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations below this size come from the heap (glibc caps the dynamic threshold at 32 MiB).
MMAP_THRESHOLD = 256 << 20
#: Free memory at the top of the heap is kept up to this size before it is returned.
TRIM_THRESHOLD = 1 << 30
SWITCH_VARIABLE = "DPBR_KEEP_FREED_MEMORY"


def _switched_off() -> bool:
    return os.environ.get(SWITCH_VARIABLE, "1") == "0"


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's mmap threshold to :data:`MMAP_THRESHOLD` and its trim threshold to
    :data:`TRIM_THRESHOLD` for this process, once. True if both were set; False where the C
    library is not glibc or ``DPBR_KEEP_FREED_MEMORY=0``."""
    if _switched_off():
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt, Windows)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def environment() -> dict[str, str]:
    """The environment variables that give a child process the same settings from its start
    (empty when ``DPBR_KEEP_FREED_MEMORY=0``)."""
    if _switched_off():
        return {}
    return {
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD),
    }
