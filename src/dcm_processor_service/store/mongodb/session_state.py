"""Sessions, jobs and session data in the platform's documents (session files:
:mod:`.session_files`; peers: :mod:`.peers`).

Field by field (``docs/storage.md`` has the table):

* ``sessions``: ``_id``, ``patient_id`` (the patient record's ``_id``), ``peer_id``
  (the ``PeerUID``) — what the platform's scheduler writes;
* ``jobs``: ``_id``, ``sessionId`` (text), ``job_name``, ``job_event``,
  ``service_name``, ``peer_id``, ``data.kwargs.params``, ``createdAt``, ``updatedAt`` —
  the fields the platform's worker reads; a job this package creates carries none of
  the queue fields (``item_type``, ``channel``, ``done``…), so the platform's queue never
  picks it up, and this package never writes the queue fields of the platform's jobs;
* ``sessiondata``: ``session_id`` and ``job_id`` (ObjectIds), ``name``, ``value``.

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
from typing import Any

import pymongo
from bson import ObjectId

from ..._errors import ConflictError, InvalidInputError, NotFoundError
from ..._validation import validate_id
from ..base import JobRef
from ..records import (
    DataRecord,
    JobRecord,
    JobStatus,
    SessionRecord,
    SessionStatus,
    job_changes,
    utcnow,
)
from .layout import (
    EXTRA,
    ORIGIN,
    aware,
    bson_problem,
    dump_json,
    extra_of,
    id_values,
    now,
    oid,
    plain,
    to_bson_time,
)
from .peers import PeerDocuments

__all__ = ["SessionState"]

logger = logging.getLogger(__name__)

#: JobRecord field (:data:`JOB_FIELDS`) -> where update_job writes it
_JOB_DOCUMENT_FIELDS = {
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
_SESSION_ORDER = [(f"{EXTRA}.createdAt", 1), (f"{EXTRA}.seq", 1), ("_id", 1)]
_JOB_ORDER = [("createdAt", 1), (f"{EXTRA}.seq", 1), ("_id", 1)]


def _platform_status(doc: dict[str, Any]) -> JobStatus:
    """A platform queue job's state in this package's words."""
    if doc.get("done"):
        return JobStatus.FAILED if doc.get("error") else JobStatus.SUCCEEDED
    return JobStatus.RUNNING if doc.get("inProgress") else JobStatus.PENDING


class SessionState(PeerDocuments):
    """Sessions, jobs and session data (part of ``MongoStore``)."""

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
                    {"_id": doc["_id"], rev: extra_of(doc).get("rev")},
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
        extra = extra_of(doc)
        born = doc["_id"].generation_time if isinstance(doc["_id"], ObjectId) else None
        created = aware(extra.get("createdAt")) or born or utcnow()
        peer = doc.get("peer_id")
        return SessionRecord(
            id=str(doc["_id"]),
            peer_id=None if peer is None else str(peer),
            patient_uid=extra.get("patientUid"),
            status=SessionStatus(extra.get("status") or SessionStatus.OPEN),
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
                "status": SessionStatus.OPEN.value,
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
            raise self._not_found("session", session_id)
        return self._session(doc)

    def list_sessions(self) -> list[SessionRecord]:
        docs = self._run(lambda db: list(db.sessions.find().sort(_SESSION_ORDER)))
        return [self._session(d) for d in docs]

    def update_session(
        self,
        session_id: str,
        *,
        status: SessionStatus | str | None = None,
        meta: dict[str, Any] | None = None,
        owner: str | None = None,
        heartbeat_at: datetime | None = None,
    ) -> SessionRecord:
        new_status = SessionStatus(status).value if status else None
        added = plain(meta or {}, "session meta")
        beat = to_bson_time(heartbeat_at, "heartbeat_at")

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            extra = extra_of(doc)
            return {
                f"{EXTRA}.status": new_status or extra.get("status") or SessionStatus.OPEN.value,
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
        extra = extra_of(doc)
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
                "status": JobStatus.PENDING.value,
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
            raise self._not_found("job", job_id)
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
        values: dict[str, Any] = {}
        for key, value in job_changes(changes).items():
            if isinstance(value, JobStatus):
                values[key] = value.value
            elif key in ("progress", "params"):
                values[key] = plain(value or {}, f"job {key}")
            elif key in ("started_at", "finished_at", "heartbeat_at"):
                values[key] = to_bson_time(value, key)
            else:
                values[key] = value

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {f"{EXTRA}.updatedAt": now()}
            for key, value in values.items():
                if key == "progress":
                    value = {**(extra_of(doc).get("progress") or {}), **value}
                out[_JOB_DOCUMENT_FIELDS[key]] = value
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
        text = extra_of(doc).get("valueJson")
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

    def list_data(self, session_id: str) -> list[DataRecord]:
        def work(db: Any) -> list[DataRecord]:
            docs = list(db.sessiondata.find({"session_id": {"$in": id_values(session_id)}}))
            names = self._job_names(
                db, {d.get("job_id") for d in docs if not extra_of(d).get("jobName")}
            )
            rows = []
            for d in docs:
                extra = extra_of(d)
                job = (extra.get("jobName"), extra.get("event"))
                if job[0] is None:
                    job = names.get(str(d.get("job_id")), (None, None))
                rows.append(
                    DataRecord(
                        job_id=str(d.get("job_id")),
                        job_name=job[0],
                        event=job[1],
                        name=d.get("name"),
                        value_json=self._value_json(d),
                    )
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
