"""Process memory settings for indexing: what keeps peak RSS flat as a table grows.

Measured with bench/bench_memory.py (SciFact, 2 cores, lancedb 0.40): most of an index run's
RSS above its imports was not live data but memory the allocators kept. LanceDB's Rust threads
allocate through glibc malloc, which grows its mmap threshold after the first large frees and
then serves 1-30 MB buffers from per-thread heaps that fragment and are never returned; Arrow
buffers made in Python go to pyarrow's jemalloc pool, which keeps its own arenas. And Lance
reads ahead up to 2 GiB while it compacts or builds an index, so `optimize()` held about the
whole table at once (977 MB peak at SciFact x10, 52k rows). `tune_process_memory` fixes the
three, once per process, before LanceDB's threads start. Only the processes indexflow owns call
it — the `indexflow index` command and the flow's run — never a library call inside someone
else's process, since the settings are process-wide:

- glibc: a fixed 128 KiB mmap threshold (large buffers are mmapped and unmapped when freed) and
  at most 2 malloc arenas. Same as MALLOC_MMAP_THRESHOLD_=131072 MALLOC_ARENA_MAX=2; variables
  the user set win, since they were already applied at process start.
- pyarrow: the system pool (glibc, tuned as above) instead of jemalloc, unless
  ARROW_DEFAULT_MEMORY_POOL says otherwise.
- Lance: a 16 MiB read-ahead buffer and 1,024-row scan batches (LANCE_DEFAULT_IO_BUFFER_SIZE,
  LANCE_DEFAULT_BATCH_SIZE), only when not set already. They change no result, only how far
  a scan runs ahead of its consumer.

INDEXFLOW_TUNE_MEMORY=0 turns all of it off (to measure, or to embed indexflow in a process
that tunes its own allocator).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 128 * 1024
ARENA_MAX = 2
LANCE_DEFAULTS = {
    "LANCE_DEFAULT_IO_BUFFER_SIZE": str(16 * 1024 * 1024),
    "LANCE_DEFAULT_BATCH_SIZE": "1024",
}

_done = False


def tune_process_memory() -> dict[str, str]:
    """Apply the settings above once per process; returns what was set (empty if already done or off)."""
    global _done
    if _done:
        return {}
    _done = True
    if os.environ.get("INDEXFLOW_TUNE_MEMORY", "1") == "0":
        return {}
    applied: dict[str, str] = {}
    for name, value in LANCE_DEFAULTS.items():
        if name not in os.environ:
            os.environ[name] = value
            applied[name] = value
    if sys.platform.startswith("linux"):
        applied |= _tune_glibc()
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        if "pyarrow" not in sys.modules:
            # Arrow reads the variable when its default pool is first made: no need to import
            # pyarrow (and numpy) here, before a first run's first API call.
            os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
            applied["arrow_pool"] = "system"
        else:
            import pyarrow as pa

            if pa.default_memory_pool().backend_name != "system":
                pa.set_memory_pool(pa.system_memory_pool())
                applied["arrow_pool"] = "system"
    return applied


def _tune_glibc() -> dict[str, str]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc: nothing to tune
        return {}
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    applied = {}
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1:
        applied["malloc_mmap_threshold"] = str(MMAP_THRESHOLD_BYTES)
    if "MALLOC_ARENA_MAX" not in os.environ and mallopt(M_ARENA_MAX, ARENA_MAX) == 1:
        applied["malloc_arena_max"] = str(ARENA_MAX)
    return applied
