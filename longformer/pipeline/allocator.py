"""glibc's allocator, set for training on the CPU: freed memory kept for reuse instead of handed back.

By default every allocation above glibc's mmap threshold (128 KiB at first, raised up to 32 MiB as blocks are
freed) is a fresh `mmap`, unmapped again on free, and each of its 4 KiB pages faults when first touched. A
training step allocates and frees the same activations and gradients every time, so it pays those page faults
on every step.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # mallopt's parameters (malloc.h)


def _libc() -> ctypes.CDLL | None:
    """The process's C library where it has glibc's `mallopt` (Linux), else None."""
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # no C library to open by that name (Windows)
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


LIBC = _libc()


def keep_freed_memory() -> bool:
    """Serve every allocation from glibc's heap and keep what is freed there, for the next step to reuse.

    The process then holds on to its peak memory until it exits, as PyTorch's CUDA allocator does on a GPU.
    For the whole process, from now on. Returns False (and changes nothing) without glibc.
    """
    if LIBC is None:
        return False
    LIBC.mallopt(M_MMAP_MAX, 0)  # no mmap: large blocks come from the heap too
    LIBC.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)  # never shrink the heap
    return True
