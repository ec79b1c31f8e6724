"""Blobs kept inside PostgreSQL as chunked ``bytea`` rows.

Why chunked rows and not large objects: rows are ordinary MVCC data (they are dumped,
replicated, dropped with the database and visible to ``pg_dump --table``), they need no
``lo_unlink`` bookkeeping (large objects leak when a referencing row is deleted without
it), they work through connection poolers, and each chunk is an independent, idempotent
``INSERT ... ON CONFLICT`` - so an upload survives a dropped connection by re-sending
the one chunk it holds (memory stays at one chunk) instead of restarting the stream.
Large objects would also need one long transaction per upload.

Layout::

    blobs(key PK, size, sha256, chunks, complete, created_at)
    blob_chunks(key, seq, data bytea STORAGE EXTERNAL, PK (key, seq))

``data`` is ``STORAGE EXTERNAL`` (out of line, not compressed): DICOM pixel data and
NIfTI files are usually compressed already, and pglz would cost CPU for little gain.

Writing: a ``blobs`` row with ``complete = false`` is inserted first, then one
transaction per ~1 MiB chunk (committed without waiting for the WAL flush), then the
row is switched to ``complete = true`` with its size and sha256 (a synchronous commit:
its WAL flush makes every chunk before it durable too). Only complete blobs can be
opened, and records only point at a blob after it is complete, so a reader never sees
a partial blob.

Garbage: a writer that dies leaves an incomplete blob, or a complete one no record
points at (it died before committing the record). A live writer holds a *lease* on its
blob from before the ``blobs`` row exists until its record is committed: a session-level
advisory lock (``pg_advisory_lock_shared(BLOB_LOCK_CLASS, hashtext(key))``) on one
dedicated connection per process (:class:`WriterLeases`), which the server drops when
that process dies. :meth:`PostgresBlobStore.collect` removes only blobs (and stray
chunks) whose lease it can take itself (``pg_try_advisory_xact_lock``), checking again
that they are still garbage while it holds it; and the record's transaction share-locks
the blob row (:meth:`PostgresBlobStore.confirm`), so even a writer that lost its lease
(its connection dropped) fails cleanly instead of committing a record without bytes.

Reading: a blob of one chunk is read with one query. A larger blob is streamed in
batches of chunks (2 MiB per query, the next batch fetched while this one is hashed
and written) from a ``REPEATABLE READ`` snapshot on a connection of its own, so a
reader that is in the middle of a file keeps reading the version it opened even if a
writer replaces the file and deletes the old blob meanwhile (the same guarantee an unlinked-but-open
file gives on POSIX). Memory stays at two chunks when writing and two batches when
reading.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO, TypeVar, cast

import psycopg

from .._errors import InvalidInputError, NotFoundError, StorageError, StoreUnavailableError
from .._safe_text import mask_secrets
from .base import CHUNK_SIZE
from .blobs import BlobInfo, BlobStore, VerifyingReader, check_integrity, copy_stream
from .garbage import GarbageReport, ReferencedKeys
from .sql.core import Tx

__all__ = ["BLOB_LOCK_CLASS", "BLOB_SCHEMA", "PostgresBlobStore", "WriterLeases"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Versioned schema of the blob tables (component ``postgresql-blobs``).
BLOB_SCHEMA: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE IF NOT EXISTS blobs (
                key TEXT PRIMARY KEY, size BIGINT, sha256 TEXT, chunks INTEGER,
                complete BOOLEAN NOT NULL DEFAULT false,
                created_at TIMESTAMPTZ NOT NULL DEFAULT now())""",
            "CREATE INDEX IF NOT EXISTS blobs_incomplete ON blobs (created_at) WHERE NOT complete",
            """CREATE TABLE IF NOT EXISTS blob_chunks (
                key TEXT NOT NULL, seq INTEGER NOT NULL, data BYTEA NOT NULL,
                PRIMARY KEY (key, seq))""",
            "ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL",
        ],
    ),
]

#: ``run(work, write=...)``: a unit of work in a retried transaction (``SQLCore._run``).
Runner = Callable[..., Any]

#: Bytes of chunks fetched per query when a blob is read (one round trip; the next
#: batch is fetched while this one is hashed and written).
READ_BATCH_BYTES = 2 * 1024 * 1024

#: First key of the two-key advisory locks that are blob leases (b"dcmb" as an int).
BLOB_LOCK_CLASS = 0x64636D62
#: kinds of :class:`GarbageReport` items
INCOMPLETE = "incomplete blobs"
UNREFERENCED = "unreferenced blobs"
STRAY = "stray chunks"

# Lease connections inherited from a parent process: kept referenced, never used or
# closed, so that nothing in a forked child writes to the parent's socket.
_inherited: list[Any] = []


class WriterLeases:
    """Leases of the blobs this process is writing: session-level advisory locks held on
    one dedicated connection per process (opened on first use, re-opened after a fork
    or when it broke). The server releases them when the process - so the connection -
    dies, which makes a crashed writer's blobs collectable at once."""

    def __init__(self, connect: Callable[[], Any]) -> None:
        self._connect = connect
        self._conn: Any = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _forked(self) -> None:
        """In a forked child: forget (never touch) the parent's connection and lock."""
        if self._pid != os.getpid():
            if self._conn is not None:
                _inherited.append(self._conn)
            self._conn, self._pid, self._lock = None, os.getpid(), threading.Lock()

    def hold(self, key: str) -> None:
        """Take the lease of blob ``key`` (before its row exists)."""
        self._forked()
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = self._connect()
                try:
                    self._conn.execute(
                        "SELECT pg_advisory_lock_shared(%s, hashtext(%s))", (BLOB_LOCK_CLASS, key)
                    )
                    return
                except psycopg.Error as exc:
                    self._drop()  # the connection broke: reconnect once
                    if attempt == 2:
                        raise StoreUnavailableError(
                            "cannot take the lease of a new blob: "
                            f"{type(exc).__name__}: {mask_secrets(str(exc))}"
                        ) from exc

    def release(self, key: str) -> None:
        """Give the lease back (the record is committed, or the blob deleted)."""
        self._forked()
        with self._lock:
            if self._conn is None or self._conn.closed:
                return
            try:
                self._conn.execute(
                    "SELECT pg_advisory_unlock_shared(%s, hashtext(%s))", (BLOB_LOCK_CLASS, key)
                )
            except psycopg.Error:
                self._drop()  # the connection, and with it the lease, is gone

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Close the lease connection (the store is closing: no write is in flight)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                with contextlib.suppress(Exception):
                    conn.close()


class PostgresBlobStore(BlobStore):
    """:class:`BlobStore` over the ``blobs``/``blob_chunks`` tables.

    ``run`` runs a unit of work in a pooled, retried transaction; ``connect`` opens a
    dedicated connection (for snapshot reads of multi-chunk blobs); ``describe`` names
    the store in messages; ``referenced_by`` lists the ``(table, column)`` pairs whose
    values are blob keys (for the orphan sweep).
    """

    def __init__(
        self,
        run: Runner,
        connect: Callable[[], Any],
        describe: Callable[[], str],
        *,
        referenced_by: Sequence[tuple[str, str]] = (),
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self._run = run
        self._connect = connect
        self._describe = describe
        self._referenced_by = tuple(referenced_by)
        self.chunk_size = chunk_size
        self.leases = WriterLeases(connect)

    # ----------------------------------------------------------------- write
    def write(self, source: BinaryIO) -> BlobInfo:
        return self._write(uuid.uuid4().hex, source)

    @contextlib.contextmanager
    def writing(self, source: BinaryIO, *, durable: bool = True) -> Iterator[BlobInfo]:
        key = uuid.uuid4().hex
        self.leases.hold(key)
        try:
            info = self._write(key, source)
            try:
                yield info
            except BaseException:
                with contextlib.suppress(Exception):
                    self.delete(key)
                raise
        finally:
            self.leases.release(key)

    def confirm(self, tx: Tx, key: str) -> None:
        """In the transaction of the record that will point at blob ``key``: check that
        it is complete and share-lock its row until the record is committed."""
        if tx.one("SELECT 1 AS x FROM blobs WHERE key = ? AND complete FOR KEY SHARE", (key,)):
            return
        raise StorageError(
            f"{self._describe()}: the bytes just written (blob {key}) are gone - a garbage "
            "collection removed them after this writer lost its connection; write again"
        )

    def _write(self, key: str, source: BinaryIO) -> BlobInfo:
        self._run(
            lambda tx: tx.execute(
                "INSERT INTO blobs (key, complete, created_at) VALUES (?, false, now())", (key,)
            )
        )
        sender: ThreadPoolExecutor | None = None
        try:
            digest = hashlib.sha256()
            size = 0
            seq = 0
            pending: Future[None] | None = None
            for chunk in _chunks(source, self.chunk_size):
                # overlap: chunk n is sent by the helper thread while chunk n+1 is read
                # and hashed here (at most two chunks in memory)
                digest.update(chunk)
                size += len(chunk)
                if pending is not None:
                    pending.result()
                if sender is None:
                    sender = ThreadPoolExecutor(1, thread_name_prefix="dcm-blob-upload")
                pending = sender.submit(self._put_chunk, key, seq, chunk)
                seq += 1
            if pending is not None:
                pending.result()
            sha = digest.hexdigest()
            updated = self._run(
                lambda tx: tx.execute(
                    "UPDATE blobs SET size = ?, sha256 = ?, chunks = ?, complete = true"
                    " WHERE key = ?",
                    (size, sha, seq, key),
                )
            )
            if updated != 1:
                raise StorageError(
                    f"{self._describe()}: blob {key} was removed while it was written (a "
                    "garbage collection, after this writer lost its connection); write again"
                )
        except BaseException:
            if sender is not None:
                sender.shutdown(wait=True, cancel_futures=True)
                sender = None
            with contextlib.suppress(Exception):
                self.delete(key)
            raise
        finally:
            if sender is not None:
                sender.shutdown(wait=True)
        return BlobInfo(key, size, sha)

    def _put_chunk(self, key: str, seq: int, chunk: bytes) -> None:
        """Insert one chunk in a transaction of its own. Idempotent: a retry after a
        connection dropped during COMMIT rewrites the row.

        The commit does not wait for the WAL to reach the disk (``synchronous_commit``
        off for this transaction only): the blob's final ``complete = true`` commit
        is synchronous, and flushing the WAL up to that commit flushes every chunk
        written before it (one ordered log). A crash before it loses at most chunks
        of a blob that is not complete - garbage, never visible. This saves one WAL
        flush per MiB on a server that has ``synchronous_commit`` on."""

        def work(tx: Tx) -> None:
            tx.execute("SET LOCAL synchronous_commit TO OFF")
            tx.execute(
                "INSERT INTO blob_chunks (key, seq, data) VALUES (?, ?, ?)"
                " ON CONFLICT (key, seq) DO UPDATE SET data = excluded.data",
                (key, seq, chunk),
            )

        self._run(work)

    # ------------------------------------------------------------------ read
    def open(self, info: BlobInfo, what: str) -> BinaryIO:
        raw: io.RawIOBase | BinaryIO
        if info.size <= self.chunk_size:
            row = self._run(
                lambda tx: tx.one(
                    "SELECT b.complete, b.chunks, c.data FROM blobs b LEFT JOIN blob_chunks c"
                    " ON c.key = b.key AND c.seq = 0 WHERE b.key = ?",
                    (info.key,),
                ),
                write=False,
            )
            if row is None or not row["complete"]:
                raise NotFoundError(
                    f"{what}: stored bytes are missing (blob {info.key} in {self._describe()})"
                )
            if (row["chunks"] or 0) <= 1:
                raw = io.BytesIO(row["data"] or b"")
            else:  # written with a smaller chunk size: stream it
                raw = self._snapshot(info.key, what)
        else:
            raw = self._snapshot(info.key, what)
        return _BlobReader(raw, info, what, self.chunk_size)

    def _snapshot(self, key: str, what: str) -> _SnapshotReader:
        batch = max(1, READ_BATCH_BYTES // self.chunk_size)
        return _SnapshotReader(self._connect, key, what, self._describe, batch)

    # ---------------------------------------------------------------- delete
    def delete(self, key: str) -> None:
        def work(tx: Tx) -> None:
            tx.execute("DELETE FROM blob_chunks WHERE key = ?", (key,))
            tx.execute("DELETE FROM blobs WHERE key = ?", (key,))

        self._run(work)

    def collect(
        self,
        referenced: ReferencedKeys,
        report: GarbageReport,
        *,
        dry_run: bool = False,
        incomplete_only: bool = False,
    ) -> None:
        """Remove incomplete blobs, complete blobs no record points at and chunks
        without a blob row - each only when its lease can be taken, i.e. its writer is
        gone (see the module docs). ``incomplete_only``: the cheap part (a partial
        index), run on a store object's first write. ``referenced`` is not needed:
        the tables that hold blob keys are joined in SQL."""
        unreferenced = " AND ".join(
            f"NOT EXISTS (SELECT 1 FROM {table} r WHERE r.{column} = b.key)"
            for table, column in self._referenced_by
        )
        garbage = "NOT b.complete"
        if not incomplete_only and unreferenced:
            garbage = f"(NOT b.complete OR ({unreferenced}))"
        conn = self._connect()
        try:
            with conn.transaction():  # READ COMMITTED: each statement sees the latest commits
                keys = [r[0] for r in conn.execute(f"SELECT b.key FROM blobs b WHERE {garbage}")]
                held = _take_leases(conn, keys, report)
                # still garbage now that no writer can hold them
                rows = conn.execute(
                    "SELECT b.key, b.complete, (SELECT coalesce(sum(octet_length(c.data)), 0)"
                    " FROM blob_chunks c WHERE c.key = b.key)"
                    f" FROM blobs b WHERE b.key = ANY(%s) AND {garbage}",
                    (held,),
                ).fetchall()
                stray: list[tuple[str, int]] = []
                if not incomplete_only:
                    keys = [
                        r[0]
                        for r in conn.execute(
                            "SELECT DISTINCT c.key FROM blob_chunks c"
                            " WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.key = c.key)"
                        )
                    ]
                    held = _take_leases(conn, keys, report)
                    stray = conn.execute(
                        "SELECT c.key, sum(octet_length(c.data)) FROM blob_chunks c"
                        " WHERE c.key = ANY(%s)"
                        " AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.key = c.key) GROUP BY c.key",
                        (held,),
                    ).fetchall()
                gone = [r[0] for r in rows] + [r[0] for r in stray]
                if gone and not dry_run:
                    conn.execute("DELETE FROM blob_chunks WHERE key = ANY(%s)", (gone,))
                    conn.execute("DELETE FROM blobs WHERE key = ANY(%s)", (gone,))
        except psycopg.Error as exc:
            raise StorageError(
                f"{self._describe()}: garbage collection failed: {type(exc).__name__}: "
                f"{mask_secrets(str(exc))}"
            ) from exc
        finally:
            conn.close()
        for _key, complete, size in rows:
            report.add(UNREFERENCED if complete else INCOMPLETE, int(size))
        for _key, size in stray:
            report.add(STRAY, int(size))


def _take_leases(conn: Any, keys: list[str], report: GarbageReport) -> list[str]:
    """Those of ``keys`` whose lease this transaction could take (no live writer holds
    them); the others are counted as in flight."""
    if not keys:
        return []
    held = [
        r[0]
        for r in conn.execute(
            "SELECT k FROM unnest(%s::text[]) AS k WHERE pg_try_advisory_xact_lock(%s, hashtext(k))",
            (keys, BLOB_LOCK_CLASS),
        )
    ]
    report.in_flight += len(keys) - len(held)
    return held


def _chunks(source: BinaryIO, size: int) -> Any:
    """Yield ``size``-byte chunks (the last may be shorter) from ``source``, coalescing
    short reads so a pipe or socket source does not produce thousands of tiny rows."""
    read = source.read
    buffer = bytearray()
    while True:
        data = read(size - len(buffer))
        if not data:
            break
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidInputError(
                f"file source must be a binary stream, its read() returned {type(data).__name__}"
            )
        if not buffer and len(data) == size:
            yield bytes(data)
            continue
        buffer += data
        if len(buffer) >= size:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


class _BlobReader(io.BufferedReader):
    """The verifying reader of a blob (as :class:`~.blobs.VerifyingReader`), whose
    :meth:`copy_into` streams a multi-chunk blob into a file with hashing, fetching
    and writing overlapped and no copy through the reader's buffer."""

    def __init__(self, raw: Any, info: BlobInfo, what: str, chunk_size: int) -> None:
        super().__init__(VerifyingReader(raw, info.size, info.sha256, what), chunk_size)
        self._source = raw
        self._info = info
        self._what = what
        self._chunk_size = chunk_size

    def copy_into(self, out: BinaryIO) -> int | None:
        """Copy the whole blob into ``out``, verified; ``None`` (nothing done) for a
        one-chunk blob or when this reader was read from already."""
        source = self._source
        if not isinstance(source, _SnapshotReader) or source.served:
            return None
        chunks = cast(BinaryIO, _ChunkStream(source))
        size, sha = copy_stream(chunks, out.write, self._chunk_size)
        check_integrity(
            self._what, BlobInfo(self._info.key, size, sha), self._info.size, self._info.sha256
        )
        return size


class _ChunkStream:
    """A :class:`_SnapshotReader` seen through ``read`` only, so that
    :func:`~.blobs.copy_stream` takes each chunk as it was fetched (no ``readinto``
    copy)."""

    def __init__(self, reader: _SnapshotReader) -> None:
        self.read = reader.read


class _SnapshotReader(io.RawIOBase):
    """Streams a blob's chunks from one ``REPEATABLE READ READ ONLY`` snapshot on a
    dedicated connection, closed as soon as the last chunk is read (or on close).

    Chunks are fetched ``batch`` at a time (one query, one round trip for several
    MiB), and while the caller consumes one batch a helper thread already fetches the
    next (at most two batches in memory), so network transfer overlaps hashing and
    writing. A chunk missing from the middle ends the stream there: the verifying
    reader reports the size that does not match."""

    def __init__(
        self,
        connect: Callable[[], Any],
        key: str,
        what: str,
        describe: Callable[[], str],
        batch: int = 1,
    ) -> None:
        super().__init__()
        self._key = key
        self._what = what
        self._describe = describe
        self._batch = max(1, batch)
        self._seq = 0  # the first chunk not yet asked for
        self._queue: collections.deque[bytes] = collections.deque()  # fetched, not served
        self._chunk = b""
        self._pos = 0
        #: bytes handed to the caller so far
        self.served = 0
        self._next: Future[list[bytes]] | None = None
        self._asked = 0  # chunks the pending fetch asked for
        self._fetcher: ThreadPoolExecutor | None = None
        self._conn: Any = connect()
        try:
            self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            row = self._conn.execute(
                "SELECT complete, chunks FROM blobs WHERE key = %s", (key,)
            ).fetchone()
        except Exception as exc:
            self._finish()
            raise self._error(exc) from exc
        if row is None or not row[0]:
            self._finish()
            raise NotFoundError(f"{what}: stored bytes are missing (blob {key} in {describe()})")
        self._chunks = int(row[1] or 0)
        if self._chunks > self._batch:
            self._fetcher = ThreadPoolExecutor(1, thread_name_prefix="dcm-blob-read")
        self._prefetch()

    def _error(self, exc: BaseException) -> StorageError:
        return StoreUnavailableError(
            f"{self._what}: reading from {self._describe()} failed: {type(exc).__name__}: {exc}"
        )

    def _finish(self) -> None:
        fetcher, self._fetcher = self._fetcher, None
        if fetcher is not None:
            fetcher.shutdown(wait=True, cancel_futures=True)
        self._next = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _fetch(self, first: int, count: int) -> list[bytes]:
        """Chunks ``first`` .. ``first + count - 1``, up to the first one missing."""
        rows = self._conn.execute(
            "SELECT seq, data FROM blob_chunks WHERE key = %s AND seq >= %s AND seq < %s"
            " ORDER BY seq",
            (self._key, first, first + count),
            binary=True,
        ).fetchall()
        chunks: list[bytes] = []
        for seq, data in rows:
            if seq != first + len(chunks):
                break
            chunks.append(bytes(data))
        return chunks

    def _prefetch(self) -> None:
        """Start fetching the next batch (in the helper thread when there is one)."""
        first = self._seq
        if first >= self._chunks or self._conn is None:
            self._next = None
            return
        self._seq = min(first + self._batch, self._chunks)
        self._asked = self._seq - first
        if self._fetcher is not None:
            self._next = self._fetcher.submit(self._fetch, first, self._asked)
        else:
            done: Future[list[bytes]] = Future()
            try:
                done.set_result(self._fetch(first, self._asked))
            except Exception as exc:
                done.set_exception(exc)
            self._next = done

    def _next_chunk(self) -> bool:
        if not self._queue:
            if self._next is None:
                self._finish()
                return False
            asked = self._asked
            try:
                batch = self._next.result()
            except Exception as exc:
                self._finish()
                raise self._error(exc) from exc
            self._queue.extend(batch)
            if len(batch) == asked:
                self._prefetch()
            else:  # a chunk is missing (damaged): end the stream after what was found
                self._next = None
            if self._next is None:  # that was the last batch: end the snapshot now
                self._finish()
            if not self._queue:
                return False
        self._chunk = self._queue.popleft()
        self._pos = 0
        return True

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        while self._pos >= len(self._chunk):
            if not self._next_chunk():
                return b""
        if self._pos == 0 and size >= len(self._chunk):
            data = self._chunk  # the whole chunk, no copy
        else:
            data = bytes(memoryview(self._chunk)[self._pos : self._pos + size])
        self._pos += len(data)
        self.served += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        self._finish()
        super().close()
