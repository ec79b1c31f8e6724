"""Start writing a file's bytes to disk while the file is still being filled.

A blob is fsync-ed before the call that stores it returns. Left to the final
``fsync``, the whole file is written to disk only then: the copy and the disk write
happen one after the other, and a 1 GiB upload waits about as long for the ``fsync``
as for the copy. :func:`start_write_back` asks the kernel to start writing a range as
soon as it is filled (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``: it queues the
write and returns, it waits for nothing and flushes no metadata), so the disk works
while the next range is copied and hashed and the final ``fsync`` has little left to
do. It is only a hint: the final ``fsync`` is still what makes the file durable and
what reports a write error. Where the call does not exist (not Linux, no ``ctypes``)
it does nothing and the final ``fsync`` does all the work, as before.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

__all__ = ["start_write_back"]

logger = logging.getLogger(__name__)

#: ``SYNC_FILE_RANGE_WRITE`` of ``<fcntl.h>`` (Linux): start writing dirty pages of the
#: range, do not wait for them.
_SYNC_FILE_RANGE_WRITE = 2


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range``, or ``None`` when this system has none (looked up
    once, on first use: the import of ``ctypes`` is kept off start-up)."""
    try:
        import ctypes
        import ctypes.util
        import sys

        if not sys.platform.startswith("linux"):
            return None
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function: Any = libc.sync_file_range
    except (ImportError, OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def start_write_back(fd: int, offset: int, length: int) -> None:
    """Start writing bytes ``offset`` .. ``offset + length`` of the file ``fd`` to disk
    and return without waiting. A hint: failures are ignored (the caller's ``fsync``
    reports them), and it does nothing where the system cannot do it."""
    function = _sync_file_range()
    if function is not None and length > 0 and function(fd, offset, length, _SYNC_FILE_RANGE_WRITE):
        logger.debug("sync_file_range on fd %d failed; the final fsync writes the range", fd)
