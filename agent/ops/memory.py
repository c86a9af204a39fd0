"""The process's heap once start-up is over.

Start-up is the agent's memory peak: the YAML tree with every key's position, pydantic's
validation, the drivers' request plans. All of it is garbage once the devices poll, but the C
allocator keeps the pages it grew into, and on a gateway RSS is what the integrator reads
(`edge-agent status`, `systemctl status`, the OOM killer). Collected, frozen and trimmed here.
"""

from __future__ import annotations

import ctypes
import gc
import os
from typing import Any

ARENAS = 2
"""glibc malloc arenas: by default up to 8 per core, one more for each thread that allocates
while another holds one (the buffer's worker, the executor threads of connects and clock
checks), each keeping its own free pages. Two serve an agent whose threads mostly wait."""


def limit_arenas() -> None:
    """Cap glibc's malloc arenas at ``ARENAS`` before any thread starts (what
    ``MALLOC_ARENA_MAX`` does, which only the environment of a new process could set); an
    explicit ``MALLOC_ARENA_MAX`` wins."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    fn = _libc("mallopt")
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int]
        fn.restype = ctypes.c_int
        fn(_M_ARENA_MAX, ARENAS)


def settle_memory() -> None:
    """Collect start-up's garbage, keep what lives on out of the collector's full passes, and
    hand the freed heap back to the system.

    ``gc.freeze`` moves every object alive now (configs, models, drivers: they live as long as
    the process) to a generation the collector never scans, so its full passes stay short as
    the heap grows. ``malloc_trim`` is glibc's; the call is skipped elsewhere."""
    gc.collect()
    gc.freeze()
    _trim()


def _trim() -> None:
    fn = _libc("malloc_trim")
    if fn is not None:
        fn.argtypes = [ctypes.c_size_t]
        fn.restype = ctypes.c_int
        fn(0)


_M_ARENA_MAX = -8  # glibc's malloc.h


def _libc(symbol: str) -> Any:
    """``symbol`` of glibc, or None on another C library (musl returns memory by itself). The
    process's own symbols: ``ctypes.util.find_library`` would run ``ldconfig`` to find libc."""
    try:
        return getattr(ctypes.CDLL(None), symbol)
    except (OSError, AttributeError):
        return None
