"""Session files in the platform's ``sessionfiles`` GridFS bucket.

Each file's ``metadata`` is the caller's ``meta`` flat, plus ``name``, ``session_id`` and
``job_id`` (ObjectIds), as the platform writes them; ``contentType`` is on the file; the
file name is a random ``<uuid><ext>``; the file id returned is the GridFS ``_id``, which
a replace keeps (:mod:`.grid`). The owner job's name and event, and the creation time,
live in the file's ``metadata.dcmProcessorService``.
"""

from __future__ import annotations

import logging
from typing import Any, BinaryIO

from ..base import JobRef
from ..blobs import BlobInfo
from ..records import FileRecord, utcnow
from .grid import NEWEST_FILE, GridBucket, blob_key, recorded_checksum, unique_filename
from .layout import EXTRA, aware, extra_of, id_values, now, oid, plain
from .session_state import SessionState

__all__ = ["SessionFiles"]

logger = logging.getLogger(__name__)

#: metadata keys of a session file that are not the caller's ``meta``
_FILE_KEYS = ("name", "session_id", "job_id", EXTRA)


class SessionFiles(SessionState):
    """Session files (part of ``MongoStore``)."""

    files: GridBucket

    def _file(self, doc: dict[str, Any], job: tuple[Any, Any] | None = None) -> FileRecord:
        meta = doc.get("metadata") or {}
        extra = extra_of(meta)
        if job is None:
            job = (extra.get("jobName"), extra.get("event"))
            if job[0] is None and "jobName" not in extra:  # a file the platform wrote
                job = self._run(lambda db: self._job_names(db, {meta.get("job_id")})).get(
                    str(meta.get("job_id")), (None, None)
                )
        sha256 = recorded_checksum(doc, f"session file {meta.get('name')!r}")
        updated = aware(doc.get("uploadDate")) or utcnow()
        return FileRecord(
            id=str(doc["_id"]),
            session_id=str(meta.get("session_id")),
            job_id=str(meta.get("job_id")),
            job_name=job[0],
            event=job[1],
            name=str(meta.get("name") or ""),
            size=int(doc.get("length") or 0),
            sha256=sha256,
            content_type=doc.get("contentType") or "application/octet-stream",
            meta={k: v for k, v in meta.items() if k not in _FILE_KEYS},
            blob_key=blob_key(doc),
            created_at=aware(extra.get("createdAt")) or updated,
            updated_at=updated,
        )

    def _find_files(self, selector: dict[str, Any], limit: int = 0) -> list[dict[str, Any]]:
        """The matching session file documents, newest first."""
        return self.files.settle(
            self._run(
                lambda db: list(
                    db["sessionfiles.files"].find(selector).sort(NEWEST_FILE).limit(limit)
                )
            )
        )

    def put_file(
        self,
        owner: JobRef,
        name: str,
        source: BinaryIO,
        *,
        content_type: str,
        meta: dict[str, Any] | None = None,
    ) -> FileRecord:
        job_id = self._require_job_id(owner, f"session file {name!r}")
        user = plain(meta or {}, f"meta of session file {name!r}")
        owner_ids = {"session_id": oid(owner.session_id), "job_id": oid(job_id)}
        previous = self._find_files(
            {
                "metadata.session_id": {"$in": id_values(owner.session_id)},
                "metadata.job_id": {"$in": id_values(job_id)},
                "metadata.name": name,
            },
            limit=1,
        )
        prev = previous[0] if previous else None
        ext = user.get("ext") if isinstance(user.get("ext"), str) else ""
        doc = self.files.upload(
            source,
            filename=unique_filename(ext),
            content_type=content_type,
            metadata={**user, "name": name, **owner_ids},
            extra={
                "jobName": owner.job_name,
                "event": owner.event,
                "createdAt": aware(extra_of((prev or {}).get("metadata")).get("createdAt"))
                or now(),
            },
            replace=prev["_id"] if prev else None,
        )
        logger.debug(
            "%s: stored session file %r as GridFS file %s", self.describe(), name, doc["_id"]
        )
        return self._file(doc, (owner.job_name, owner.event))

    def get_file(self, ref: JobRef, name: str) -> FileRecord | None:
        selector = self._owner_selector(ref, "metadata.")
        if selector is None:
            return None
        docs = self._find_files({**selector, "metadata.name": name}, limit=1)
        return self._file(docs[0]) if docs else None

    def open_file(self, record: FileRecord) -> BinaryIO:
        return self.files.open(
            BlobInfo(record.blob_key, record.size, record.sha256),
            f"session file {record.name!r} of session {record.session_id!r}",
        )

    def remove_file(self, ref: JobRef, name: str) -> bool:
        selector = self._owner_selector(ref, "metadata.")
        if selector is None:
            return False
        found = self._find_files({**selector, "metadata.name": name})
        self.files.delete_ids(d["_id"] for d in found)
        return bool(found)

    def _session_files(self, session_id: str) -> list[dict[str, Any]]:
        return self._find_files({"metadata.session_id": {"$in": id_values(session_id)}})

    def list_files(self, session_id: str) -> list[FileRecord]:
        newest: dict[tuple[str, Any], dict[str, Any]] = {}
        for doc in self._session_files(session_id):
            meta = doc.get("metadata") or {}
            newest.setdefault((str(meta.get("job_id")), meta.get("name")), doc)
        records = [self._file(d) for d in newest.values()]
        records.sort(key=lambda r: (r.job_name is not None, r.job_name or "", r.name))
        return records

    def delete_session_files(self, session_id: str) -> int:
        found = self._session_files(session_id)
        files = {
            (str((d.get("metadata") or {}).get("job_id")), (d.get("metadata") or {}).get("name"))
            for d in found
        }
        self.files.delete_ids(d["_id"] for d in found)
        return len(files)
