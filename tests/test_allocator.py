"""The command line keeps large freed blocks in glibc's heap instead of mapping them afresh."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

# Page faults of 10 rounds of malloc, fill and free of a 64 MiB block: above glibc's largest
# default mmap threshold (32 MiB), so mapped and faulted in afresh each round unless kept in the heap.
FAULTS = """
import ctypes, resource, sys
from sne.allocator import keep_large_blocks_in_heap
print(keep_large_blocks_in_heap() if sys.argv[1] == "tuned" else False)
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    block = libc.malloc(64 << 20)
    ctypes.memset(block, 1, 64 << 20)
    libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
BLOCK_PAGES = (64 << 20) // os.sysconf("SC_PAGE_SIZE")


def _faults(mode, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_freed_large_blocks_are_reused_without_faulting_their_pages_in_again():
    changed, tuned = _faults("tuned")
    unchanged, default = _faults("default")
    assert changed and not unchanged
    assert default >= 9 * BLOCK_PAGES and tuned <= 2 * BLOCK_PAGES


def test_a_user_who_tunes_the_allocator_is_left_alone():
    changed, faults = _faults("tuned", MALLOC_TRIM_THRESHOLD_="131072")
    assert not changed and faults >= 9 * BLOCK_PAGES


def test_the_command_line_tunes_the_allocator(monkeypatch):
    from sne import cli

    calls = []
    monkeypatch.setattr(cli, "keep_large_blocks_in_heap", lambda: calls.append(1))
    monkeypatch.setattr(sys, "argv", ["sne", "encoders"])
    cli.main()
    assert calls == [1]
