"""Blob storage: streamed, atomic, checksummed byte objects.

A :class:`BlobStore` writes a stream to a new immutable blob and returns its
:class:`BlobInfo` (key, size, sha256). Records point at blobs; replacing a file means
writing a new blob, switching the record in a transaction, then deleting the old blob —
so a reader never sees a partial file and the previous version stays readable until the
new one is complete.

:class:`DirectoryBlobStore` keeps blobs as files in a directory (the SQLite provider's
``<db>.blobs`` folder, or a shared directory for PostgreSQL). Writes go to
``tmp/<uuid>.part``, are fsync-ed, renamed into place, and the folder is fsync-ed; the
disk write of a durable blob is started piece by piece while it is filled
(:mod:`.write_back`), so the one ``fsync`` per file mostly waits for what is already
on its way. A batch of blobs for one transaction (the ingest's group commit) is
written with ``durable=False`` and flushed together by :meth:`BlobStore.make_durable`
before the transaction commits.

A blob that a record will reference is written with :meth:`BlobStore.writing`: the
writer holds it (a lock, or a lease) until the record is committed, so
:meth:`BlobStore.collect` - the garbage collection of leftovers of crashed writers -
never removes data a live writer is still committing.

:class:`VerifyingReader` wraps any raw reader and checks size and sha256 when the end is
reached, raising :class:`IntegrityError` on a mismatch.
"""

from __future__ import annotations

import abc
import contextlib
import errno
import fcntl
import functools
import hashlib
import io
import logging
import os
import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .._errors import (
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    StorageError,
    StoreUnavailableError,
)
from .base import CHUNK_SIZE
from .file_modes import private_folder
from .garbage import GarbageReport, ReferencedKeys
from .kernel_copy import KERNEL_COPY_CHUNK, KernelCopyUnsupported, copy_hashed, regular_file
from .write_back import start_write_back

__all__ = [
    "COPY_BUFFER",
    "BlobFileReader",
    "BlobInfo",
    "BlobStore",
    "DirectoryBlobStore",
    "VerifyingReader",
    "check_integrity",
    "copy_stream",
    "copy_to_file",
    "pump",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlobInfo:
    """A stored blob: its key, its size in bytes and the hex sha256 of its content."""

    key: str
    size: int
    sha256: str


def check_integrity(what: str, found: BlobInfo, size: int, sha256: str) -> None:
    """Raise :class:`IntegrityError` when the bytes read (``found``: their size and
    sha256) are not the ``size`` and ``sha256`` that were recorded."""
    if found.size != size:
        raise IntegrityError(
            f"{what}: stored size is {found.size} bytes but {size} "
            "were recorded - the stored copy is damaged"
        )
    if found.sha256 != sha256:
        raise IntegrityError(
            f"{what}: sha256 {found.sha256} does not match the recorded {sha256} "
            "- the stored copy is damaged"
        )


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
        check_integrity(
            self._what,
            BlobInfo("", self._seen, self._hash.hexdigest()),
            self._expected_size,
            self._expected_sha,
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


def copy_to_file(reader: BinaryIO, out: BinaryIO) -> int:
    """Copy a blob ``reader`` (from :meth:`BlobStore.open`) into the file ``out``; return
    the number of bytes. A blob file copied into a regular file is copied by the kernel
    and verified on the side (:class:`BlobFileReader`); anything else is pumped
    through one buffer."""
    copy_into = getattr(reader, "copy_into", None)
    if copy_into is not None:
        copied: int | None = copy_into(out)
        if copied is not None:
            return copied
    return pump(reader, out.write)


class BlobFileReader(io.BufferedReader):
    """The verifying reader of a blob kept as a file: reads verify as
    :class:`VerifyingReader` does, and :meth:`copy_into` lets the kernel copy the whole
    blob into another file while its sha256 is checked in a helper thread."""

    def __init__(self, raw: io.FileIO, info: BlobInfo, what: str) -> None:
        super().__init__(VerifyingReader(raw, info.size, info.sha256, what), CHUNK_SIZE)
        self._blob_fd = raw.fileno()
        self._info = info
        self._what = what

    def copy_into(self, out: BinaryIO) -> int | None:
        """Copy the whole blob into ``out`` at its position, verified; ``None`` (nothing
        done) when this reader was read from already, ``out`` is not a regular file, or
        the kernel cannot copy between them."""
        out_fd = regular_file(out)
        if out_fd is None or os.lseek(self._blob_fd, 0, os.SEEK_CUR) != 0:
            return None
        out.flush()
        start = out.tell()
        try:
            size, sha = copy_hashed(
                self._blob_fd, 0, out_fd, start, hash_fd=self._blob_fd, limit=self._info.size + 1
            )
        except KernelCopyUnsupported:
            return None
        check_integrity(
            self._what, BlobInfo(self._info.key, size, sha), self._info.size, self._info.sha256
        )
        out.seek(start + size)
        return size


class BlobStore(abc.ABC):
    """Immutable blobs addressed by key."""

    @abc.abstractmethod
    def write(self, source: BinaryIO) -> BlobInfo:
        """Stream ``source`` into a new blob; it becomes visible only when complete.
        Nothing protects it from :meth:`collect` once this returns: a blob that a record
        will reference is written with :meth:`writing`."""

    @abc.abstractmethod
    def open(self, info: BlobInfo, what: str) -> BinaryIO:
        """A verifying reader of the blob; :class:`NotFoundError` if it is gone."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Delete the blob; a missing blob is not an error."""

    @contextlib.contextmanager
    def writing(self, source: BinaryIO, *, durable: bool = True) -> Iterator[BlobInfo]:
        """Write a blob for a record that the ``with`` block commits. Until the block
        ends the blob is held by this live writer, so :meth:`collect` leaves it alone;
        when the block raises, the blob is deleted.

        ``durable=False`` (group commit): the blob may still be only in memory caches
        when the block starts; the writer calls :meth:`make_durable` on the blobs of a
        batch before it commits their records. The default store writes durably
        either way."""
        info = self.write(source)
        try:
            yield info
        except BaseException:
            self.delete(info.key)
            raise

    def make_durable(self, keys: Sequence[str]) -> None:
        """Make the blobs ``keys``, written with ``durable=False``, survive a crash of
        the machine (one flush for the batch). The default store has nothing to do."""
        return None

    def collect(
        self, referenced: ReferencedKeys, report: GarbageReport, *, dry_run: bool = False
    ) -> None:
        """Remove blobs no record references and leftovers of crashed writers, never one
        a live writer holds; count them in ``report``. The default collects nothing."""
        return None


_KEY = re.compile(r"^[0-9a-f]{32}$")


class DirectoryBlobStore(BlobStore):
    """Blobs as files under ``root`` (``<root>/<k[:2]>/<key>``), written atomically.

    Patient data: folders are created owner-only (0700, an existing root or ``tmp`` folder
    of ours is tightened), files 0600. A writer creates ``tmp/<key>.part``, locks it
    (``flock``), fills and fsyncs it, renames it into place - the lock stays on the file -
    and keeps the lock until the record that references the blob is committed
    (:meth:`writing`). :meth:`collect` removes only files it can lock itself, so it never
    touches a live writer's file; the kernel drops the lock of a writer that dies, which
    makes its leftovers collectable at once. (``flock`` must work on the folder's file
    system: local file systems and NFSv4 do.)
    """

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._tmp = self.root / "tmp"
        self._made: set[str] = set()  # fan-out folders known to exist
        try:
            for folder in (self.root, self._tmp):
                private_folder(folder)
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot create blob directory {self.root}: {exc.strerror or exc}"
            ) from exc

    def path(self, key: str) -> Path:
        """The file that holds blob ``key``."""
        if not key or "/" in key or "\\" in key or key.startswith("."):
            raise InvalidInputError(f"invalid blob key {key!r}")
        return self.root / key[:2] / key

    def _error(self, exc: OSError, action: str) -> StorageError:
        """The package error for a failed operation on the blob folder."""
        reason = exc.strerror or str(exc)
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            hint = (
                " - this user cannot write there: check the folder's owner and mode, or "
                "whether it is mounted read-only"
            )
        elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
            hint = " - the disk (or quota) is full"
        else:
            hint = ""
        return StorageError(f"cannot {action} in blob folder {self.root}: {reason}{hint}")

    def _create_locked(self) -> tuple[int, str, Path]:
        """A new empty ``.part`` file, locked by us. A concurrent :meth:`collect` may
        remove the file between its creation and our lock (it found it unlocked); then
        our lock holds a deleted file, which is detected here and we start over."""
        while True:
            key = uuid.uuid4().hex
            part = self._tmp / f"{key}.part"
            try:
                fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise self._error(exc, "create a file") from exc
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.stat(part).st_ino == os.fstat(fd).st_ino:
                    return fd, key, part
            except FileNotFoundError:
                pass
            os.close(fd)

    def write(self, source: BinaryIO) -> BlobInfo:
        with self.writing(source) as info:
            return info

    @contextlib.contextmanager
    def writing(self, source: BinaryIO, *, durable: bool = True) -> Iterator[BlobInfo]:
        fd, key, part = self._create_locked()
        final: Path | None = None
        try:
            write_back = self.fsync and durable
            with open(fd, "wb", closefd=False) as out:
                written = started = 0  # bytes written; bytes whose disk write was started

                def write(view: memoryview) -> None:
                    nonlocal written, started
                    try:
                        out.write(view)
                        written += len(view)
                        if write_back and written - started >= KERNEL_COPY_CHUNK:
                            out.flush()
                            start_write_back(fd, started, written - started)
                            started = written
                    except OSError as exc:
                        raise self._error(exc, "write a file") from exc

                size, sha = self._fill(source, fd, write, write_back=write_back)
                try:
                    out.flush()
                    if self.fsync and durable:
                        os.fsync(fd)
                except OSError as exc:
                    raise self._error(exc, "write a file") from exc
            final = self.path(key)
            try:
                if key[:2] not in self._made:
                    private_folder(final.parent)
                    self._made.add(key[:2])
                os.replace(part, final)
                if self.fsync and durable:
                    _fsync_folder(final.parent)
            except OSError as exc:
                final = None
                raise self._error(exc, "store a file") from exc
            yield BlobInfo(key, size, sha)
        except BaseException:
            with contextlib.suppress(OSError):
                (final or part).unlink()
            raise
        finally:
            os.close(fd)  # releases the lock: the record is committed (or the blob gone)

    def make_durable(self, keys: Sequence[str]) -> None:
        """fsync each blob file (its bytes), then each folder they were renamed into
        (their names) once - a batch of N blobs costs N + (folders) flushes that the
        file system mostly merges into one journal commit, instead of a commit per
        blob. Nothing to do when the store was opened with ``fsync=False``."""
        if not self.fsync:
            return
        try:
            for key in keys:
                fd = os.open(self.path(key), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for folder in sorted({self.path(key).parent for key in keys}):
                _fsync_folder(folder)
        except OSError as exc:
            raise self._error(exc, "flush files") from exc

    def _fill(self, source: BinaryIO, fd: int, write: Any, *, write_back: bool) -> tuple[int, str]:
        """Copy ``source`` into the new blob file ``fd``; (size, sha256) of the bytes
        stored. A regular file is copied by the kernel and the copy hashed (see
        :mod:`.kernel_copy`); other streams go through :func:`copy_stream`, whose
        errors of the source pass through as they are (not the store's). ``write_back``:
        the file will be fsync-ed, so its disk write is started piece by piece while it
        is filled (:mod:`.write_back`)."""
        source_fd = regular_file(source)
        if source_fd is not None:
            start = source.tell()
            try:
                size, sha = copy_hashed(source_fd, start, fd, 0, hash_fd=fd, write_back=write_back)
            except KernelCopyUnsupported:
                pass
            except OSError as exc:
                raise self._error(exc, "copy a file") from exc
            else:
                source.seek(start + size)
                return size, sha
        return copy_stream(source, write)

    def open(self, info: BlobInfo, what: str) -> BinaryIO:
        path = self.path(info.key)
        try:
            raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by the reader
        except FileNotFoundError:
            raise NotFoundError(f"{what}: stored bytes are missing ({path})") from None
        except OSError as exc:
            raise self._error(exc, f"read {path.name}") from exc
        return BlobFileReader(raw, info, what)

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # the record no longer points at it: garbage for collect()
            logger.warning("could not delete blob %s (%s); db gc will remove it", key, exc)

    def sweep_partial(self, report: GarbageReport | None = None, *, dry_run: bool = False) -> int:
        """Remove ``.part`` files of writers that died (no live writer holds them);
        return how many. Cheap (only the ``tmp`` folder): the store runs it on its first
        write."""
        report = report if report is not None else GarbageReport(str(self.root))
        before = report.removed.get(PARTIAL, 0)
        for part in sorted(self._tmp.glob("*.part")):
            _remove_unheld(part, PARTIAL, report, dry_run, still_garbage=None)
        return report.removed.get(PARTIAL, 0) - before

    def collect(
        self, referenced: ReferencedKeys, report: GarbageReport, *, dry_run: bool = False
    ) -> None:
        self.sweep_partial(report, dry_run=dry_run)
        files: dict[str, Path] = {}
        for folder in sorted(self.root.iterdir()):
            if len(folder.name) == 2 and folder.is_dir():
                files.update((f.name, f) for f in folder.iterdir() if _KEY.match(f.name))
        keys = sorted(files)
        unreferenced = set(keys) - referenced(keys)
        for key in sorted(unreferenced):
            _remove_unheld(
                files[key],
                UNREFERENCED,
                report,
                dry_run,
                still_garbage=functools.partial(_unreferenced, referenced, key),
            )


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries (a file renamed into it survives a machine crash)."""
    fd = os.open(folder, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: kinds of :class:`GarbageReport` items
PARTIAL = "partial files"
UNREFERENCED = "unreferenced blobs"


def _unreferenced(referenced: ReferencedKeys, key: str) -> bool:
    return not referenced([key])


def _remove_unheld(
    path: Path,
    kind: str,
    report: GarbageReport,
    dry_run: bool,
    still_garbage: Callable[[], bool] | None,
) -> None:
    """Remove ``path`` (count it in ``report``) unless a live writer holds its lock, or
    ``still_garbage()`` - asked while we hold the lock - says a record took it meanwhile.
    A writer keeps its lock until its record is committed, so what we can lock is either
    referenced by then or abandoned."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return  # gone meanwhile (renamed into place, deleted by its writer)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report.in_flight += 1
            return
        try:
            if os.stat(path).st_ino != os.fstat(fd).st_ino:
                return
        except FileNotFoundError:
            return
        if still_garbage is not None and not still_garbage():
            return
        size = os.fstat(fd).st_size
        if not dry_run:
            try:
                path.unlink()
            except FileNotFoundError:
                return
        report.add(kind, size)
    finally:
        os.close(fd)
