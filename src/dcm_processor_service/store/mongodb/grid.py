"""GridFS files in the platform's format: streamed, checksummed, replaced in place.

A file is one ``<bucket>.files`` document (``_id``, ``filename``, ``length``,
``chunkSize`` 255 KiB, ``uploadDate``, ``contentType``, ``metadata``) and its
``<bucket>.chunks`` — what pymongo's ``GridFSBucket`` (the platform's writer and reader)
produces, so either side reads what the other wrote. This module writes and reads the
documents itself, so that it controls the two things the driver's helpers cannot do:

**Checksums that know when they are stale.** The sha256 is recorded in
``metadata.dcmProcessorService`` together with the ``length`` and ``uploadDate`` it
describes. The platform replaces a file by deleting and re-uploading it under the same
``_id`` while *keeping* the old metadata; its new ``uploadDate`` then no longer matches
ours, and :func:`recorded_checksum` reports the checksum stale (read unverified) instead
of the file corrupt.

**Replacement in place that a crash cannot lose.** The platform's records point at a
file by its ``_id`` (a series' ``Instances``), so a new version keeps the ``_id``
(as the platform's own re-upload does). GridFS cannot swap a file's content atomically,
so the swap is journaled: the new content is first written completely as chunks under a
temporary id; then the file document gets a journal entry (``metadata.
dcmProcessorService.swap``: the temporary id and the new file document), the old chunks
are deleted, the new chunks re-pointed to the file's ``_id``, and the file document
replaced by the new one (which drops the journal). Whoever finds a journal older than
:data:`SWAP_STALE_S` (its writer died) completes the swap from it; until then readers
wait for it. A reader that was already reading when the swap started sees the content
change under it and gets :class:`~dcm_processor_service.NotFoundError` ("read it
again"), not corrupt bytes; the platform's reader has no such protection during the few
milliseconds of a swap (nor during its own delete-and-re-upload).
"""

from __future__ import annotations

import io
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, BinaryIO, Final

import bson
from bson import Int64, ObjectId

from ..._errors import IntegrityError, NotFoundError
from ..base import CHUNK_SIZE
from ..blobs import BlobInfo, BlobStore, VerifyingReader, copy_stream
from .connection import MongoConnection
from .layout import EXTRA, aware, now, oid

__all__ = [
    "GRIDFS_CHUNK_SIZE",
    "NEWEST_FILE",
    "SWAP_STALE_S",
    "GridBucket",
    "blob_key",
    "file_id_of",
    "recorded_checksum",
    "unique_filename",
]

logger = logging.getLogger(__name__)

#: GridFS chunk size of new files (the drivers' default, which the platform uses).
GRIDFS_CHUNK_SIZE: Final = 255 * 1024
#: Chunks written per insert and read per query (4 MiB).
_BATCH: Final = 16
#: A replacement journal older than this is taken to be left by a writer that died.
SWAP_STALE_S: Final = 30.0
#: Sort order of a query for files: newest version first (a replace keeps the ``_id``).
NEWEST_FILE: Final = [("uploadDate", -1), ("_id", -1)]
_SWAP: Final = f"metadata.{EXTRA}.swap"


def _version(doc: dict[str, Any]) -> str:
    """A file version's identity: its ``uploadDate`` in milliseconds."""
    stamp = aware(doc.get("uploadDate"))
    return str(round(stamp.timestamp() * 1000)) if stamp else "0"


def blob_key(doc: dict[str, Any]) -> str:
    """The blob key of a file version: ``<_id>@<uploadDate ms>``. Opening it after the
    file was replaced raises ``NotFoundError`` ("read it again")."""
    return f"{doc['_id']}@{_version(doc)}"


def _split_key(key: str) -> tuple[Any, str | None]:
    file_id, at, version = key.partition("@")
    return oid(file_id), (version if at else None)


def file_id_of(key: str) -> Any:
    """The ``_id`` of the file a :func:`blob_key` names."""
    return _split_key(key)[0]


def recorded_checksum(doc: dict[str, Any], what: str) -> str:
    """The sha256 this package recorded for a file document when it still describes the
    stored version, else ``""`` (read unverified): none was recorded (the platform wrote
    the file), or it is stale — the platform rewrote the file since (logged)."""
    extra = (doc.get("metadata") or {}).get(EXTRA) or {}
    sha = extra.get("sha256")
    if not isinstance(sha, str) or not sha:
        return ""
    if extra.get("length") == doc.get("length") and aware(extra.get("uploadDate")) == aware(
        doc.get("uploadDate")
    ):
        return sha
    logger.info(
        "%s was rewritten by another writer (the platform) after this package recorded its "
        "sha256; it is read unverified",
        what,
    )
    return ""


def unique_filename(ext: str = "") -> str:
    """The platform's file name: a random uuid in hex, then ``ext`` (``".dcm"``)."""
    return f"{uuid.uuid4().hex}{ext}"


def _swap_of(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if not doc:
        return None
    journal = ((doc.get("metadata") or {}).get(EXTRA) or {}).get("swap")
    return journal if isinstance(journal, dict) else None


def _obsolete(doc: dict[str, Any], journal: dict[str, Any]) -> bool:
    """Whether the file was uploaded again after the swap began: the platform's
    re-upload keeps the old metadata, journal included, but not the old content."""
    uploaded, since = aware(doc.get("uploadDate")), aware(journal.get("since"))
    return uploaded is not None and since is not None and uploaded > since


class _ChunkWriter:
    """Cuts a stream into GridFS chunks of one file id, inserting a batch at a time."""

    def __init__(self, chunks: Any, file_id: ObjectId) -> None:
        self._chunks = chunks
        self._file_id = file_id
        self._buffer = bytearray()
        self._pending: list[dict[str, Any]] = []
        self._n = 0

    def write(self, data: Any) -> None:
        self._buffer += data
        while len(self._buffer) >= GRIDFS_CHUNK_SIZE:
            self._add(bytes(self._buffer[:GRIDFS_CHUNK_SIZE]))
            del self._buffer[:GRIDFS_CHUNK_SIZE]

    def _add(self, data: bytes) -> None:
        self._pending.append({"files_id": self._file_id, "n": self._n, "data": bson.Binary(data)})
        self._n += 1
        if len(self._pending) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._chunks.insert_many(self._pending, ordered=True)
            self._pending = []

    def close(self) -> None:
        if self._buffer:
            self._add(bytes(self._buffer))
            self._buffer.clear()
        self._flush()


class _ChunkReader(io.RawIOBase):
    """Reads one file version's chunks in order, a batch per query, checking that each
    chunk is there and has the size the file document implies."""

    def __init__(self, bucket: GridBucket, doc: dict[str, Any], what: str) -> None:
        super().__init__()
        self._bucket = bucket
        self._doc = doc
        self._what = what
        self._length = int(doc.get("length") or 0)
        self._chunk_size = int(doc.get("chunkSize") or GRIDFS_CHUNK_SIZE)
        self._count = math.ceil(self._length / self._chunk_size) if self._length else 0
        self._queue: list[bytes] = []
        self._next = 0
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def _expected_size(self, n: int) -> int:
        if n < self._count - 1:
            return self._chunk_size
        return self._length - self._chunk_size * (self._count - 1)

    def _damaged(self, detail: str) -> Exception:
        if self._bucket.changed(self._doc):
            return NotFoundError(
                f"{self._what}: replaced or removed while being read - read it again"
            )
        return IntegrityError(
            f"{self._what}: stored size does not match the recorded {self._length} bytes "
            f"({detail}) - the stored copy is damaged"
        )

    def _fetch(self) -> None:
        first = self._next
        file_id = self._doc["_id"]
        docs = self._bucket.conn._run(
            lambda db: list(
                db[f"{self._bucket.name}.chunks"]
                .find({"files_id": file_id, "n": {"$gte": first, "$lt": first + _BATCH}})
                .sort("n", 1)
            )
        )
        for doc in docs:
            n = doc.get("n")
            if n != self._next:
                raise self._damaged(f"chunk {self._next} is missing")
            if n >= self._count:
                raise self._damaged(f"unexpected chunk {n}")
            data = bytes(doc.get("data") or b"")
            if len(data) != self._expected_size(n):
                raise self._damaged(f"chunk {n} holds {len(data)} bytes")
            self._queue.append(data)
            self._next += 1
        if not docs and self._next < self._count:
            raise self._damaged(f"chunk {self._next} is missing")

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        while not self._current:
            if not self._queue:
                if self._next >= self._count:
                    return 0
                self._fetch()
                continue
            self._current = memoryview(self._queue.pop(0))
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n


class _GridVerifyingReader(VerifyingReader):
    """A :class:`VerifyingReader` that tells a concurrent replacement (``NotFoundError``,
    read again) from damage (``IntegrityError``)."""

    def __init__(
        self, raw: _ChunkReader, size: int, sha256: str, what: str, changed: Callable[[], bool]
    ) -> None:
        super().__init__(raw, size, sha256, what)  # type: ignore[arg-type]
        self._changed = changed

    def _verify(self) -> None:
        try:
            super()._verify()
        except IntegrityError as exc:
            if self._changed():
                raise NotFoundError(
                    f"{self._what}: replaced or removed while being read - read it again"
                ) from exc
            raise


class GridBucket(BlobStore):
    """One GridFS bucket (``sessionfiles`` or ``dicomfiles``) of a MongoDB store."""

    def __init__(self, conn: MongoConnection, name: str) -> None:
        self.conn = conn
        self.name = name

    # ----------------------------------------------------------------- write
    def upload(
        self,
        source: BinaryIO,
        *,
        filename: str,
        content_type: str | None,
        metadata: dict[str, Any],
        extra: dict[str, Any],
        replace: Any = None,
    ) -> dict[str, Any]:
        """Stream ``source`` into a new file version and return its file document.

        ``metadata`` is the platform's part of the file's metadata; ``extra`` goes to
        ``metadata.dcmProcessorService`` with the sha256, length and upload date. With
        ``replace`` (a file ``_id``) the new version replaces that file in place (see the
        module documentation); otherwise it is a new file. A failed upload leaves no
        chunks behind and the previous version untouched.
        """
        chunk_id = ObjectId()  # the new file's id, or the temporary id of a replacement

        def write(db: Any) -> tuple[int, str]:
            writer = _ChunkWriter(db[f"{self.name}.chunks"], chunk_id)
            size, sha = copy_stream(source, writer.write)
            writer.close()
            return size, sha

        try:
            size, sha = self.conn._run(write, retry=False)
        except BaseException:
            self._drop_chunks(chunk_id)
            raise
        stamp = now() if replace is None else self._after_current(replace)
        doc: dict[str, Any] = {
            "_id": replace if replace is not None else chunk_id,
            "filename": filename,
            "length": Int64(size),  # a BSON long, as pymongo's GridFS writes it
            "chunkSize": GRIDFS_CHUNK_SIZE,
            "uploadDate": stamp,
            "metadata": {
                **metadata,
                EXTRA: {**extra, "sha256": sha, "length": size, "uploadDate": stamp},
            },
        }
        if content_type:
            doc["contentType"] = content_type
        try:
            if replace is None:
                self.conn._run(lambda db: db[f"{self.name}.files"].insert_one(doc))
                return doc
            claimed = self._claim(replace, chunk_id, doc)
        except BaseException:
            self._drop_chunks(chunk_id)
            raise
        if claimed:  # from here on the journal owns the new chunks: never dropped
            self._finish(replace)
        return doc

    def write(self, source: BinaryIO) -> BlobInfo:
        doc = self.upload(
            source, filename=unique_filename(), content_type=None, metadata={}, extra={}
        )
        return BlobInfo(blob_key(doc), int(doc["length"]), doc["metadata"][EXTRA]["sha256"])

    def _after_current(self, file_id: Any) -> datetime:
        """The upload date of a new version of ``file_id``: now, but at least a
        millisecond after the version it replaces - a version's identity is its upload
        date (:func:`blob_key`), so two versions written within one millisecond must
        not share it (a reader of the old record would get the new bytes)."""
        stamp = now()
        current = self.conn._run(
            lambda db: db[f"{self.name}.files"].find_one({"_id": file_id}, {"uploadDate": 1})
        )
        previous = aware((current or {}).get("uploadDate"))
        if previous is not None and stamp <= previous:
            stamp = previous + timedelta(milliseconds=1)
        return stamp

    def _drop_chunks(self, chunk_id: ObjectId) -> None:
        try:
            self.conn._run(lambda db: db[f"{self.name}.chunks"].delete_many({"files_id": chunk_id}))
        except Exception:  # the original error matters more than the clean-up
            logger.warning(
                "could not remove the chunks of an interrupted upload to %s",
                self.name,
                exc_info=True,
            )

    def _claim(self, target: Any, chunk_id: ObjectId, doc: dict[str, Any]) -> bool:
        """Journal the replacement of file ``target`` by ``doc`` (content in the chunks of
        ``chunk_id``), once no other replacement is in progress; ``True`` when journaled
        (:meth:`_finish` completes it), ``False`` when the file had gone and ``doc`` was
        stored as a new file with its ``_id``."""
        journal = {
            "chunks": chunk_id,
            "phase": "clear",
            "since": now(),
            "doc": {k: v for k, v in doc.items() if k != "_id"},
        }
        files = f"{self.name}.files"
        while True:
            claimed = self.conn._run(
                lambda db: (
                    db[files]
                    .update_one(
                        {"_id": target, _SWAP: {"$exists": False}}, {"$set": {_SWAP: journal}}
                    )
                    .matched_count
                )
            )
            if claimed:
                return True
            if self.settled(target) is None:  # removed meanwhile: store it as a new file
                self.conn._run(lambda db: self._adopt(db, target, chunk_id, doc))
                return False

    def _adopt(self, db: Any, target: Any, chunk_id: ObjectId, doc: dict[str, Any]) -> None:
        db[f"{self.name}.chunks"].update_many(
            {"files_id": chunk_id}, {"$set": {"files_id": target}}
        )
        db[f"{self.name}.files"].insert_one(doc)

    def _finish(self, target: Any) -> None:
        """Complete the journaled replacement of ``target`` (idempotent: every step is
        repeatable, and the journal is read afresh)."""

        def work(db: Any) -> None:
            files, chunks = db[f"{self.name}.files"], db[f"{self.name}.chunks"]
            doc = files.find_one({"_id": target}, {_SWAP: 1, "uploadDate": 1})
            journal = _swap_of(doc)
            if journal is None:
                return
            mine = {"_id": target, f"{_SWAP}.chunks": journal["chunks"]}
            if _obsolete(doc, journal):  # another writer's newer version stays
                files.update_one(mine, {"$unset": {_SWAP: ""}})
                chunks.delete_many({"files_id": journal["chunks"]})
                return
            if journal.get("phase") == "clear":
                chunks.delete_many({"files_id": target})
                files.update_one(mine, {"$set": {f"{_SWAP}.phase": "move"}})
            chunks.update_many({"files_id": journal["chunks"]}, {"$set": {"files_id": target}})
            files.replace_one(mine, {"_id": target, **journal["doc"]})

        self.conn._run(work)

    def settled(self, file_id: Any) -> dict[str, Any] | None:
        """The file document of ``file_id`` once no replacement is in progress (waiting
        for one, completing one whose writer died); ``None`` when there is no such file."""
        delay = 0.005
        while True:
            doc = self.conn._run(lambda db: db[f"{self.name}.files"].find_one({"_id": file_id}))
            journal = _swap_of(doc)
            if journal is None:
                return doc
            since = aware(journal.get("since"))
            if _obsolete(doc, journal):
                self._finish(file_id)
                continue
            if since is None or now() - since > timedelta(seconds=SWAP_STALE_S):
                logger.warning(
                    "%s: completing the replacement of GridFS file %s in bucket %r that a "
                    "writer left unfinished (started %s)",
                    self.conn.describe(),
                    file_id,
                    self.name,
                    since,
                )
                self._finish(file_id)
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def settle(self, docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """``docs`` as they are once replacements in progress are complete (a file that
        disappeared meanwhile is left out)."""
        out = []
        for doc in docs:
            current = self.settled(doc["_id"]) if _swap_of(doc) else doc
            if current is not None:
                out.append(current)
        return out

    # ------------------------------------------------------------------ read
    def changed(self, doc: dict[str, Any]) -> bool:
        """Whether the file of ``doc`` was removed, replaced or is being replaced since
        ``doc`` was read."""
        current = self.conn._run(lambda db: db[f"{self.name}.files"].find_one({"_id": doc["_id"]}))
        return (
            current is None or _version(current) != _version(doc) or _swap_of(current) is not None
        )

    def open(self, info: BlobInfo, what: str) -> BinaryIO:
        """A reader of the version ``info.key`` names, verified against ``info.sha256``
        (unverified when that is empty: a file the platform wrote, or rewrote)."""
        file_id, version = _split_key(info.key)
        doc = self.settled(file_id)
        if doc is None:
            raise NotFoundError(
                f"{what}: stored bytes are missing (GridFS file {file_id} in bucket "
                f"{self.name!r} of {self.conn.describe()})"
            )
        if version is not None and _version(doc) != version:
            raise NotFoundError(f"{what}: replaced since its record was read - read it again")
        raw = _ChunkReader(self, doc, what)
        if not info.sha256:
            return io.BufferedReader(raw, CHUNK_SIZE)
        verifying = _GridVerifyingReader(
            raw, info.size, info.sha256, what, lambda: self.changed(doc)
        )
        return io.BufferedReader(verifying, CHUNK_SIZE)

    # ---------------------------------------------------------------- delete
    def delete(self, key: str) -> None:
        self.delete_ids([_split_key(key)[0]])

    def delete_ids(self, ids: Iterable[Any]) -> None:
        """Delete files: ``files`` documents first (readers stop finding them), then
        their chunks. Missing files are not an error."""
        wanted = list(ids)
        if not wanted:
            return

        def work(db: Any) -> None:
            db[f"{self.name}.files"].delete_many({"_id": {"$in": wanted}})
            db[f"{self.name}.chunks"].delete_many({"files_id": {"$in": wanted}})

        self.conn._run(work)
