"""File-to-file copies done by the kernel, hashed on the side.

Copying a session file between a regular file and the blob folder through Python
buffers costs two memory copies per byte plus the sha256 on the same thread; ``cp``
asks the kernel to copy (``copy_file_range``). :func:`copy_hashed` does the same and
computes the sha256 in a helper thread while the kernel copies the next chunk (hashlib
and ``copy_file_range`` both release the GIL), so a copy takes about the longer of
``cp``'s time and the time to hash the bytes once.

An upload into the blob folder also starts the disk write of each piece once it is
hashed (``write_back``, see :mod:`.write_back`), so the disk writes while the next
piece is copied and the final ``fsync`` has little left to do.

Which bytes are hashed is the caller's choice (``hash_fd``): an upload hashes the
*destination* (the bytes as stored, even if the source changes meanwhile), a download
hashes the *source* blob (what is verified against the recorded sha256). Both are
hashed from a read-only mapping of the page cache the copy has just filled.

:func:`regular_file` says whether a stream can take this path (a regular file with a
descriptor); everything else - pipes, sockets, ``BytesIO``, file systems without
``copy_file_range`` - uses the buffered copy (:func:`~.blobs.copy_stream`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import stat
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from .write_back import start_write_back

__all__ = ["KERNEL_COPY_CHUNK", "KernelCopyUnsupported", "copy_hashed", "regular_file"]

#: Bytes per ``copy_file_range`` call (and per hashed piece): large enough that the
#: per-call cost vanishes, small enough that hashing overlaps the next copy.
KERNEL_COPY_CHUNK = 8 * 1024 * 1024

#: errno values that mean "this kernel or file system cannot copy_file_range these
#: files": the caller falls back to the buffered copy (nothing was written yet).
_UNSUPPORTED = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}


class KernelCopyUnsupported(Exception):
    """The kernel refused the first ``copy_file_range`` call: copy another way."""


def regular_file(stream: Any) -> int | None:
    """The descriptor of ``stream`` when it is a seekable regular file, else ``None``."""
    fileno = getattr(stream, "fileno", None)
    if fileno is None or not hasattr(os, "copy_file_range"):
        return None
    try:
        fd = int(fileno())
        seekable = stream.seekable()
        return fd if seekable and stat.S_ISREG(os.fstat(fd).st_mode) else None
    except (OSError, ValueError, AttributeError):
        return None


def _hash_range(digest: Any, fd: int, offset: int, size: int) -> None:
    """Feed ``size`` bytes of ``fd`` from ``offset`` to ``digest``, hashed straight from
    the page cache (a read-only mapping: no copy into a buffer)."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    if os.fstat(fd).st_size < offset + size:
        raise OSError(errno.EIO, "file shrank while it was being copied")
    with (
        mmap.mmap(fd, offset + size - start, access=mmap.ACCESS_READ, offset=start) as mapped,
        memoryview(mapped) as view,
    ):
        digest.update(view[offset - start :])


def _hash_and_write_back(digest: Any, fd: int, offset: int, size: int) -> None:
    """:func:`_hash_range`, then start writing the range (of the destination) to disk."""
    _hash_range(digest, fd, offset, size)
    start_write_back(fd, offset, size)


def copy_hashed(
    src_fd: int,
    src_offset: int,
    dst_fd: int,
    dst_offset: int,
    *,
    hash_fd: int,
    limit: int | None = None,
    chunk: int = KERNEL_COPY_CHUNK,
    write_back: bool = False,
) -> tuple[int, str]:
    """Copy ``src_fd`` from ``src_offset`` to its end into ``dst_fd`` at ``dst_offset``
    with ``copy_file_range``; return (bytes copied, sha256 hex of them as read from
    ``hash_fd``, which is ``src_fd`` or ``dst_fd``). ``limit``: copy at most this many
    bytes (a reader that expects N bytes asks for N + 1 to see that there are more).
    ``write_back`` (``hash_fd`` is ``dst_fd``): start the disk write of each piece as
    soon as it is hashed, for a copy that will be fsync-ed.

    Raises :class:`KernelCopyUnsupported` when the very first call is refused (nothing
    was copied); any later error is an ``OSError`` of the copy.
    """
    hash_base = src_offset if hash_fd == src_fd else dst_offset
    if write_back and hash_fd != dst_fd:
        raise ValueError("write_back needs hash_fd to be the destination")
    hash_piece = _hash_and_write_back if write_back else _hash_range
    digest = hashlib.sha256()
    hasher: ThreadPoolExecutor | None = None
    pending: Future[None] | None = None
    total = 0
    try:
        while True:
            want = chunk if limit is None else min(chunk, limit - total)
            try:
                n = (
                    os.copy_file_range(src_fd, dst_fd, want, src_offset + total, dst_offset + total)
                    if want > 0
                    else 0
                )
            except OSError as exc:
                if total == 0 and exc.errno in _UNSUPPORTED:
                    raise KernelCopyUnsupported(str(exc)) from exc
                raise
            if pending is not None:
                pending.result()
                pending = None
            if not n:
                break
            if hasher is None:
                hasher = ThreadPoolExecutor(1, thread_name_prefix="sha256")
            pending = hasher.submit(hash_piece, digest, hash_fd, hash_base + total, n)
            total += n
    finally:
        if pending is not None:  # only on an error: the error of the copy is the one raised
            with contextlib.suppress(Exception):
                pending.result()
        if hasher is not None:
            hasher.shutdown(wait=True)
    return total, digest.hexdigest()
