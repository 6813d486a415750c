"""release_memory frees what finished steps cached; tune_allocator pins glibc's mmap threshold."""

from __future__ import annotations

import ctypes.util
import functools
import subprocess
import sys

import pytest

from curation import memory
from curation.registry import Registry


class _Model:
    built = 0

    def __init__(self, size: int = 1) -> None:
        _Model.built += 1
        self.size = size


def test_release_memory_clears_releasable_loaders_and_registry_instances(monkeypatch):
    monkeypatch.setattr(memory, "_RELEASABLE", [])
    loads = []

    @memory.releasable
    @functools.lru_cache(maxsize=1)
    def loader() -> object:
        loads.append(1)
        return object()

    first = loader()
    assert loader() is first and len(loads) == 1  # cached until released
    reg = Registry("test-model")
    reg.register("m", f"{__name__}:_Model")
    a = reg.instance("m", size=2)
    assert reg.instance("m", size=2) is a

    memory.release_memory()

    assert loader() is not first and len(loads) == 2  # loaded again by the next step that asks
    assert reg.instance("m", size=2) is not a


@pytest.mark.skipif(not (ctypes.util.find_library("c") or "").startswith("libc.so"), reason="glibc only")
def test_tune_allocator_returns_large_freed_buffers_to_the_os():
    # in a fresh process: after freeing a 16 MiB block glibc would raise its mmap threshold to 16 MiB, so the
    # next 8 MiB buffers would come from the heap and stay resident once freed; pinned, they are unmapped
    code = """
import ctypes, sys
from curation.memory import tune_allocator
if sys.argv[1] == "1":
    assert tune_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
libc.free(libc.malloc(16 << 20))  # a freed mmapped block: glibc's dynamic threshold rises to 16 MiB
base = rss()
bufs = [libc.malloc(8 << 20) for _ in range(10)]
for b in bufs:
    ctypes.memset(b, 1, 8 << 20)
for b in reversed(bufs[:-1]):  # the last one stays, so the heap top cannot simply shrink
    libc.free(b)
print((rss() - base) >> 20)
"""
    kept = {}
    for tuned in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", code, tuned], capture_output=True, text=True, check=True)
        kept[tuned] = int(out.stdout.split()[-1])
    assert kept["0"] >= 70  # untuned: the nine freed 8 MiB buffers are still resident
    assert kept["1"] <= 20  # tuned: only the live one is
