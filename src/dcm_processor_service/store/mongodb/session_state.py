"""Sessions, jobs, session data, session files and peers in the platform's documents.

Field by field (``docs/storage.md`` has the table):

* ``sessions``: ``_id``, ``patient_id`` (the patient record's ``_id``), ``peer_id``
  (the ``PeerUID``) — what the platform's scheduler writes;
* ``jobs``: ``_id``, ``sessionId`` (text), ``job_name``, ``job_event``,
  ``service_name``, ``peer_id``, ``data.kwargs.params``, ``createdAt``, ``updatedAt`` —
  the fields the platform's worker reads; a job this package creates carries none of
  the queue fields (``item_type``, ``channel``, ``done``…), so the platform's queue never
  picks it up, and this package never writes the queue fields of the platform's jobs;
* ``sessiondata``: ``session_id`` and ``job_id`` (ObjectIds), ``name``, ``value``;
* ``sessionfiles`` (GridFS): ``metadata`` = the caller's ``meta`` flat, plus ``name``,
  ``session_id``, ``job_id`` (ObjectIds); ``contentType`` on the file; the file name is a
  random ``<uuid><ext>``; the file id returned is the GridFS ``_id``, kept by a replace;
* ``peers``: ``_id``, ``name``, ``aet``, ``host``, ``port``, ``tls``, ``whitelist_aet``,
  ``whitelist_ip`` (and ``cert_file``, ``key_file``, ``ca_file`` when set).

Status, progress and error of a job, status and meta of a session, a session value's
owner job name (so another job finds it by name even without a ``jobs`` document) live in
``dcmProcessorService``. An id that is 24 hex digits is stored as an ObjectId, as the
platform does; other ids (a local runner's, a test's) as text.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, BinaryIO

import pymongo
from bson import ObjectId

from ..._errors import ConflictError, InvalidInputError, NotFoundError, StorageError
from ..._validation import validate_id
from ..base import JobRef
from ..blobs import BlobInfo
from ..records import FileRecord, JobRecord, Peer, SessionRecord, utcnow
from .connection import MongoConnection
from .grid import GridBucket, blob_key, recorded_checksum, unique_filename
from .layout import (
    EXTRA,
    ORIGIN,
    aware,
    bson_problem,
    dump_json,
    id_values,
    now,
    oid,
    plain,
    to_bson_time,
)

__all__ = ["SessionState"]

logger = logging.getLogger(__name__)

#: JobRecord field -> where update_job writes it
_JOB_FIELDS = {
    "status": f"{EXTRA}.status",
    "progress": f"{EXTRA}.progress",
    "error": f"{EXTRA}.error",
    "started_at": f"{EXTRA}.startedAt",
    "finished_at": f"{EXTRA}.finishedAt",
    "params": "data.kwargs.params",
    "service_name": "service_name",
    "owner": f"{EXTRA}.owner",
    "heartbeat_at": f"{EXTRA}.heartbeatAt",
}
_NEWEST_FILE = [("uploadDate", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]
_SESSION_ORDER = [(f"{EXTRA}.createdAt", 1), (f"{EXTRA}.seq", 1), ("_id", 1)]
_JOB_ORDER = [("createdAt", 1), (f"{EXTRA}.seq", 1), ("_id", 1)]
#: metadata keys of a session file that are not the caller's ``meta``
_FILE_KEYS = ("name", "session_id", "job_id", EXTRA)
_PEER_OPTIONAL = ("cert_file", "key_file", "ca_file")


def _extra(doc: dict[str, Any] | None) -> dict[str, Any]:
    value = (doc or {}).get(EXTRA)
    return value if isinstance(value, dict) else {}


def _platform_status(doc: dict[str, Any]) -> str:
    """A platform queue job's state in this package's words."""
    if doc.get("done"):
        return "failed" if doc.get("error") else "succeeded"
    return "running" if doc.get("inProgress") else "pending"


class SessionState(MongoConnection):
    """Sessions, jobs, session data and files, and peers (part of ``MongoStore``)."""

    files: GridBucket

    # --------------------------------------------------------------- helpers
    def _modify(
        self,
        collection: str,
        selector: dict[str, Any],
        change: Callable[[dict[str, Any]], dict[str, Any]],
        missing: str,
    ) -> dict[str, Any]:
        """Read-modify-write of one document with optimistic concurrency: the ``$set``
        from ``change(doc)`` applies only if ``dcmProcessorService.rev`` is still the one
        read, else it is redone."""
        rev = f"{EXTRA}.rev"

        def work(db: Any) -> dict[str, Any]:
            for _attempt in range(self.max_upsert_attempts * 10):
                doc = db[collection].find_one(selector)
                if doc is None:
                    raise NotFoundError(f"{missing} not found in {self.describe()}")
                result = db[collection].update_one(
                    {"_id": doc["_id"], rev: _extra(doc).get("rev")},
                    {"$set": change(doc), "$inc": {rev: 1}},
                )
                if result.matched_count:
                    return dict(db[collection].find_one({"_id": doc["_id"]}))
            raise ConflictError(
                f"{self.describe()}: {missing} kept changing while being updated - try again"
            )

        return self._run(work)

    def _insert_once(self, collection: str, doc_id: Any, fields: dict[str, Any]) -> dict[str, Any]:
        """The document ``doc_id``, inserted with ``fields`` unless it exists (a
        concurrent insert of the same id gives both callers the one document)."""

        def work(db: Any) -> dict[str, Any]:
            return dict(
                db[collection].find_one_and_update(
                    {"_id": doc_id},
                    {"$setOnInsert": fields},
                    upsert=True,
                    return_document=pymongo.ReturnDocument.AFTER,
                )
            )

        return self._converging(f"{collection} document {doc_id}", work)

    def _job_ids(self, session_id: str, name: str, event: str | None) -> list[Any]:
        """The ``_id`` of every job of the session with that name (and event)."""
        selector: dict[str, Any] = {"sessionId": {"$in": id_values(session_id)}, "job_name": name}
        if event is not None:
            selector["job_event"] = event
        return self._run(lambda db: [d["_id"] for d in db.jobs.find(selector, {"_id": 1})])

    def _owner_selector(self, ref: JobRef, prefix: str = "") -> dict[str, Any] | None:
        """The query selecting what ``ref``'s owner job stored: by job id, or by name —
        through the session's ``jobs`` documents, and through the owner name this package
        records with what it writes. ``None`` selects nothing."""
        session = {f"{prefix}session_id": {"$in": id_values(ref.session_id)}}
        if ref.job_id is not None:
            return {**session, f"{prefix}job_id": {"$in": id_values(ref.job_id)}}
        if ref.job_name is None:
            return None
        by_record = {f"{prefix}{EXTRA}.jobName": ref.job_name}
        if ref.event is not None:
            by_record[f"{prefix}{EXTRA}.event"] = ref.event
        alternatives: list[dict[str, Any]] = [by_record]
        job_ids = self._job_ids(ref.session_id, ref.job_name, ref.event)
        if job_ids:
            alternatives.append({f"{prefix}job_id": {"$in": job_ids}})
        return {**session, "$or": alternatives}

    def _job_names(self, db: Any, job_ids: set[Any]) -> dict[str, tuple[Any, Any]]:
        """(job name, event) of each job id, from the ``jobs`` documents."""
        if not job_ids:
            return {}
        found = db.jobs.find({"_id": {"$in": list(job_ids)}}, {"job_name": 1, "job_event": 1})
        return {str(d["_id"]): (d.get("job_name"), d.get("job_event")) for d in found}

    # --------------------------------------------------------------- sessions
    def _session(self, doc: dict[str, Any]) -> SessionRecord:
        extra = _extra(doc)
        born = doc["_id"].generation_time if isinstance(doc["_id"], ObjectId) else None
        created = aware(extra.get("createdAt")) or born or utcnow()
        peer = doc.get("peer_id")
        return SessionRecord(
            id=str(doc["_id"]),
            peer_id=None if peer is None else str(peer),
            patient_uid=extra.get("patientUid"),
            status=extra.get("status") or "open",
            meta=dict(extra.get("meta") or {}),
            created_at=created,
            updated_at=aware(extra.get("updatedAt")) or created,
            owner=extra.get("owner"),
            heartbeat_at=aware(extra.get("heartbeatAt")),
        )

    def _find_session(self, session_id: str) -> dict[str, Any] | None:
        return self._run(lambda db: db.sessions.find_one({"_id": {"$in": id_values(session_id)}}))

    def ensure_session(
        self,
        session_id: str | None = None,
        *,
        peer_id: str | None = None,
        patient_uid: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> SessionRecord:
        if session_id is not None:
            validate_id(session_id, "session_id")
            existing = self._find_session(session_id)
            if existing is not None:
                return self._session(existing)
        stamp = now()
        fields: dict[str, Any] = {
            "peer_id": peer_id,
            EXTRA: {
                "origin": ORIGIN,
                "status": "open",
                "meta": plain(meta or {}, "session meta"),
                "patientUid": patient_uid,
                "createdAt": stamp,
                "updatedAt": stamp,
                "seq": ObjectId(),
                "rev": 0,
            },
        }
        if patient_uid is not None:
            patient = self._run(lambda db: db.patients.find_one({"PatientUID": patient_uid}))
            if patient is not None:
                fields["patient_id"] = patient["_id"]
        sid = oid(session_id) if session_id is not None else ObjectId()
        return self._session(self._insert_once("sessions", sid, fields))

    def get_session(self, session_id: str) -> SessionRecord:
        doc = self._find_session(session_id)
        if doc is None:
            raise NotFoundError(f"session {session_id!r} not found in {self.describe()}")
        return self._session(doc)

    def list_sessions(self) -> list[SessionRecord]:
        docs = self._run(lambda db: list(db.sessions.find().sort(_SESSION_ORDER)))
        return [self._session(d) for d in docs]

    def update_session(
        self,
        session_id: str,
        *,
        status: str | None = None,
        meta: dict[str, Any] | None = None,
        owner: str | None = None,
        heartbeat_at: datetime | None = None,
    ) -> SessionRecord:
        added = plain(meta or {}, "session meta")
        beat = to_bson_time(heartbeat_at, "heartbeat_at")

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            extra = _extra(doc)
            return {
                f"{EXTRA}.status": status or extra.get("status") or "open",
                f"{EXTRA}.meta": {**(extra.get("meta") or {}), **added},
                f"{EXTRA}.owner": owner or extra.get("owner"),
                f"{EXTRA}.heartbeatAt": beat or extra.get("heartbeatAt"),
                f"{EXTRA}.updatedAt": now(),
            }

        doc = self._modify(
            "sessions", {"_id": {"$in": id_values(session_id)}}, change, f"session {session_id!r}"
        )
        return self._session(doc)

    def delete_session(self, session_id: str) -> bool:
        """Delete the session document and the jobs *this package* created for it; the
        platform's jobs are queue items its queue owns (the platform's clean-up keeps
        them too)."""

        def work(db: Any) -> bool:
            db.jobs.delete_many(
                {"sessionId": {"$in": id_values(session_id)}, f"{EXTRA}.origin": ORIGIN}
            )
            return bool(
                db.sessions.delete_many({"_id": {"$in": id_values(session_id)}}).deleted_count
            )

        return self._run(work)

    # ------------------------------------------------------------------- jobs
    @staticmethod
    def _job(doc: dict[str, Any]) -> JobRecord:
        extra = _extra(doc)
        born = doc["_id"].generation_time if isinstance(doc["_id"], ObjectId) else None
        created = aware(doc.get("createdAt")) or born or utcnow()
        kwargs = ((doc.get("data") or {}).get("kwargs")) or {}
        params = kwargs.get("params") if isinstance(kwargs, dict) else None
        return JobRecord(
            id=str(doc["_id"]),
            session_id=str(doc.get("sessionId")),
            name=doc.get("job_name") or "",
            event=doc.get("job_event") or "",
            service_name=doc.get("service_name"),
            status=extra.get("status") or _platform_status(doc),
            params=dict(params) if isinstance(params, dict) else {},
            progress=dict(extra.get("progress") or {}),
            error=extra.get("error"),
            started_at=aware(extra.get("startedAt")),
            finished_at=aware(extra.get("finishedAt")),
            created_at=created,
            updated_at=aware(extra.get("updatedAt")) or aware(doc.get("updatedAt")) or created,
            owner=extra.get("owner"),
            heartbeat_at=aware(extra.get("heartbeatAt")),
        )

    def create_job(
        self,
        session_id: str,
        name: str,
        event: str,
        *,
        job_id: str | None = None,
        service_name: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> JobRecord:
        if job_id is not None:
            existing = self._run(lambda db: db.jobs.find_one({"_id": {"$in": id_values(job_id)}}))
            if existing is not None:
                return self._job(existing)
        session = self._find_session(session_id)
        stamp = now()
        fields: dict[str, Any] = {
            "sessionId": session_id,
            "job_name": name,
            "job_event": event,
            "service_name": service_name,
            "peer_id": (session or {}).get("peer_id"),
            "data": {"kwargs": {"params": plain(params or {}, "job params")}},
            "createdAt": stamp,
            "updatedAt": stamp,
            EXTRA: {
                "origin": ORIGIN,
                "status": "pending",
                "progress": {},
                "error": None,
                "startedAt": None,
                "finishedAt": None,
                "updatedAt": stamp,
                "seq": ObjectId(),
                "rev": 0,
            },
        }
        jid = oid(job_id) if job_id is not None else ObjectId()
        return self._job(self._insert_once("jobs", jid, fields))

    def get_job(self, job_id: str) -> JobRecord:
        doc = self._run(lambda db: db.jobs.find_one({"_id": {"$in": id_values(job_id)}}))
        if doc is None:
            raise NotFoundError(f"job {job_id!r} not found in {self.describe()}")
        return self._job(doc)

    def find_job(self, session_id: str, name: str, event: str | None = None) -> JobRecord | None:
        selector: dict[str, Any] = {"sessionId": {"$in": id_values(session_id)}, "job_name": name}
        if event is not None:
            selector["job_event"] = event
        newest = [(k, pymongo.DESCENDING) for k, _ in _JOB_ORDER]
        docs = self._run(lambda db: list(db.jobs.find(selector).sort(newest).limit(1)))
        return self._job(docs[0]) if docs else None

    def list_jobs(self, session_id: str) -> list[JobRecord]:
        docs = self._run(
            lambda db: list(
                db.jobs.find({"sessionId": {"$in": id_values(session_id)}}).sort(_JOB_ORDER)
            )
        )
        return [self._job(d) for d in docs]

    def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        unknown = set(changes) - set(_JOB_FIELDS)
        if unknown:
            raise StorageError(
                f"cannot update job field(s) {sorted(unknown)}; allowed: {tuple(_JOB_FIELDS)}"
            )
        values: dict[str, Any] = {}
        for key, value in changes.items():
            if key in ("progress", "params"):
                values[key] = plain(value or {}, f"job {key}")
            elif key in ("started_at", "finished_at", "heartbeat_at"):
                values[key] = to_bson_time(value, key)
            else:
                values[key] = value

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {f"{EXTRA}.updatedAt": now()}
            for key, value in values.items():
                if key == "progress":
                    value = {**(_extra(doc).get("progress") or {}), **value}
                out[_JOB_FIELDS[key]] = value
            return out

        doc = self._modify("jobs", {"_id": {"$in": id_values(job_id)}}, change, f"job {job_id!r}")
        return self._job(doc)

    # ----------------------------------------------------------- session data
    @staticmethod
    def _require_job_id(owner: JobRef, what: str) -> str:
        if owner.job_id is None:
            raise InvalidInputError(
                f"{what} needs the id of the job that owns it (JobRef.job_id is None)"
            )
        return owner.job_id

    def set_data(self, owner: JobRef, name: str, value_json: str) -> None:
        job_id = self._require_job_id(owner, f"session data {name!r}")
        try:
            value = json.loads(value_json)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(
                f"session data {name!r}: 'value_json' is not JSON text ({exc})"
            ) from None
        fields: dict[str, Any] = {
            f"{EXTRA}.jobName": owner.job_name,
            f"{EXTRA}.event": owner.event,
            f"{EXTRA}.updatedAt": now(),
        }
        problem = bson_problem(value)
        if problem is None:
            update: dict[str, Any] = {"$set": {"value": value, **fields}}
            update["$unset"] = {f"{EXTRA}.valueJson": ""}
        else:  # the platform reads None; this package reads the exact JSON text back
            logger.debug("session data %r kept as JSON text: %s", name, problem)
            update = {"$set": {"value": None, f"{EXTRA}.valueJson": value_json, **fields}}
        key = {"session_id": oid(owner.session_id), "job_id": oid(job_id), "name": name}
        self._converging(
            f"session data {name!r}",
            lambda db: db.sessiondata.update_one(key, update, upsert=True),
        )

    @staticmethod
    def _value_json(doc: dict[str, Any]) -> str:
        text = _extra(doc).get("valueJson")
        return text if isinstance(text, str) else dump_json(doc.get("value"))

    def _newest_data(self, selector: dict[str, Any]) -> list[dict[str, Any]]:
        order = [(f"{EXTRA}.updatedAt", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]
        return self._run(lambda db: list(db.sessiondata.find(selector).sort(order).limit(1)))

    def get_data(self, ref: JobRef, name: str) -> str | None:
        selector = self._owner_selector(ref)
        if selector is None:
            return None
        docs = self._newest_data({**selector, "name": name})
        return self._value_json(docs[0]) if docs else None

    def remove_data(self, ref: JobRef, name: str) -> bool:
        selector = self._owner_selector(ref)
        if selector is None:
            return False
        return self._run(
            lambda db: db.sessiondata.delete_many({**selector, "name": name}).deleted_count > 0
        )

    def list_data(self, session_id: str) -> list[dict[str, Any]]:
        def work(db: Any) -> list[dict[str, Any]]:
            docs = list(db.sessiondata.find({"session_id": {"$in": id_values(session_id)}}))
            names = self._job_names(
                db, {d.get("job_id") for d in docs if not _extra(d).get("jobName")}
            )
            rows = []
            for d in docs:
                extra = _extra(d)
                job = (extra.get("jobName"), extra.get("event"))
                if job[0] is None:
                    job = names.get(str(d.get("job_id")), (None, None))
                rows.append(
                    {
                        "job_id": str(d.get("job_id")),
                        "job_name": job[0],
                        "event": job[1],
                        "name": d.get("name"),
                        "value_json": self._value_json(d),
                    }
                )
            rows.sort(key=lambda r: (r["job_name"] or "", r["name"] or ""))
            return rows

        return self._run(work)

    def delete_session_data(self, session_id: str) -> int:
        return self._run(
            lambda db: int(
                db.sessiondata.delete_many(
                    {"session_id": {"$in": id_values(session_id)}}
                ).deleted_count
            )
        )

    # ---------------------------------------------------------- session files
    def _file(self, doc: dict[str, Any], job: tuple[Any, Any] | None = None) -> FileRecord:
        meta = doc.get("metadata") or {}
        extra = _extra(meta)
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
                    db["sessionfiles.files"].find(selector).sort(_NEWEST_FILE).limit(limit)
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
                "createdAt": aware(_extra((prev or {}).get("metadata")).get("createdAt")) or now(),
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

    # ------------------------------------------------------------------ peers
    @staticmethod
    def _peer(doc: dict[str, Any]) -> Peer:
        return Peer.from_dict({**doc, "_id": str(doc["_id"])})

    @staticmethod
    def _peer_selector(name_or_id: str) -> dict[str, Any]:
        return {"$or": [{"name": name_or_id}, {"_id": {"$in": id_values(name_or_id)}}]}

    def put_peer(self, peer: Peer) -> Peer:
        data = plain(peer.to_dict(), f"peer {peer.name!r}")
        data.pop("_id", None)
        unset = {k: "" for k in _PEER_OPTIONAL if data.get(k) is None}
        for key in unset:
            data.pop(key, None)
        stamp = now()
        update: dict[str, Any] = {
            "$set": {**data, f"{EXTRA}.updatedAt": stamp},
            "$setOnInsert": {
                "_id": oid(peer.id) if peer.id else ObjectId(),
                f"{EXTRA}.origin": ORIGIN,
                f"{EXTRA}.createdAt": stamp,
            },
        }
        if unset:
            update["$unset"] = unset

        def work(db: Any) -> dict[str, Any]:
            return dict(
                db.peers.find_one_and_update(
                    {"name": peer.name},
                    update,
                    upsert=True,
                    return_document=pymongo.ReturnDocument.AFTER,
                )
            )

        return self._peer(self._converging(f"peer {peer.name!r}", work))

    def get_peer(self, name_or_id: str) -> Peer:
        doc = self._run(lambda db: db.peers.find_one(self._peer_selector(name_or_id)))
        if doc is None:
            known = ", ".join(p.name for p in self.list_peers()) or "none"
            raise NotFoundError(
                f"peer {name_or_id!r} not found in {self.describe()} (known peers: {known})"
            )
        return self._peer(doc)

    def list_peers(self) -> list[Peer]:
        docs = self._run(lambda db: list(db.peers.find().sort("name", pymongo.ASCENDING)))
        return [self._peer(d) for d in docs]

    def remove_peer(self, name_or_id: str) -> bool:
        return self._run(
            lambda db: db.peers.delete_many(self._peer_selector(name_or_id)).deleted_count > 0
        )
