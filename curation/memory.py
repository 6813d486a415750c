"""Process memory: freed memory goes back to the OS, and models are freed once their step is done.

Two things kept the demo at 6.35 GiB peak RSS for a 135M-parameter model (``bench/demo_memory.py``):

- **glibc's allocator.** After a large block is freed, glibc raises its mmap threshold (up to 32 MiB),
  so from then on tensor buffers of training and eval come from the heap, where a freed buffer stays
  in the process: the training step's peak grew with fragmentation (5.5 GiB) and 4.6 GiB stayed
  resident after training ended. :func:`tune_allocator` pins the threshold at 256 KiB (buffers that
  big are mapped and unmapped, i.e. really returned), and :func:`release_memory` hands the heap's
  free tail back (``malloc_trim``) between steps.
- **models nobody uses any more.** A loader cached per process (MiniLM for selection, model-backed
  scorers) stays loaded through training and eval. Loaders mark their cache :func:`releasable`;
  :func:`release_memory` clears them (a later step that needs one loads it again) and the
  registries' per-process instances.

Both are no-ops where they do not apply (not glibc: macOS, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from typing import Any, TypeVar

#: glibc's mallopt parameter number for the mmap threshold
_M_MMAP_THRESHOLD = -3
#: buffers from this size on are mmapped (freed = returned to the OS); glibc's own default start value
MMAP_THRESHOLD = 256 * 1024

_RELEASABLE: list[Callable[[], None]] = []
_tuned = False

F = TypeVar("F", bound=Callable[..., Any])


def _libc() -> Any | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None  # glibc only


def tune_allocator() -> bool:
    """Pin glibc's mmap threshold (see the module docstring); once per process. False where not glibc."""
    global _tuned
    if _tuned:
        return True
    libc = _libc()
    if libc is None:
        return False
    _tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _tuned


def releasable(cached: F) -> F:
    """Mark a per-process cached loader (``functools.lru_cache``) as freed by :func:`release_memory`."""
    _RELEASABLE.append(cached.cache_clear)  # type: ignore[attr-defined]
    return cached


def release_memory() -> None:
    """Free cached models and per-process instances, collect garbage, return the heap's free memory."""
    from curation import registry

    for clear in _RELEASABLE:
        clear()
    registry.clear_instances()
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


__all__ = ["MMAP_THRESHOLD", "release_memory", "releasable", "tune_allocator"]
