"""``ReuseFreedMemory``: keep freed CPU memory in the process, so big tensors are not page-faulted in
again at every training step.

PyTorch allocates CPU tensors with the C library's ``malloc``. With glibc, a block of a few
megabytes (an activation at these model sizes) is returned to the operating system when freed and
mapped again, zero-filled page by page, when the next step allocates it: thousands of page faults
per step. Measured on a 2-core CPU (``python -m benchmarks.performance``, section "allocator"):
about 5000 minor faults per byte-model step and a few % of its time; a freshly allocated 1 MB
tensor costs ten times an elementwise pass over it. Telling glibc to keep freed memory (the
``mallopt`` thresholds below, what jemalloc or tcmalloc do by default) removes them. The cost:
the process keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

__all__ = ["ReuseFreedMemory", "reuse_freed_memory"]

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks up to this size come from the heap; newer glibc refuses more than 32 MiB, the fallback
MMAP_THRESHOLDS = (1 << 30, 32 * 1024 * 1024)
#: never give the top of the heap back to the system
TRIM_THRESHOLD = 2**31 - 1


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (this process, from now on); False where not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mapped = any(mallopt(_M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLDS)
    return mapped and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


class ReuseFreedMemory(Callback):
    """Calls :func:`reuse_freed_memory` in ``setup`` (CPU runs gain most; harmless elsewhere).

    ```yaml
    trainer:
      callbacks:
        - class_path: lightning_film.callbacks.cpu_memory.ReuseFreedMemory
    ```
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not reuse_freed_memory():
            rank_zero_info("ReuseFreedMemory: not a glibc system; the C allocator is left as it is")
