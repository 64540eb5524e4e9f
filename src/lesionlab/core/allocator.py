"""glibc's ``malloc`` set for a job that allocates and frees tensors of tens of megabytes at every batch.

By default glibc serves a block above a threshold with ``mmap`` and raises that threshold to the size of each such
block freed, and it gives the top of the heap back to the system whenever more than a trim threshold is free there.
Once a job has freed a few large arrays (the leakage audit's Hamming-distance blocks are enough), a backbone's
activations move from ``mmap`` onto the heap, are trimmed after every batch and faulted in, zeroed, at the next: on
2 CPU cores the pooled features of the 4,624 shared training images took 47 s after the audit against 21-22 s in a
fresh process, and ``lesionlab demo --quick`` lost about half a minute to it (docs/BENCHMARKS.md, "make demo on real
data"). Fixing the mmap threshold at glibc's own upper bound for its moving threshold (32 MiB on 64-bit systems) and
trimming only above 2 GiB keeps the speed of a fresh process all through a job; the price is that the memory a job
frees stays with the process (up to its peak) until it ends.

:func:`tune_malloc` is called once by the command line. It leaves ``malloc`` alone off glibc, when the user has set
glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``, preloads another allocator (jemalloc, tcmalloc)
or sets ``LESIONLAB_MALLOC=default``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from collections.abc import Mapping

#: ``mallopt`` parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: The values set: glibc's largest moving mmap threshold on 64-bit systems, and a trim threshold no job here reaches.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 2**31 - 1
#: The environment variable that keeps glibc's defaults.
OPT_OUT = "LESIONLAB_MALLOC"


def skip_reason(environ: Mapping[str, str], libc: str) -> str | None:
    """Why ``malloc`` is left alone (``None``: tune it): the C library, the user's own settings or allocator."""
    if libc != "glibc":
        return f"the C library is {libc or 'unknown'}, not glibc"
    if environ.get(OPT_OUT, "").strip().lower() == "default":
        return f"{OPT_OUT}=default"
    own = [name for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if name in environ]
    if own:
        return f"{', '.join(own)} set by the user"
    preload = environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return "another allocator is preloaded"
    return None


def tune_malloc(environ: Mapping[str, str] | None = None) -> str:
    """Set the two thresholds with ``mallopt`` unless :func:`skip_reason` says not to; returns what was done."""
    reason = skip_reason(os.environ if environ is None else environ, platform.libc_ver()[0])
    if reason is not None:
        return f"malloc left at its defaults: {reason}"
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    done = [libc.mallopt(M_MMAP_THRESHOLD, ctypes.c_int(MMAP_THRESHOLD)),
            libc.mallopt(M_TRIM_THRESHOLD, ctypes.c_int(TRIM_THRESHOLD))]
    if not all(done):
        return "malloc left at its defaults: glibc refused the thresholds"
    return f"malloc: mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold {TRIM_THRESHOLD >> 20} MiB"
