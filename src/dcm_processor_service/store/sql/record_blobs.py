"""Records that point at blobs (session files, DICOM instances) in the SQL providers:
writing, reading across a concurrent replace, deleting, and garbage collection.

A record is switched to a new blob only once the blob is complete, inside the record's
transaction, while the writer still holds the blob (garbage collection leaves it
alone); the blob it pointed at before is deleted after the commit. A reader that lost
that race reads the record again and opens the newer version. What a crashed writer
left behind (a blob no record points at) is found by :meth:`collect_garbage`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO, TypeVar

from ..._errors import NotFoundError, StorageError
from ..blobs import BlobInfo, DirectoryBlobStore
from ..garbage import GarbageReport
from .core import SQLCore, Tx

__all__ = ["BLOB_TABLES", "SQLRecordBlobs"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: the tables whose ``blob_key`` column points at blobs
BLOB_TABLES = ("session_files", "instances")


class SQLRecordBlobs(SQLCore):
    """Blob-holding records and the garbage collection of their blobs."""

    #: whether this store object swept dead writers' leftovers yet (on its first write)
    _swept = False

    # ------------------------------------------------------------------ write
    def _put_with_blob(
        self, source: BinaryIO, work: Callable[[Tx, BlobInfo], tuple[T, str | None]]
    ) -> T:
        """Write ``source`` as a new blob, then run ``work`` - which points a record at it
        and returns (result, the blob the record pointed at before) - in a retried
        transaction while the blob is held (garbage collection leaves it alone; a failed
        ``work`` deletes it), then delete the replaced blob."""
        self._before_first_write()
        with self.blobs.writing(source) as blob:

            def unit(tx: Tx) -> tuple[T, str | None]:
                self._confirm_blob(tx, blob.key)
                return work(tx, blob)

            result, old_key = self._run(unit)
        if old_key and old_key != blob.key:
            self.blobs.delete(old_key)
        return result

    def _before_first_write(self) -> None:
        """On this store object's first blob write: sweep leftovers of dead writers."""
        if not self._swept:
            self._swept = True
            self._sweep_first_write()

    def _confirm_blob(self, tx: Tx, key: str) -> None:
        """Hook: check, inside the record's transaction, that blob ``key`` is still there
        (PostgreSQL share-locks its row, so a garbage collection cannot remove it
        before the record commits)."""
        return None

    # ------------------------------------------------------------------- read
    def _open_current(self, table: str, record_id: str, info: BlobInfo, what: str) -> BinaryIO:
        """Open the blob ``info`` of record ``record_id`` of ``table`` (see
        :meth:`_current_blob`)."""
        return self._current_blob(
            table, record_id, info, what, lambda current: self.blobs.open(current, what)
        )

    def _current_blob(
        self, table: str, record_id: str, info: BlobInfo, what: str, use: Callable[[BlobInfo], T]
    ) -> T:
        """``use(info)`` - open or read the blob ``info`` of record ``record_id`` of
        ``table`` - on the current version of the record.

        A writer that replaces the record switches it to a new blob, commits, then
        deletes the old blob; a reader that read the record just before may find the old
        blob gone. Then the record is read again: it points at a newer, complete version
        (committed before the old one was deleted), which is used instead - a reader
        gets the version it asked for or a newer one, never an error. A blob still
        referenced and missing is damage (:class:`NotFoundError`), as is a record removed
        meanwhile."""
        for _ in range(self.max_attempts):
            try:
                return use(info)
            except NotFoundError:
                row = self._run(
                    lambda tx: tx.one(
                        f"SELECT blob_key, size, sha256 FROM {table} WHERE id = ?", (record_id,)
                    ),
                    write=False,
                )
                if row is None:
                    raise NotFoundError(f"{what} was removed while it was being opened") from None
                if row["blob_key"] == info.key:
                    raise
                logger.debug(
                    "%s was replaced while it was being opened: reading the new version", what
                )
                info = BlobInfo(row["blob_key"], int(row["size"]), row["sha256"])
        raise NotFoundError(
            f"{what}: replaced faster than it could be opened ({self.max_attempts} tries)"
        )

    # ----------------------------------------------------------------- delete
    def _delete_with_blobs(
        self,
        table: str,
        where: str,
        params: Sequence[Any],
        *,
        also: str = "",
        then: Callable[[Tx, list[dict[str, Any]]], None] | None = None,
    ) -> list[str]:
        """Delete the rows of ``table`` matching ``where`` (and run ``then(tx, rows)`` in
        the same transaction, the rows holding ``blob_key`` and the columns ``also``
        names), then their blobs; return the blob keys of the rows deleted (one per
        row)."""

        def work(tx: Tx) -> list[str]:
            columns = f"blob_key, {also}" if also else "blob_key"
            rows = tx.query(f"SELECT {columns} FROM {table} WHERE {where}", params)
            tx.execute(f"DELETE FROM {table} WHERE {where}", params)
            if then is not None:
                then(tx, rows)
            return [r["blob_key"] for r in rows]

        keys = self._run(work)
        for key in keys:
            self.blobs.delete(key)
        return keys

    # --------------------------------------------------------------- garbage
    def collect_garbage(
        self, *, dry_run: bool = False, min_age_s: float | None = None
    ) -> GarbageReport:
        report = GarbageReport(self.describe(), dry_run=dry_run)
        self.blobs.collect(self._referenced_keys, report, dry_run=dry_run)
        logger.info("%s", report.summary())
        return report

    def _referenced_keys(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` that a session file or an instance points at (now)."""

        def referenced(tx: Tx, batch: list[str]) -> list[dict[str, Any]]:
            marks = ", ".join("?" for _ in batch)
            return tx.query(
                " UNION ".join(
                    f"SELECT blob_key FROM {table} WHERE blob_key IN ({marks})"
                    for table in BLOB_TABLES
                ),
                batch * len(BLOB_TABLES),
            )

        found: set[str] = set()
        for start in range(0, len(keys), 400):
            batch = list(keys[start : start + 400])
            rows = self._run(functools.partial(referenced, batch=batch), write=False)
            found.update(r["blob_key"] for r in rows)
        return found

    def _sweep_first_write(self) -> None:
        """On the first write of this store object: remove the cheap part of what dead
        writers left (never a live writer's data; ``db gc`` does the rest). A failure
        here is logged, not raised: it must not fail the job's write."""
        report = GarbageReport(self.describe())
        try:
            self._sweep_dead_writers(report)
        except StorageError as exc:
            logger.warning("%s: leftovers of dead writers not removed: %s", self.describe(), exc)
        if report.items:
            logger.info("%s", report.summary())

    def _sweep_dead_writers(self, report: GarbageReport) -> None:
        """Hook: the cheap sweep (``.part`` files of a blob folder)."""
        if isinstance(self.blobs, DirectoryBlobStore):
            self.blobs.sweep_partial(report)
