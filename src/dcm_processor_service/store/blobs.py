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
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .._errors import IntegrityError, InvalidInputError, NotFoundError, StoreUnavailableError
from .base import CHUNK_SIZE

__all__ = ["BlobInfo", "BlobStore", "DirectoryBlobStore", "VerifyingReader", "copy_stream"]

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
        data = self._raw.read(len(buffer))
        if not data:
            self._verify()
            return 0
        n = len(data)
        buffer[:n] = data
        self._hash.update(data)
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


def copy_stream(source: BinaryIO, write: object, chunk_size: int = CHUNK_SIZE) -> tuple[int, str]:
    """Copy ``source`` chunk by chunk to the callable ``write``; return (size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    read = source.read
    while True:
        chunk = read(chunk_size)
        if not chunk:
            break
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise InvalidInputError(
                f"file source must be a binary stream, its read() returned {type(chunk).__name__}"
            )
        digest.update(chunk)
        write(chunk)  # type: ignore[operator]
        size += len(chunk)
    return size, digest.hexdigest()


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
            with open(part, "wb", buffering=0) as out:
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
            raw = open(self.path(info.key), "rb")  # noqa: SIM115 - closed by the reader
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
