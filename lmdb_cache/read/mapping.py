"""A process's mapping of ``data.mdb``, for advice to the kernel: where it is (py-lmdb does not
say) and ``madvise`` over it (how its pages are faulted in)."""

from __future__ import annotations

import ctypes
import os

MADV_NORMAL = 0  # read-around on each fault (LMDB's default)
MADV_RANDOM = 1  # no read-around (what MDB_NORDAHEAD asks)
MADV_POPULATE_WRITE = 23  # fault in, writable, every page of a range (Linux 5.14)


def find_mapping(data: str, writable: bool = False) -> tuple[int, int] | None:
    """``(address, length)`` of this process's mapping of the file ``data`` (the first one,
    writable when asked), from ``/proc/self/maps``; None where there is none or no such file."""
    real = os.path.realpath(data)
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) < 6 or fields[5].strip() != real:
                    continue
                if writable and "w" not in fields[1]:
                    continue
                start, end = (int(part, 16) for part in fields[0].split("-"))
                return start, end - start
    except OSError:
        return None
    return None


def advise(address: int, length: int, advice: int) -> bool:
    """``madvise`` over a range (widened to whole pages); False where the kernel refuses."""
    page = os.sysconf("SC_PAGE_SIZE")
    start = address - address % page
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return bool(libc.madvise(start, length + address - start, advice) == 0)
