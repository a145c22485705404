"""Helpers for memory-mapped sources."""

from __future__ import annotations

import mmap


def drop_pages(mm: mmap.mmap, start: int, length: int) -> None:
    """Drop the pages of ``[start, start+length)`` from this process's resident set.

    The mapping is read-only and file-backed, so nothing is lost: the kernel keeps
    the page cache and re-reads on a later access. Without this, reading a whole
    model through one mapping makes RSS grow to the size of the model.
    """
    if length <= 0 or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    lo = start - start % page
    hi = start + length
    hi += -hi % page
    hi = min(hi, len(mm))
    try:
        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
    except (OSError, ValueError):
        pass
