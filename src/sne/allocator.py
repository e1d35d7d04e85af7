"""The C allocator's settings for the command line's long CPU work."""

from __future__ import annotations

import ctypes
import os
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Blocks up to this size come from the heap, and freed memory is kept up to this much.
_THRESHOLD = 1 << 30
#: Set by a user who tunes glibc's allocator themselves: then it is left as they set it.
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_large_blocks_in_heap() -> bool:
    """On glibc, serve blocks up to 1 GiB from the heap and keep freed memory for reuse; return
    whether the settings were changed.

    Training frees and allocates tensors of the same sizes every step. glibc maps each block above
    its mmap threshold (at most 32 MiB) afresh and unmaps it when freed, so every step faults in
    zeroed pages again: 20% of the CPU time of zoo generation was spent in the kernel. Peak memory
    is kept rather than returned. Leaves a process alone where the user set glibc's allocator
    variables, and on other C libraries."""
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in _USER_SETTINGS) \
            or "malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    mallopt = ctypes.CDLL(None).mallopt
    return all([mallopt(option, _THRESHOLD) for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)])
