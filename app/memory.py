"""Keeping the process's resident memory close to what it uses (glibc's allocator).

glibc gives each thread that allocates its own arena, up to eight per core, and hands freed memory back
to the system only from the top of an arena. Inference runs in a pool of worker threads plus torch's own,
so after a burst of large requests each arena keeps its high-water mark: resident memory ratchets up and
is never returned. Fewer arenas mean less to strand, and trimming after a large reply returns the rest.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

log = logging.getLogger("app.memory")

M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h
ARENAS = 2  # measured with bench/memory.py: growth +129 MB with 2 arenas, +189 MB with glibc's default

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
_GLIBC = hasattr(_libc, "malloc_trim") and hasattr(_libc, "mallopt")


def limit_arenas(arenas: int = ARENAS) -> None:
    """Allocate from at most ``arenas`` arenas; effective for arenas not made yet, so call it before the
    worker threads start."""
    if _GLIBC and not _libc.mallopt(M_ARENA_MAX, arenas):
        log.warning("mallopt(M_ARENA_MAX, %d) failed", arenas)


def trim() -> None:
    """Hand free memory at the top of each arena, and whole free pages inside them, back to the system."""
    if _GLIBC:
        _libc.malloc_trim(0)


class IdleTrimmer:
    """Trims once the service falls idle, at most every ``interval`` seconds, in a thread of its own."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.last = 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            threading.Thread(target=trim, name="malloc-trim", daemon=True).start()
