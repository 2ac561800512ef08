"""The server process's allocator: large buffers go back to the kernel when freed.

A transfer moves 1 MiB chunks through the server. glibc serves a block that large with ``mmap`` at first,
but its *dynamic* threshold rises to the size of every such block freed, so from the second chunk on they
come from the heaps of the threads that read and write them and stay there once freed: an idle server
kept ~15 MiB more after two 50 MB transfers than before them, for the rest of the sandbox's life. A fixed
threshold (``M_MMAP_THRESHOLD``) turns the dynamic one off, so every block of 256 KiB or more is its own
mapping, unmapped on ``free``: the server's memory returns to its idle size after any transfer. The cost
is a page fault per 4 KiB of each such block, a few hundred microseconds per megabyte.

Done through ``mallopt`` in the process itself rather than ``MALLOC_MMAP_THRESHOLD_`` in its environment,
which every process of the sandbox (the shells, the agent's programs) would inherit. Anything but glibc
(musl has no ``mallopt``) is left as it is.
"""

from __future__ import annotations

__all__ = ["MMAP_THRESHOLD", "tune_malloc"]

#: Blocks of this size or larger are mmap'ed, and unmapped when freed.
MMAP_THRESHOLD = 256 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD`; False where the C library has no mallopt."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError, ImportError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
