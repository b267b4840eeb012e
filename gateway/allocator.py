"""The memory allocator the gateway runs on, and the one its container image sets up.

Python's own small-object allocator (pymalloc) takes memory from the system in 1 MiB arenas and
gives an arena back only when every object in it is gone. After a burst of streams, the few objects
that outlive it (cache entries, grown tables) sit in most of the arenas the burst added, and the
process keeps nearly all of its memory for reuse. With `PYTHONMALLOC=malloc` and jemalloc preloaded,
every object comes from jemalloc, which returns freed pages to the system page by page after
`dirty_decay_ms`, from a background thread, even in a process gone idle (docs/operations.md,
"Memory"). The container image runs so, with the environment `jemalloc_environment` gives.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Literal

__all__ = [
    "ENVIRONMENT",
    "JEMALLOC_CONF",
    "Allocator",
    "find_jemalloc",
    "in_use",
    "jemalloc_environment",
    "purge_after_fork",
]

# Freed pages back within half a second (a decay curve over `dirty_decay_ms`, purged at once rather
# than marked lazily free, which the kernel would reclaim only under pressure), by a background
# thread. 1000 ms left part of a 9,968-stream burst still to purge 2 s after its clients left (the
# last of them take ~1.5 s to go); 250 ms gave back no more than 500 (docs/performance.md).
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:500,muzzy_decay_ms:0"

# The variables that choose the allocator at a process's start (`jemalloc_environment`).
ENVIRONMENT = ("LD_PRELOAD", "PYTHONMALLOC", "MALLOC_CONF")

Allocator = Literal["jemalloc", "pymalloc", "pymalloc, jemalloc unused", "malloc"]


def in_use() -> Allocator:
    """What Python's objects are allocated by in this process:

    - `jemalloc`: `PYTHONMALLOC=malloc` with jemalloc preloaded;
    - `pymalloc`: Python's default;
    - `pymalloc, jemalloc unused`: jemalloc preloaded, but Python's objects still on pymalloc;
    - `malloc`: `PYTHONMALLOC=malloc` on the C library's allocator."""
    jemalloc = _jemalloc() is not None
    malloc = not sys.flags.ignore_environment and os.environ.get("PYTHONMALLOC", "").startswith("malloc")
    if malloc:
        return "jemalloc" if jemalloc else "malloc"
    return "pymalloc, jemalloc unused" if jemalloc else "pymalloc"


def purge_after_fork() -> None:
    """In a forked process (a worker): start jemalloc's background purging again.

    Only the forking thread survives a fork, so jemalloc turns its background threads off in the
    child; without them a worker gone idle after a burst would give nothing back until it next
    allocated. Nothing to do without jemalloc, or when its options did not ask for them."""
    library = _jemalloc()
    if library is None:
        return
    if _flag(library, b"opt.background_thread") and not _flag(library, b"background_thread"):
        on = ctypes.c_bool(True)
        library.mallctl(b"background_thread", None, None, ctypes.byref(on), ctypes.c_size_t(ctypes.sizeof(on)))


def _jemalloc() -> ctypes.CDLL | None:
    """The process's symbols, when they include jemalloc's `mallctl` (a preloaded jemalloc)."""
    library = ctypes.CDLL(None)
    return library if hasattr(library, "mallctl") else None


def _flag(library: ctypes.CDLL, name: bytes) -> bool:
    value = ctypes.c_bool(False)
    size = ctypes.c_size_t(ctypes.sizeof(value))
    return library.mallctl(name, ctypes.byref(value), ctypes.byref(size), None, ctypes.c_size_t(0)) == 0 and value.value


def find_jemalloc() -> str | None:
    """The path of this machine's `libjemalloc.so.2` (Debian's `libjemalloc2`), or None."""
    for folder in ("/usr/local/lib", "/usr/lib", *sorted(str(p) for p in Path("/usr/lib").glob("*-linux-gnu"))):
        path = Path(folder) / "libjemalloc.so.2"
        if path.is_file():
            return str(path)
    return None


def jemalloc_environment(library: str) -> dict[str, str]:
    """The environment a gateway process starts with to run on jemalloc at `library`, as the
    container image sets it."""
    return dict(zip(ENVIRONMENT, (library, "malloc", JEMALLOC_CONF), strict=True))
