"""Sessions, jobs, session data, session files and peers in the SQL providers' tables.

Each public method is one retried unit of work (:meth:`SQLCore._run`); writes are
upserts (``INSERT ... ON CONFLICT``), so concurrent writers of one key converge and a
retried unit changes nothing twice. Reads of another job's data select the owner by job
id, or by job name (and event) - see :class:`~dcm_processor_service.store.JobRef`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, BinaryIO

from ..._validation import validate_id
from ..base import JobRef
from ..blobs import BlobInfo
from ..records import (
    JOB_FIELDS,
    DataRecord,
    FileRecord,
    JobRecord,
    JobStatus,
    Peer,
    SessionRecord,
    SessionStatus,
    job_changes,
)
from .core import Tx, dumps, new_id, now_text, optional_timestamp, timestamp
from .record_blobs import SQLRecordBlobs

__all__ = ["SQLSessionState"]


def _session(row: dict[str, Any]) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        peer_id=row["peer_id"],
        patient_uid=row["patient_uid"],
        status=SessionStatus(row["status"]),
        meta=json.loads(row["meta"]),
        created_at=timestamp(row["created_at"]),
        updated_at=timestamp(row["updated_at"]),
        owner=row["owner"],
        heartbeat_at=optional_timestamp(row["heartbeat_at"]),
    )


def _job(row: dict[str, Any]) -> JobRecord:
    return JobRecord(
        id=row["id"],
        session_id=row["session_id"],
        name=row["name"],
        event=row["event"],
        service_name=row["service_name"],
        status=JobStatus(row["status"]),
        params=json.loads(row["params"]),
        progress=json.loads(row["progress"]),
        error=row["error"],
        started_at=optional_timestamp(row["started_at"]),
        finished_at=optional_timestamp(row["finished_at"]),
        created_at=timestamp(row["created_at"]),
        updated_at=timestamp(row["updated_at"]),
        owner=row["owner"],
        heartbeat_at=optional_timestamp(row["heartbeat_at"]),
    )


def _file(row: dict[str, Any]) -> FileRecord:
    return FileRecord(
        id=row["id"],
        session_id=row["session_id"],
        job_id=row["job_id"],
        job_name=row["job_name"],
        event=row["event"],
        name=row["name"],
        size=int(row["size"]),
        sha256=row["sha256"],
        content_type=row["content_type"],
        meta=json.loads(row["meta"]),
        blob_key=row["blob_key"],
        created_at=timestamp(row["created_at"]),
        updated_at=timestamp(row["updated_at"]),
    )


def _peer(row: dict[str, Any]) -> Peer:
    return Peer.from_dict({**json.loads(row["data"]), "id": row["id"]})


def _owned_by(ref: JobRef) -> tuple[str, list[Any]]:
    """WHERE clause selecting the owner job of ``ref`` (see :class:`JobRef`)."""
    if ref.job_id is not None:
        return "session_id = ? AND job_id = ?", [ref.session_id, ref.job_id]
    clause, params = "session_id = ? AND job_name = ?", [ref.session_id, ref.job_name]
    if ref.event is not None:
        clause += " AND event = ?"
        params.append(ref.event)
    return clause, params


class SQLSessionState(SQLRecordBlobs):
    """The session half of the SQL store."""

    def _read_one(self, sql: str, params: list[Any] | tuple[Any, ...]) -> dict[str, Any] | None:
        """The first row of a read-only query (one statement: no BEGIN/COMMIT)."""
        return self._run(lambda tx: tx.one(sql, params), write=False, single=True)

    def _read_all(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Every row of a read-only query (one statement: no BEGIN/COMMIT)."""
        return self._run(lambda tx: tx.query(sql, params), write=False, single=True)

    # -------------------------------------------------------------- sessions
    def ensure_session(
        self,
        session_id: str | None = None,
        *,
        peer_id: str | None = None,
        patient_uid: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> SessionRecord:
        sid = new_id() if session_id is None else validate_id(session_id, "session_id")
        now = now_text()

        def work(tx: Tx) -> SessionRecord:
            tx.execute(
                "INSERT INTO sessions (id, peer_id, patient_uid, status, meta, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (sid, peer_id, patient_uid, SessionStatus.OPEN.value, dumps(meta or {}), now, now),
            )
            return _session(tx.row("SELECT * FROM sessions WHERE id = ?", (sid,)))

        return self._run(work)

    def get_session(self, session_id: str) -> SessionRecord:
        row = self._read_one("SELECT * FROM sessions WHERE id = ?", (session_id,))
        if row is None:
            raise self._not_found("session", session_id)
        return _session(row)

    def list_sessions(self) -> list[SessionRecord]:
        return [
            _session(r) for r in self._read_all("SELECT * FROM sessions ORDER BY created_at, id")
        ]

    def update_session(
        self,
        session_id: str,
        *,
        status: SessionStatus | str | None = None,
        meta: dict[str, Any] | None = None,
        owner: str | None = None,
        heartbeat_at: datetime | None = None,
    ) -> SessionRecord:
        new_status = SessionStatus(status) if status else None

        def work(tx: Tx) -> SessionRecord:
            row = tx.one("SELECT * FROM sessions WHERE id = ?" + self.for_update, (session_id,))
            if row is None:
                raise self._not_found("session", session_id)
            merged = {**json.loads(row["meta"]), **(meta or {})}
            tx.execute(
                "UPDATE sessions SET status = ?, meta = ?, owner = ?, heartbeat_at = ?,"
                " updated_at = ? WHERE id = ?",
                (
                    new_status.value if new_status else row["status"],
                    dumps(merged),
                    owner or row["owner"],
                    heartbeat_at.isoformat() if heartbeat_at else row["heartbeat_at"],
                    now_text(),
                    session_id,
                ),
            )
            return _session(tx.row("SELECT * FROM sessions WHERE id = ?", (session_id,)))

        return self._run(work)

    def delete_session(self, session_id: str) -> bool:
        def work(tx: Tx) -> bool:
            tx.execute("DELETE FROM jobs WHERE session_id = ?", (session_id,))
            return tx.execute("DELETE FROM sessions WHERE id = ?", (session_id,)) > 0

        return self._run(work)

    # ------------------------------------------------------------------ jobs
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
        jid = job_id or new_id()
        now = now_text()

        def work(tx: Tx) -> JobRecord:
            tx.execute(
                "INSERT INTO jobs (id, session_id, name, event, service_name, status, params,"
                " progress, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', ?, ?)"
                " ON CONFLICT (id) DO NOTHING",
                (
                    jid,
                    session_id,
                    name,
                    event,
                    service_name,
                    JobStatus.PENDING.value,
                    dumps(params or {}),
                    now,
                    now,
                ),
            )
            return _job(tx.row("SELECT * FROM jobs WHERE id = ?", (jid,)))

        return self._run(work)

    def get_job(self, job_id: str) -> JobRecord:
        row = self._read_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise self._not_found("job", job_id)
        return _job(row)

    def find_job(self, session_id: str, name: str, event: str | None = None) -> JobRecord | None:
        sql = "SELECT * FROM jobs WHERE session_id = ? AND name = ?"
        params: list[Any] = [session_id, name]
        if event is not None:
            sql += " AND event = ?"
            params.append(event)
        row = self._read_one(sql + " ORDER BY created_at DESC LIMIT 1", params)
        return _job(row) if row else None

    def list_jobs(self, session_id: str) -> list[JobRecord]:
        rows = self._read_all(
            "SELECT * FROM jobs WHERE session_id = ? ORDER BY created_at, id", (session_id,)
        )
        return [_job(r) for r in rows]

    def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        changes = job_changes(changes)

        def work(tx: Tx) -> JobRecord:
            row = tx.one("SELECT * FROM jobs WHERE id = ?" + self.for_update, (job_id,))
            if row is None:
                raise self._not_found("job", job_id)
            values = dict(row)
            for key, value in changes.items():
                if key == "progress":
                    values[key] = dumps({**json.loads(row["progress"]), **(value or {})})
                elif key == "params":
                    values[key] = dumps(value or {})
                elif isinstance(value, datetime):
                    values[key] = value.isoformat()
                elif isinstance(value, JobStatus):
                    values[key] = value.value
                else:
                    values[key] = value
            tx.execute(
                "UPDATE jobs SET status = ?, progress = ?, error = ?, started_at = ?, finished_at = ?,"
                " params = ?, service_name = ?, owner = ?, heartbeat_at = ?, updated_at = ?"
                " WHERE id = ?",
                (*(values[f] for f in JOB_FIELDS), now_text(), job_id),
            )
            return _job(tx.row("SELECT * FROM jobs WHERE id = ?", (job_id,)))

        return self._run(work)

    # ----------------------------------------------------------- session data
    def set_data(self, owner: JobRef, name: str, value_json: str) -> None:
        now = now_text()
        self._run(
            lambda tx: tx.execute(
                "INSERT INTO session_data (session_id, job_id, job_name, event, name, value,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (session_id, job_id, name) DO UPDATE SET value = excluded.value,"
                " job_name = excluded.job_name, event = excluded.event, updated_at = excluded.updated_at",
                (
                    owner.session_id,
                    owner.job_id,
                    owner.job_name,
                    owner.event,
                    name,
                    value_json,
                    now,
                    now,
                ),
            ),
            single=True,
        )

    def get_data(self, ref: JobRef, name: str) -> str | None:
        clause, params = _owned_by(ref)
        row = self._read_one(
            f"SELECT value FROM session_data WHERE {clause} AND name = ?"
            " ORDER BY updated_at DESC LIMIT 1",
            [*params, name],
        )
        return None if row is None else str(row["value"])

    def remove_data(self, ref: JobRef, name: str) -> bool:
        clause, params = _owned_by(ref)
        return self._run(
            lambda tx: (
                tx.execute(f"DELETE FROM session_data WHERE {clause} AND name = ?", [*params, name])
                > 0
            )
        )

    def list_data(self, session_id: str) -> list[DataRecord]:
        rows = self._read_all(
            "SELECT job_id, job_name, event, name, value FROM session_data WHERE session_id = ?"
            " ORDER BY job_name, name",
            (session_id,),
        )
        return [
            DataRecord(
                job_id=r["job_id"],
                job_name=r["job_name"],
                event=r["event"],
                name=r["name"],
                value_json=r["value"],
            )
            for r in rows
        ]

    def delete_session_data(self, session_id: str) -> int:
        return self._run(
            lambda tx: tx.execute("DELETE FROM session_data WHERE session_id = ?", (session_id,))
        )

    # ---------------------------------------------------------- session files
    def put_file(
        self,
        owner: JobRef,
        name: str,
        source: BinaryIO,
        *,
        content_type: str,
        meta: dict[str, Any] | None = None,
    ) -> FileRecord:
        def work(tx: Tx, blob: BlobInfo) -> tuple[FileRecord, str | None]:
            now = now_text()
            old = tx.one(
                "SELECT id, blob_key, created_at FROM session_files"
                " WHERE session_id = ? AND job_id = ? AND name = ?" + self.for_update,
                (owner.session_id, owner.job_id, name),
            )
            fid = old["id"] if old else new_id()
            tx.execute(
                "INSERT INTO session_files (id, session_id, job_id, job_name, event, name, size,"
                " sha256, content_type, meta, blob_key, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (session_id, job_id, name) DO UPDATE SET size = excluded.size,"
                " sha256 = excluded.sha256, content_type = excluded.content_type,"
                " meta = excluded.meta, blob_key = excluded.blob_key, job_name = excluded.job_name,"
                " event = excluded.event, updated_at = excluded.updated_at",
                (
                    fid,
                    owner.session_id,
                    owner.job_id,
                    owner.job_name,
                    owner.event,
                    name,
                    blob.size,
                    blob.sha256,
                    content_type,
                    dumps(meta or {}),
                    blob.key,
                    now,
                    now,
                ),
            )
            row = tx.row(
                "SELECT * FROM session_files WHERE session_id = ? AND job_id = ? AND name = ?",
                (owner.session_id, owner.job_id, name),
            )
            return _file(row), (old["blob_key"] if old else None)

        return self._put_with_blob(source, work)

    def get_file(self, ref: JobRef, name: str) -> FileRecord | None:
        clause, params = _owned_by(ref)
        row = self._read_one(
            f"SELECT * FROM session_files WHERE {clause} AND name = ? ORDER BY updated_at DESC LIMIT 1",
            [*params, name],
        )
        return _file(row) if row else None

    def open_file(self, record: FileRecord) -> BinaryIO:
        return self._open_current(
            "session_files",
            record.id,
            BlobInfo(record.blob_key, record.size, record.sha256),
            f"session file {record.name!r} of session {record.session_id!r}",
        )

    def remove_file(self, ref: JobRef, name: str) -> bool:
        clause, params = _owned_by(ref)
        return bool(
            self._delete_with_blobs("session_files", f"{clause} AND name = ?", [*params, name])
        )

    def list_files(self, session_id: str) -> list[FileRecord]:
        rows = self._read_all(
            "SELECT * FROM session_files WHERE session_id = ? ORDER BY job_name, name",
            (session_id,),
        )
        return [_file(r) for r in rows]

    def delete_session_files(self, session_id: str) -> int:
        return len(self._delete_with_blobs("session_files", "session_id = ?", (session_id,)))

    # ------------------------------------------------------------------ peers
    def put_peer(self, peer: Peer) -> Peer:
        now = now_text()

        def work(tx: Tx) -> Peer:
            existing = tx.one("SELECT id FROM peers WHERE name = ?" + self.for_update, (peer.name,))
            pid = existing["id"] if existing else (peer.id or new_id())
            data = peer.to_dict()
            data.pop("_id")
            tx.execute(
                "INSERT INTO peers (id, name, data, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                (pid, peer.name, dumps(data), now, now),
            )
            return _peer(tx.row("SELECT * FROM peers WHERE name = ?", (peer.name,)))

        return self._run(work)

    def get_peer(self, name_or_id: str) -> Peer:
        row = self._read_one(
            "SELECT * FROM peers WHERE name = ? OR id = ?", (name_or_id, name_or_id)
        )
        if row is None:
            raise self._peer_not_found(name_or_id)
        return _peer(row)

    def list_peers(self) -> list[Peer]:
        return [_peer(r) for r in self._read_all("SELECT * FROM peers ORDER BY name")]

    def remove_peer(self, name_or_id: str) -> bool:
        return self._run(
            lambda tx: (
                tx.execute("DELETE FROM peers WHERE name = ? OR id = ?", (name_or_id, name_or_id))
                > 0
            )
        )
