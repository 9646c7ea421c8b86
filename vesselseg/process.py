"""Process-wide settings that a command makes for itself when it starts (never on import: a
library user's process is theirs)."""
from __future__ import annotations

import ctypes
import ctypes.util

#: glibc's mallopt parameter for the most malloc arenas (M_ARENA_MAX).
_M_ARENA_MAX = -8


def limit_malloc_arenas(count: int = 2) -> bool:
    """Cap glibc's per-thread malloc arenas at `count`. eval's reader, writer and model threads
    each free large photo-sized buffers; with glibc's default (8 per core) every thread keeps
    its own arena's freed memory, which measured +0.3 GB of peak memory over 12 HRF photos
    (benchmarks.eval_resources). Returns False where this is not glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).mallopt(_M_ARENA_MAX, count))
    except (OSError, AttributeError):  # not glibc: musl, macOS, Windows
        return False
