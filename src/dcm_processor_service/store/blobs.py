"""Blob storage: streamed, atomic, checksummed byte objects.

A :class:`BlobStore` writes a stream to a new immutable blob and returns its
:class:`BlobInfo` (key, size, sha256). Records point at blobs; replacing a file means
writing a new blob, switching the record in a transaction, then deleting the old blob —
so a reader never sees a partial file and the previous version stays readable until the
new one is complete.

:class:`DirectoryBlobStore` keeps blobs as files in a directory (the SQLite provider's
``<db>.blobs`` folder, or a shared directory for PostgreSQL). Writes go to
``tmp/<uuid>.part``, are fsync-ed, then renamed into place.

:class:`VerifyingReader` wraps any raw reader and checks size and sha256 when the end is
reached, raising :class:`IntegrityError` on a mismatch.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import io
import logging
import os
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .._errors import IntegrityError, InvalidInputError, NotFoundError, StoreUnavailableError
from .base import CHUNK_SIZE

__all__ = [
    "COPY_BUFFER",
    "BlobInfo",
    "BlobStore",
    "DirectoryBlobStore",
    "VerifyingReader",
    "copy_stream",
    "pump",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: its key, its size in bytes and the hex sha256 of its content."""

    key: str
    size: int
    sha256: str


class VerifyingReader(io.RawIOBase):
    """Reads from ``raw`` and verifies ``size`` and ``sha256`` at end of stream."""

    def __init__(self, raw: BinaryIO, size: int, sha256: str, what: str) -> None:
        super().__init__()
        self._raw = raw
        self._expected_size = size
        self._expected_sha = sha256
        self._what = what
        self._hash = hashlib.sha256()
        self._seen = 0
        self._verified = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        raw_readinto = getattr(self._raw, "readinto", None)
        if raw_readinto is not None:
            n = raw_readinto(buffer) or 0
        else:
            data = self._raw.read(len(buffer))
            n = len(data)
            buffer[:n] = data
        if not n:
            self._verify()
            return 0
        self._hash.update(memoryview(buffer)[:n])
        self._seen += n
        if self._seen > self._expected_size:
            self._verify()
        return n

    def _verify(self) -> None:
        if self._verified:
            return
        self._verified = True
        if self._seen != self._expected_size:
            raise IntegrityError(
                f"{self._what}: stored size is {self._seen} bytes but {self._expected_size} "
                "were recorded - the stored copy is damaged"
            )
        digest = self._hash.hexdigest()
        if digest != self._expected_sha:
            raise IntegrityError(
                f"{self._what}: sha256 {digest} does not match the recorded {self._expected_sha} "
                "- the stored copy is damaged"
            )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()
        super().close()


#: Buffer size for copying streams into files (one reused buffer).
COPY_BUFFER = 4 * 1024 * 1024


def copy_stream(source: BinaryIO, write: Any, chunk_size: int = CHUNK_SIZE) -> tuple[int, str]:
    """Copy ``source`` to the callable ``write`` (which receives memoryviews); return
    (size, sha256).

    Reads into two reused buffers (``readinto``) when the source has it. Once a stream
    turns out to be larger than one chunk, the sha256 of each chunk is computed in a
    helper thread while the chunk is written (hashlib releases the GIL), so hashing
    costs little extra wall time on large files. Memory stays at two chunks whatever
    the size.
    """
    digest = hashlib.sha256()
    readinto = getattr(source, "readinto", None)
    buffers = [bytearray(chunk_size)] if readinto is not None else []
    hasher: ThreadPoolExecutor | None = None
    pending: Future[None] | None = None
    size = k = 0
    try:
        while True:
            if readinto is not None:
                n = readinto(buffers[k]) or 0
                view = memoryview(buffers[k])[:n]
            else:
                chunk = source.read(chunk_size)
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise InvalidInputError(
                        f"file source must be a binary stream, its read() returned {type(chunk).__name__}"
                    )
                n, view = len(chunk), memoryview(chunk)
            if pending is not None:
                pending.result()
                pending = None
            if not n:
                break
            if hasher is None and n == chunk_size:
                # more is likely to come: overlap hashing with writing from here on
                hasher = ThreadPoolExecutor(1, thread_name_prefix="sha256")
                if readinto is not None:
                    buffers.append(bytearray(chunk_size))
            if hasher is not None:
                pending = hasher.submit(digest.update, view)
            else:
                digest.update(view)
            write(view)
            size += n
            if hasher is not None and readinto is not None:
                k ^= 1
    finally:
        if pending is not None:
            pending.cancel()
        if hasher is not None:
            hasher.shutdown(wait=True)
    return size, digest.hexdigest()


def pump(reader: BinaryIO, write: Any, chunk_size: int = COPY_BUFFER) -> int:
    """Copy ``reader`` to the callable ``write`` through one reused buffer; return the
    number of bytes. Used to stream a (verifying) reader into a file."""
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    total = 0
    while n := reader.readinto(buffer):  # type: ignore[attr-defined]
        write(view[:n])
        total += n
    return total


class BlobStore(abc.ABC):
    """Immutable blobs addressed by key."""

    @abc.abstractmethod
    def write(self, source: BinaryIO) -> BlobInfo:
        """Stream ``source`` into a new blob; it becomes visible only when complete."""

    @abc.abstractmethod
    def open(self, info: BlobInfo, what: str) -> BinaryIO:
        """A verifying reader of the blob; :class:`NotFoundError` if it is gone."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete the blob; a missing blob is not an error."""


class DirectoryBlobStore(BlobStore):
    """Blobs as files under ``root`` (``<root>/<k[:2]>/<key>``), written atomically."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._tmp = self.root / "tmp"
        self._made: set[str] = set()  # fan-out folders known to exist
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(f"cannot create blob directory {self.root}: {exc}") from exc

    def path(self, key: str) -> Path:
        """The file that holds blob ``key``."""
        if not key or "/" in key or "\\" in key or key.startswith("."):
            raise InvalidInputError(f"invalid blob key {key!r}")
        return self.root / key[:2] / key

    def write(self, source: BinaryIO) -> BlobInfo:
        key = uuid.uuid4().hex
        part = self._tmp / f"{key}.part"
        try:
            with open(part, "wb") as out:
                size, sha = copy_stream(source, out.write)
                if self.fsync:
                    os.fsync(out.fileno())
            final = self.path(key)
            if key[:2] not in self._made:
                final.parent.mkdir(exist_ok=True)
                self._made.add(key[:2])
            os.replace(part, final)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise
        return BlobInfo(key, size, sha)

    def open(self, info: BlobInfo, what: str) -> BinaryIO:
        try:
            raw = open(self.path(info.key), "rb", buffering=0)  # noqa: SIM115 - closed by the reader
        except FileNotFoundError:
            raise NotFoundError(
                f"{what}: stored bytes are missing ({self.path(info.key)})"
            ) from None
        return io.BufferedReader(VerifyingReader(raw, info.size, info.sha256, what), CHUNK_SIZE)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(key).unlink()

    def sweep_partial(self, older_than_s: float = 24 * 3600) -> int:
        """Delete ``.part`` files left by crashed writers; return how many."""
        cutoff = time.time() - older_than_s
        removed = 0
        for part in self._tmp.glob("*.part"):
            with contextlib.suppress(OSError):
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
        if removed:
            logger.info(
                "removed %d partial blob(s) left by interrupted writers in %s", removed, self._tmp
            )
        return removed
