"""The store logic shared by the SQL providers (SQLite, PostgreSQL).

Both dialects speak the same SQL here: ``?`` placeholders (translated by the
PostgreSQL transaction wrapper), ``INSERT ... ON CONFLICT ... DO UPDATE``, ``RETURNING``,
JSON kept as text, timestamps as ISO-8601 UTC text (they sort as strings). A subclass
supplies connections and transactions (:meth:`SQLStore._transaction`), which errors are
transient (:meth:`SQLStore._is_transient`), the blob store, and ``FOR UPDATE`` where the
dialect has row locks.

Every unit of work runs through :meth:`SQLStore._run`, which retries the whole unit on a
transient error (a locked SQLite file, a PostgreSQL serialization failure or dropped
connection) so callers never see those.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, BinaryIO, TypeVar

from .._errors import NotFoundError, PatientConflictError, StorageError
from .._validation import validate_id
from .base import JobRef, Store
from .blobs import BlobInfo, BlobStore, DirectoryBlobStore
from .garbage import GarbageReport
from .record_values import patient_identity, patient_uid, platform_metadata
from .records import FileRecord, InstanceInput, JobRecord, Peer, SessionRecord, utcnow
from .slice_order import sort_instances

__all__ = ["SCHEMA", "SQLStore", "Tx"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _platform_patient_keys(tx: Tx) -> None:
    """Schema 3 (data only): the platform's ``PatientUID`` and record ``Metadata`` values
    (``record_values``) for the index that dcm-processor-service 0.1 filed.

    Each patient gets the key its stored ``Metadata`` gives under the platform's rule (the
    StudyInstanceUID of its oldest study when it has no PatientID and no PatientName).
    Patients that now share a key are merged into the oldest: their studies and series
    move to it (the platform's rule needs no birth date beside a name, so patients 0.1
    kept apart by study can become one). Sessions follow their patient's new key.
    """
    merged: dict[str, str] = {}  # new key -> id of the patient keeping it
    for row in tx.query("SELECT id, patient_uid, meta FROM patients ORDER BY created_at, id"):
        meta = json.loads(row["meta"])
        study = tx.one(
            "SELECT study_uid FROM studies WHERE patient_id = ? ORDER BY created_at, id LIMIT 1",
            (row["id"],),
        )
        key = patient_uid({**meta, "StudyInstanceUID": study["study_uid"] if study else ""})
        tx.execute(
            "UPDATE sessions SET patient_uid = ? WHERE patient_uid = ?", (key, row["patient_uid"])
        )
        keeper = merged.setdefault(key, row["id"])
        if keeper != row["id"]:
            for table in ("studies", "series"):
                tx.execute(
                    f"UPDATE {table} SET patient_id = ? WHERE patient_id = ?", (keeper, row["id"])
                )
            tx.execute("DELETE FROM patients WHERE id = ?", (row["id"],))
            logger.info(
                "schema 3: patient %s merged into %s (PatientUID %s)", row["id"], keeper, key
            )
            continue
        tx.execute(
            "UPDATE patients SET patient_uid = ?, meta = ? WHERE id = ?",
            (key, _dumps(platform_metadata(meta)), row["id"]),
        )
    for table in ("studies", "series"):
        for row in tx.query(f"SELECT id, meta FROM {table}"):
            meta = json.loads(row["meta"])
            cleaned = platform_metadata(meta)
            if cleaned != meta:
                tx.execute(
                    f"UPDATE {table} SET meta = ? WHERE id = ?", (_dumps(cleaned), row["id"])
                )


#: Versioned schema: (version, steps) — SQL statements, or functions of a transaction
#: for data changes. Applied in order, each version once.
SCHEMA: list[tuple[int, list[str | Callable[[Tx], None]]]] = [
    (
        1,
        [
            """CREATE TABLE IF NOT EXISTS sessions (
                id TEXT PRIMARY KEY, peer_id TEXT, patient_uid TEXT, status TEXT NOT NULL,
                meta TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS jobs (
                id TEXT PRIMARY KEY, session_id TEXT NOT NULL, name TEXT NOT NULL,
                event TEXT NOT NULL, service_name TEXT, status TEXT NOT NULL,
                params TEXT NOT NULL, progress TEXT NOT NULL, error TEXT,
                started_at TEXT, finished_at TEXT, created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS jobs_by_name ON jobs (session_id, name, event)",
            """CREATE TABLE IF NOT EXISTS session_data (
                session_id TEXT NOT NULL, job_id TEXT NOT NULL, job_name TEXT, event TEXT,
                name TEXT NOT NULL, value TEXT NOT NULL, created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL, PRIMARY KEY (session_id, job_id, name))""",
            "CREATE INDEX IF NOT EXISTS session_data_by_job_name"
            " ON session_data (session_id, job_name, name)",
            """CREATE TABLE IF NOT EXISTS session_files (
                id TEXT PRIMARY KEY, session_id TEXT NOT NULL, job_id TEXT NOT NULL,
                job_name TEXT, event TEXT, name TEXT NOT NULL, size BIGINT NOT NULL,
                sha256 TEXT NOT NULL, content_type TEXT NOT NULL, meta TEXT NOT NULL,
                blob_key TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
                UNIQUE (session_id, job_id, name))""",
            "CREATE INDEX IF NOT EXISTS session_files_by_job_name"
            " ON session_files (session_id, job_name, name)",
            """CREATE TABLE IF NOT EXISTS peers (
                id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, data TEXT NOT NULL,
                created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS patients (
                id TEXT PRIMARY KEY, patient_uid TEXT NOT NULL UNIQUE, peer_id TEXT,
                meta TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
            """CREATE TABLE IF NOT EXISTS studies (
                id TEXT PRIMARY KEY, study_uid TEXT NOT NULL UNIQUE, patient_id TEXT NOT NULL,
                peer_id TEXT, meta TEXT NOT NULL, created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS studies_by_patient ON studies (patient_id)",
            """CREATE TABLE IF NOT EXISTS series (
                id TEXT PRIMARY KEY, series_uid TEXT NOT NULL UNIQUE, study_id TEXT NOT NULL,
                patient_id TEXT NOT NULL, peer_id TEXT, modality TEXT, meta TEXT NOT NULL,
                created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS series_by_study ON series (study_id)",
            """CREATE TABLE IF NOT EXISTS instances (
                id TEXT PRIMARY KEY, sop_uid TEXT NOT NULL UNIQUE, series_id TEXT NOT NULL,
                sop_class_uid TEXT NOT NULL, transfer_syntax_uid TEXT NOT NULL,
                meta TEXT NOT NULL, size BIGINT NOT NULL, sha256 TEXT NOT NULL,
                blob_key TEXT NOT NULL, peer_id TEXT, session_id TEXT,
                created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
            "CREATE INDEX IF NOT EXISTS instances_by_series ON instances (series_id)",
            "CREATE INDEX IF NOT EXISTS instances_by_session ON instances (session_id)",
        ],
    ),
    (
        2,  # the runner working on a session/job, and its last heartbeat
        [
            "ALTER TABLE sessions ADD COLUMN owner TEXT",
            "ALTER TABLE sessions ADD COLUMN heartbeat_at TEXT",
            "ALTER TABLE jobs ADD COLUMN owner TEXT",
            "ALTER TABLE jobs ADD COLUMN heartbeat_at TEXT",
        ],
    ),
    (3, [_platform_patient_keys]),  # the platform's PatientUID and Metadata values
]

SCHEMA_VERSION = SCHEMA[-1][0]

_JOB_FIELDS = (
    "status",
    "progress",
    "error",
    "started_at",
    "finished_at",
    "params",
    "service_name",
    "owner",
    "heartbeat_at",
)


def _new_id() -> str:
    return uuid.uuid4().hex


def _now() -> str:
    return utcnow().isoformat()


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str, allow_nan=False)


class Tx(abc.ABC):
    """A transaction: run SQL with ``?`` placeholders, rows as dicts."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the affected row count."""

    @abc.abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a query; return all rows."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        """The first row, or ``None``."""
        rows = self.query(sql, params)
        return rows[0] if rows else None


class SQLStore(Store):
    """Shared implementation of :class:`Store` over a SQL :class:`Tx`."""

    #: appended to SELECTs that read a row before changing it (``" FOR UPDATE"``)
    for_update = ""
    #: how many times a unit of work is retried on a transient error
    max_attempts = 30

    blobs: BlobStore
    #: whether this store object swept dead writers' leftovers yet (on its first write)
    _swept = False

    # --------------------------------------------------------------- dialect
    @abc.abstractmethod
    def _transaction(self, write: bool) -> contextlib.AbstractContextManager[Tx]:
        """A transaction that commits on success and rolls back on error."""

    @abc.abstractmethod
    def _is_transient(self, exc: BaseException) -> bool:
        """Whether retrying the unit of work may succeed."""

    @abc.abstractmethod
    def _translate(self, exc: BaseException) -> StorageError:
        """A package error for a driver error that was not transient."""

    def _run(self, work: Callable[[Tx], T], *, write: bool = True) -> T:
        """Run ``work`` in a transaction, retrying transient failures with backoff."""
        delay = 0.005
        for attempt in range(1, self.max_attempts + 1):
            try:
                with self._transaction(write) as tx:
                    return work(tx)
            except StorageError:
                raise
            except Exception as exc:
                if not self._is_transient(exc) or attempt == self.max_attempts:
                    raise self._translate(exc) from exc
                logger.debug("transient store error (attempt %d): %s", attempt, exc)
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise AssertionError("unreachable")  # pragma: no cover

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
                f"SELECT blob_key FROM session_files WHERE blob_key IN ({marks})"
                f" UNION SELECT blob_key FROM instances WHERE blob_key IN ({marks})",
                [*batch, *batch],
            )

        found: set[str] = set()
        for start in range(0, len(keys), 400):
            batch = list(keys[start : start + 400])
            rows = self._run(functools.partial(referenced, batch=batch), write=False)
            found.update(r["blob_key"] for r in rows)
        return found

    def _apply_schema(self, tx: Tx) -> int:
        """Apply missing schema versions inside ``tx`` (the caller holds the lock that
        serialises migrations); return the resulting version."""
        tx.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "component TEXT PRIMARY KEY, version INTEGER NOT NULL, applied_at TEXT NOT NULL)"
        )
        row = tx.one("SELECT version FROM schema_version WHERE component = 'core'")
        current = int(row["version"]) if row else 0
        if current > SCHEMA_VERSION:
            raise StorageError(
                f"{self.describe()}: schema version {current} is newer than this "
                f"dcm-processor-service supports ({SCHEMA_VERSION}) - upgrade the package"
            )
        for version, statements in SCHEMA:
            if version <= current:
                continue
            for statement in statements:
                if callable(statement):
                    statement(tx)
                else:
                    tx.execute(statement)
            tx.execute(
                "INSERT INTO schema_version (component, version, applied_at) VALUES ('core', ?, ?) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version, "
                "applied_at = excluded.applied_at",
                (version, _now()),
            )
            logger.info("%s: applied schema version %d", self.describe(), version)
        return max(current, SCHEMA_VERSION)

    # -------------------------------------------------------------- sessions
    @staticmethod
    def _session(row: dict[str, Any]) -> SessionRecord:
        return SessionRecord(
            id=row["id"],
            peer_id=row["peer_id"],
            patient_uid=row["patient_uid"],
            status=row["status"],
            meta=json.loads(row["meta"]),
            created_at=_ts(row["created_at"]),  # type: ignore[arg-type]
            updated_at=_ts(row["updated_at"]),  # type: ignore[arg-type]
            owner=row["owner"],
            heartbeat_at=_ts(row["heartbeat_at"]),
        )

    def ensure_session(
        self,
        session_id: str | None = None,
        *,
        peer_id: str | None = None,
        patient_uid: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> SessionRecord:
        sid = _new_id() if session_id is None else validate_id(session_id, "session_id")
        now = _now()

        def work(tx: Tx) -> SessionRecord:
            tx.execute(
                "INSERT INTO sessions (id, peer_id, patient_uid, status, meta, created_at, updated_at)"
                " VALUES (?, ?, ?, 'open', ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                (sid, peer_id, patient_uid, _dumps(meta or {}), now, now),
            )
            return self._session(tx.one("SELECT * FROM sessions WHERE id = ?", (sid,)))  # type: ignore[arg-type]

        return self._run(work)

    def get_session(self, session_id: str) -> SessionRecord:
        row = self._run(
            lambda tx: tx.one("SELECT * FROM sessions WHERE id = ?", (session_id,)), write=False
        )
        if row is None:
            raise NotFoundError(f"session {session_id!r} not found in {self.describe()}")
        return self._session(row)

    def list_sessions(self) -> list[SessionRecord]:
        rows = self._run(
            lambda tx: tx.query("SELECT * FROM sessions ORDER BY created_at, id"), write=False
        )
        return [self._session(r) for r in rows]

    def update_session(
        self,
        session_id: str,
        *,
        status: str | None = None,
        meta: dict[str, Any] | None = None,
        owner: str | None = None,
        heartbeat_at: datetime | None = None,
    ) -> SessionRecord:
        def work(tx: Tx) -> SessionRecord:
            row = tx.one("SELECT * FROM sessions WHERE id = ?" + self.for_update, (session_id,))
            if row is None:
                raise NotFoundError(f"session {session_id!r} not found in {self.describe()}")
            merged = {**json.loads(row["meta"]), **(meta or {})}
            tx.execute(
                "UPDATE sessions SET status = ?, meta = ?, owner = ?, heartbeat_at = ?,"
                " updated_at = ? WHERE id = ?",
                (
                    status or row["status"],
                    _dumps(merged),
                    owner or row["owner"],
                    heartbeat_at.isoformat() if heartbeat_at else row["heartbeat_at"],
                    _now(),
                    session_id,
                ),
            )
            return self._session(tx.one("SELECT * FROM sessions WHERE id = ?", (session_id,)))  # type: ignore[arg-type]

        return self._run(work)

    def delete_session(self, session_id: str) -> bool:
        def work(tx: Tx) -> bool:
            tx.execute("DELETE FROM jobs WHERE session_id = ?", (session_id,))
            return tx.execute("DELETE FROM sessions WHERE id = ?", (session_id,)) > 0

        return self._run(work)

    # ------------------------------------------------------------------ jobs
    @staticmethod
    def _job(row: dict[str, Any]) -> JobRecord:
        return JobRecord(
            id=row["id"],
            session_id=row["session_id"],
            name=row["name"],
            event=row["event"],
            service_name=row["service_name"],
            status=row["status"],
            params=json.loads(row["params"]),
            progress=json.loads(row["progress"]),
            error=row["error"],
            started_at=_ts(row["started_at"]),
            finished_at=_ts(row["finished_at"]),
            created_at=_ts(row["created_at"]),  # type: ignore[arg-type]
            updated_at=_ts(row["updated_at"]),  # type: ignore[arg-type]
            owner=row["owner"],
            heartbeat_at=_ts(row["heartbeat_at"]),
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
        jid = job_id or _new_id()
        now = _now()

        def work(tx: Tx) -> JobRecord:
            tx.execute(
                "INSERT INTO jobs (id, session_id, name, event, service_name, status, params,"
                " progress, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, '{}', ?, ?)"
                " ON CONFLICT (id) DO NOTHING",
                (jid, session_id, name, event, service_name, _dumps(params or {}), now, now),
            )
            return self._job(tx.one("SELECT * FROM jobs WHERE id = ?", (jid,)))  # type: ignore[arg-type]

        return self._run(work)

    def get_job(self, job_id: str) -> JobRecord:
        row = self._run(
            lambda tx: tx.one("SELECT * FROM jobs WHERE id = ?", (job_id,)), write=False
        )
        if row is None:
            raise NotFoundError(f"job {job_id!r} not found in {self.describe()}")
        return self._job(row)

    def find_job(self, session_id: str, name: str, event: str | None = None) -> JobRecord | None:
        sql = "SELECT * FROM jobs WHERE session_id = ? AND name = ?"
        params: list[Any] = [session_id, name]
        if event is not None:
            sql += " AND event = ?"
            params.append(event)
        row = self._run(
            lambda tx: tx.one(sql + " ORDER BY created_at DESC LIMIT 1", params), write=False
        )
        return self._job(row) if row else None

    def list_jobs(self, session_id: str) -> list[JobRecord]:
        rows = self._run(
            lambda tx: tx.query(
                "SELECT * FROM jobs WHERE session_id = ? ORDER BY created_at, id", (session_id,)
            ),
            write=False,
        )
        return [self._job(r) for r in rows]

    def update_job(self, job_id: str, **changes: Any) -> JobRecord:
        unknown = set(changes) - set(_JOB_FIELDS)
        if unknown:
            raise StorageError(
                f"cannot update job field(s) {sorted(unknown)}; allowed: {_JOB_FIELDS}"
            )

        def work(tx: Tx) -> JobRecord:
            row = tx.one("SELECT * FROM jobs WHERE id = ?" + self.for_update, (job_id,))
            if row is None:
                raise NotFoundError(f"job {job_id!r} not found in {self.describe()}")
            values = dict(row)
            for key, value in changes.items():
                if key == "progress":
                    values[key] = _dumps({**json.loads(row["progress"]), **(value or {})})
                elif key == "params":
                    values[key] = _dumps(value or {})
                elif isinstance(value, datetime):
                    values[key] = value.isoformat()
                else:
                    values[key] = value
            tx.execute(
                "UPDATE jobs SET status = ?, progress = ?, error = ?, started_at = ?, finished_at = ?,"
                " params = ?, service_name = ?, owner = ?, heartbeat_at = ?, updated_at = ?"
                " WHERE id = ?",
                (*(values[f] for f in _JOB_FIELDS), _now(), job_id),
            )
            return self._job(tx.one("SELECT * FROM jobs WHERE id = ?", (job_id,)))  # type: ignore[arg-type]

        return self._run(work)

    # ----------------------------------------------------------- session data
    @staticmethod
    def _select(ref: JobRef) -> tuple[str, list[Any]]:
        """WHERE clause selecting the owner job of ``ref`` (see :class:`JobRef`)."""
        if ref.job_id is not None:
            return "session_id = ? AND job_id = ?", [ref.session_id, ref.job_id]
        clause, params = "session_id = ? AND job_name = ?", [ref.session_id, ref.job_name]
        if ref.event is not None:
            clause += " AND event = ?"
            params.append(ref.event)
        return clause, params

    def set_data(self, owner: JobRef, name: str, value_json: str) -> None:
        now = _now()
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
            )
        )

    def get_data(self, ref: JobRef, name: str) -> str | None:
        clause, params = self._select(ref)
        row = self._run(
            lambda tx: tx.one(
                f"SELECT value FROM session_data WHERE {clause} AND name = ?"
                " ORDER BY updated_at DESC LIMIT 1",
                [*params, name],
            ),
            write=False,
        )
        return None if row is None else str(row["value"])

    def remove_data(self, ref: JobRef, name: str) -> bool:
        clause, params = self._select(ref)
        return self._run(
            lambda tx: (
                tx.execute(f"DELETE FROM session_data WHERE {clause} AND name = ?", [*params, name])
                > 0
            )
        )

    def list_data(self, session_id: str) -> list[dict[str, Any]]:
        rows = self._run(
            lambda tx: tx.query(
                "SELECT job_id, job_name, event, name, value FROM session_data WHERE session_id = ?"
                " ORDER BY job_name, name",
                (session_id,),
            ),
            write=False,
        )
        return [
            {**{k: r[k] for k in ("job_id", "job_name", "event", "name")}, "value_json": r["value"]}
            for r in rows
        ]

    def delete_session_data(self, session_id: str) -> int:
        return self._run(
            lambda tx: tx.execute("DELETE FROM session_data WHERE session_id = ?", (session_id,))
        )

    # ---------------------------------------------------------- session files
    @staticmethod
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
            created_at=_ts(row["created_at"]),  # type: ignore[arg-type]
            updated_at=_ts(row["updated_at"]),  # type: ignore[arg-type]
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
        def work(tx: Tx, blob: BlobInfo) -> tuple[FileRecord, str | None]:
            now = _now()
            old = tx.one(
                "SELECT id, blob_key, created_at FROM session_files"
                " WHERE session_id = ? AND job_id = ? AND name = ?" + self.for_update,
                (owner.session_id, owner.job_id, name),
            )
            fid = old["id"] if old else _new_id()
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
                    _dumps(meta or {}),
                    blob.key,
                    now,
                    now,
                ),
            )
            row = tx.one(
                "SELECT * FROM session_files WHERE session_id = ? AND job_id = ? AND name = ?",
                (owner.session_id, owner.job_id, name),
            )
            return self._file(row), (old["blob_key"] if old else None)  # type: ignore[arg-type]

        return self._put_with_blob(source, work)

    def _put_with_blob(
        self, source: BinaryIO, work: Callable[[Tx, BlobInfo], tuple[T, str | None]]
    ) -> T:
        """Write ``source`` as a new blob, then run ``work`` - which points a record at it
        and returns (result, the blob the record pointed at before) - in a retried
        transaction while the blob is held (garbage collection leaves it alone; a failed
        ``work`` deletes it), then delete the replaced blob."""
        if not self._swept:
            self._swept = True
            self._sweep_first_write()
        with self.blobs.writing(source) as blob:

            def unit(tx: Tx) -> tuple[T, str | None]:
                self._confirm_blob(tx, blob.key)
                return work(tx, blob)

            result, old_key = self._run(unit)
        if old_key and old_key != blob.key:
            self.blobs.delete(old_key)
        return result

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

    def _confirm_blob(self, tx: Tx, key: str) -> None:
        """Hook: check, inside the record's transaction, that blob ``key`` is still there
        (PostgreSQL share-locks its row, so a garbage collection cannot remove it
        before the record commits)."""
        return None

    def get_file(self, ref: JobRef, name: str) -> FileRecord | None:
        clause, params = self._select(ref)
        row = self._run(
            lambda tx: tx.one(
                f"SELECT * FROM session_files WHERE {clause} AND name = ? ORDER BY updated_at DESC LIMIT 1",
                [*params, name],
            ),
            write=False,
        )
        return self._file(row) if row else None

    def open_file(self, record: FileRecord) -> BinaryIO:
        return self._open_current(
            "session_files",
            record.id,
            BlobInfo(record.blob_key, record.size, record.sha256),
            f"session file {record.name!r} of session {record.session_id!r}",
        )

    def _open_current(self, table: str, record_id: str, info: BlobInfo, what: str) -> BinaryIO:
        """Open the blob ``info`` of record ``record_id`` of ``table``.

        A writer that replaces the record switches it to a new blob, commits, then
        deletes the old blob; a reader that read the record just before may find the old
        blob gone. Then the record is read again: it points at a newer, complete version
        (committed before the old one was deleted), which is opened instead - a reader
        gets the version it asked for or a newer one, never an error. A blob still
        referenced and missing is damage (:class:`NotFoundError`), as is a record removed
        meanwhile."""
        for _ in range(self.max_attempts):
            try:
                return self.blobs.open(info, what)
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

    def remove_file(self, ref: JobRef, name: str) -> bool:
        clause, params = self._select(ref)

        def work(tx: Tx) -> list[str]:
            rows = tx.query(
                f"SELECT blob_key FROM session_files WHERE {clause} AND name = ?", [*params, name]
            )
            tx.execute(f"DELETE FROM session_files WHERE {clause} AND name = ?", [*params, name])
            return [r["blob_key"] for r in rows]

        keys = self._run(work)
        for key in keys:
            self.blobs.delete(key)
        return bool(keys)

    def list_files(self, session_id: str) -> list[FileRecord]:
        rows = self._run(
            lambda tx: tx.query(
                "SELECT * FROM session_files WHERE session_id = ? ORDER BY job_name, name",
                (session_id,),
            ),
            write=False,
        )
        return [self._file(r) for r in rows]

    def delete_session_files(self, session_id: str) -> int:
        def work(tx: Tx) -> list[str]:
            rows = tx.query(
                "SELECT blob_key FROM session_files WHERE session_id = ?", (session_id,)
            )
            tx.execute("DELETE FROM session_files WHERE session_id = ?", (session_id,))
            return [r["blob_key"] for r in rows]

        keys = self._run(work)
        for key in keys:
            self.blobs.delete(key)
        return len(keys)

    # ------------------------------------------------------------------ peers
    @staticmethod
    def _peer(row: dict[str, Any]) -> Peer:
        return Peer.from_dict({**json.loads(row["data"]), "id": row["id"]})

    def put_peer(self, peer: Peer) -> Peer:
        now = _now()

        def work(tx: Tx) -> Peer:
            existing = tx.one("SELECT id FROM peers WHERE name = ?" + self.for_update, (peer.name,))
            pid = existing["id"] if existing else (peer.id or _new_id())
            data = peer.to_dict()
            data.pop("_id")
            tx.execute(
                "INSERT INTO peers (id, name, data, created_at, updated_at) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
                (pid, peer.name, _dumps(data), now, now),
            )
            return self._peer(tx.one("SELECT * FROM peers WHERE name = ?", (peer.name,)))  # type: ignore[arg-type]

        return self._run(work)

    def get_peer(self, name_or_id: str) -> Peer:
        row = self._run(
            lambda tx: tx.one(
                "SELECT * FROM peers WHERE name = ? OR id = ?", (name_or_id, name_or_id)
            ),
            write=False,
        )
        if row is None:
            known = ", ".join(p.name for p in self.list_peers()) or "none"
            raise NotFoundError(
                f"peer {name_or_id!r} not found in {self.describe()} (known peers: {known})"
            )
        return self._peer(row)

    def list_peers(self) -> list[Peer]:
        rows = self._run(lambda tx: tx.query("SELECT * FROM peers ORDER BY name"), write=False)
        return [self._peer(r) for r in rows]

    def remove_peer(self, name_or_id: str) -> bool:
        return self._run(
            lambda tx: (
                tx.execute("DELETE FROM peers WHERE name = ? OR id = ?", (name_or_id, name_or_id))
                > 0
            )
        )

    # ------------------------------------------------------------ DICOM index
    def put_instance(self, instance: InstanceInput, source: BinaryIO) -> dict[str, Any]:
        inp = instance

        def upsert(
            tx: Tx, now: str, table: str, key_col: str, key: str, cols: dict[str, Any]
        ) -> str:
            names = [key_col, *cols]
            # a re-ingest without a peer/session keeps the ones already recorded
            updates = ", ".join(
                f"{c} = COALESCE(excluded.{c}, {table}.{c})"
                if c in ("peer_id", "session_id")
                else f"{c} = excluded.{c}"
                for c in cols
            )
            row = tx.one(
                f"INSERT INTO {table} (id, {', '.join(names)}, created_at, updated_at)"
                f" VALUES (?, {', '.join('?' for _ in names)}, ?, ?)"
                f" ON CONFLICT ({key_col}) DO UPDATE SET {updates}, updated_at = excluded.updated_at"
                " RETURNING id",
                (_new_id(), key, *cols.values(), now, now),
            )
            return str(row["id"])  # type: ignore[index]

        def work(tx: Tx, blob: BlobInfo) -> tuple[dict[str, Any], str | None]:
            now = _now()
            self._refuse_other_patient(tx, inp)
            patient_id = upsert(
                tx,
                now,
                "patients",
                "patient_uid",
                inp.patient_uid,
                {"peer_id": inp.peer_id, "meta": _dumps(inp.patient_meta)},
            )
            study_id = upsert(
                tx,
                now,
                "studies",
                "study_uid",
                inp.study_instance_uid,
                {"patient_id": patient_id, "peer_id": inp.peer_id, "meta": _dumps(inp.study_meta)},
            )
            series_id = upsert(
                tx,
                now,
                "series",
                "series_uid",
                inp.series_instance_uid,
                {
                    "study_id": study_id,
                    "patient_id": patient_id,
                    "peer_id": inp.peer_id,
                    "modality": inp.modality,
                    "meta": _dumps(inp.series_meta),
                },
            )
            old = tx.one(
                "SELECT blob_key, series_id FROM instances WHERE sop_uid = ?" + self.for_update,
                (inp.sop_instance_uid,),
            )
            upsert(
                tx,
                now,
                "instances",
                "sop_uid",
                inp.sop_instance_uid,
                {
                    "series_id": series_id,
                    "sop_class_uid": inp.sop_class_uid,
                    "transfer_syntax_uid": inp.transfer_syntax_uid,
                    "meta": _dumps(inp.instance_meta),
                    "size": blob.size,
                    "sha256": blob.sha256,
                    "blob_key": blob.key,
                    "peer_id": inp.peer_id,
                    "session_id": inp.session_id,
                },
            )
            if old and old["series_id"] != series_id:
                # the instance moved to another series: drop what it left empty
                self._prune_empty(tx, [old["series_id"]])
            row = tx.one("SELECT * FROM instances WHERE sop_uid = ?", (inp.sop_instance_uid,))
            return self._instance(row, inp.series_instance_uid), (old["blob_key"] if old else None)  # type: ignore[arg-type]

        return self._put_with_blob(source, work)

    @staticmethod
    def _refuse_other_patient(tx: Tx, inp: InstanceInput) -> None:
        """Raise :class:`PatientConflictError` when the instance's SOPInstanceUID, series
        or study is already filed under another patient.

        Race-free in the transaction of the filing: SQLite writers hold the database
        lock (``BEGIN IMMEDIATE``); on PostgreSQL (``REPEATABLE READ``) a concurrent
        writer that filed the same series or study first makes this transaction's
        ``INSERT ... ON CONFLICT`` fail with a serialization error, and the retry sees
        the winner here."""
        rows = tx.query(
            "SELECT 1 AS rank, p.patient_uid, p.meta FROM instances i"
            " JOIN series s ON s.id = i.series_id"
            " JOIN patients p ON p.id = s.patient_id WHERE i.sop_uid = ?"
            " UNION ALL SELECT 2 AS rank, p.patient_uid, p.meta FROM series s"
            " JOIN patients p ON p.id = s.patient_id WHERE s.series_uid = ?"
            " UNION ALL SELECT 3 AS rank, p.patient_uid, p.meta FROM studies st"
            " JOIN patients p ON p.id = st.patient_id WHERE st.study_uid = ?",
            (inp.sop_instance_uid, inp.series_instance_uid, inp.study_instance_uid),
        )
        levels = {
            1: ("instance", inp.sop_instance_uid),
            2: ("series", inp.series_instance_uid),
            3: ("study", inp.study_instance_uid),
        }
        for row in sorted(rows, key=lambda r: int(r["rank"])):
            if row["patient_uid"] != inp.patient_uid:
                level, uid = levels[int(row["rank"])]
                raise PatientConflictError(
                    level,
                    uid,
                    row["patient_uid"],
                    inp.patient_uid,
                    patient_identity(json.loads(row["meta"])),
                    patient_identity(inp.patient_meta),
                )

    @staticmethod
    def _instance(row: dict[str, Any], series_uid: str) -> dict[str, Any]:
        return {
            "_id": row["id"],
            "SOPInstanceUID": row["sop_uid"],
            "SOPClassUID": row["sop_class_uid"],
            "SeriesInstanceUID": series_uid,
            "SeriesUID": row["series_id"],
            "TransferSyntaxUID": row["transfer_syntax_uid"],
            "Metadata": json.loads(row["meta"]),
            "Size": int(row["size"]),
            "SHA256": row["sha256"],
            "BlobKey": row["blob_key"],
            "PeerUID": row["peer_id"],
            "SessionUID": row["session_id"],
            "CreatedAt": row["created_at"],
            "UpdatedAt": row["updated_at"],
        }

    def get_instance(self, instance_id: str) -> dict[str, Any]:
        row = self._run(
            lambda tx: tx.one(
                "SELECT i.*, s.series_uid FROM instances i JOIN series s ON s.id = i.series_id"
                " WHERE i.id = ? OR i.sop_uid = ?",
                (instance_id, instance_id),
            ),
            write=False,
        )
        if row is None:
            raise NotFoundError(f"instance {instance_id!r} not found in {self.describe()}")
        return self._instance(row, row["series_uid"])

    def list_instances(self, series_id: str) -> list[dict[str, Any]]:
        def work(tx: Tx) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
            series = tx.one(
                "SELECT id, series_uid FROM series WHERE id = ? OR series_uid = ?",
                (series_id, series_id),
            )
            if series is None:
                return None, []
            return series, tx.query("SELECT * FROM instances WHERE series_id = ?", (series["id"],))

        series, rows = self._run(work, write=False)
        if series is None:
            raise NotFoundError(f"series {series_id!r} not found in {self.describe()}")
        return sort_instances([self._instance(r, series["series_uid"]) for r in rows])

    def open_instance(self, instance: dict[str, Any]) -> BinaryIO:
        return self._open_current(
            "instances",
            instance["_id"],
            BlobInfo(instance["BlobKey"], int(instance["Size"]), instance["SHA256"]),
            f"DICOM instance {instance['SOPInstanceUID']}",
        )

    def _series_records(self, tx: Tx, where: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        rows = tx.query(
            "SELECT se.*, st.study_uid, st.meta AS study_meta, p.patient_uid, p.meta AS patient_meta"
            " FROM series se JOIN studies st ON st.id = se.study_id JOIN patients p ON p.id = se.patient_id"
            f" WHERE {where} ORDER BY se.created_at, se.id",
            params,
        )
        out = []
        for r in rows:
            inst = sort_instances(
                [
                    {
                        "id": i["id"],
                        "Metadata": json.loads(i["meta"]),
                        "SOPInstanceUID": i["sop_uid"],
                    }
                    for i in tx.query(
                        "SELECT id, meta, sop_uid FROM instances WHERE series_id = ?", (r["id"],)
                    )
                ]
            )
            out.append(
                {
                    "_id": r["id"],
                    "PatientUID": r["patient_uid"],
                    "StudyInstanceUID": r["study_uid"],
                    "SeriesInstanceUID": r["series_uid"],
                    "PeerUID": r["peer_id"],
                    "Instances": [i["id"] for i in inst],
                    "Metadata": {
                        **json.loads(r["patient_meta"]),
                        **json.loads(r["study_meta"]),
                        **json.loads(r["meta"]),
                    },
                    "StudyUID": r["study_id"],
                    "CreatedAt": r["created_at"],
                    "UpdatedAt": r["updated_at"],
                }
            )
        return out

    def _study_records(self, tx: Tx, where: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        rows = tx.query(
            "SELECT st.*, p.patient_uid, p.meta AS patient_meta FROM studies st"
            f" JOIN patients p ON p.id = st.patient_id WHERE {where} ORDER BY st.created_at, st.id",
            params,
        )
        out = []
        for r in rows:
            series = tx.query(
                "SELECT id, modality FROM series WHERE study_id = ? ORDER BY created_at, id",
                (r["id"],),
            )
            out.append(
                {
                    "_id": r["id"],
                    "PatientUID": r["patient_uid"],
                    "StudyInstanceUID": r["study_uid"],
                    "PeerUID": r["peer_id"],
                    "Series": [s["id"] for s in series],
                    "Metadata": {
                        **json.loads(r["patient_meta"]),
                        **json.loads(r["meta"]),
                        "ModalitiesInStudy": sorted(
                            {s["modality"] for s in series if s["modality"]}
                        ),
                    },
                    "CreatedAt": r["created_at"],
                    "UpdatedAt": r["updated_at"],
                }
            )
        return out

    def _patient_records(self, tx: Tx, where: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        rows = tx.query(
            f"SELECT * FROM patients p WHERE {where} ORDER BY p.created_at, p.id", params
        )
        out = []
        for r in rows:
            studies = tx.query(
                "SELECT id FROM studies WHERE patient_id = ? ORDER BY created_at, id", (r["id"],)
            )
            modalities = tx.query(
                "SELECT DISTINCT modality FROM series WHERE patient_id = ?", (r["id"],)
            )
            out.append(
                {
                    "_id": r["id"],
                    "PatientUID": r["patient_uid"],
                    "PeerUID": r["peer_id"],
                    "Studies": [s["id"] for s in studies],
                    "Metadata": {
                        **json.loads(r["meta"]),
                        "ModalitiesInPatient": sorted(
                            {m["modality"] for m in modalities if m["modality"]}
                        ),
                    },
                    "CreatedAt": r["created_at"],
                    "UpdatedAt": r["updated_at"],
                }
            )
        return out

    def _get_one(
        self, kind: str, fetch: Callable[[Tx], list[dict[str, Any]]], key: str
    ) -> dict[str, Any]:
        rows = self._run(fetch, write=False)
        if not rows:
            raise NotFoundError(f"{kind} {key!r} not found in {self.describe()}")
        return rows[0]

    def get_series(self, series_id: str) -> dict[str, Any]:
        return self._get_one(
            "series",
            lambda tx: self._series_records(
                tx, "se.id = ? OR se.series_uid = ?", (series_id, series_id)
            ),
            series_id,
        )

    def get_study(self, study_id: str) -> dict[str, Any]:
        return self._get_one(
            "study",
            lambda tx: self._study_records(
                tx, "st.id = ? OR st.study_uid = ?", (study_id, study_id)
            ),
            study_id,
        )

    def get_patient(self, patient_id: str) -> dict[str, Any]:
        return self._get_one(
            "patient",
            lambda tx: self._patient_records(
                tx, "p.id = ? OR p.patient_uid = ?", (patient_id, patient_id)
            ),
            patient_id,
        )

    def list_series(
        self,
        *,
        study_id: str | None = None,
        patient_id: str | None = None,
        session_id: str | None = None,
    ) -> list[dict[str, Any]]:
        clauses, params = ["1 = 1"], []
        if study_id is not None:
            clauses.append("(st.id = ? OR st.study_uid = ?)")
            params += [study_id, study_id]
        if patient_id is not None:
            clauses.append("(p.id = ? OR p.patient_uid = ?)")
            params += [patient_id, patient_id]
        if session_id is not None:
            clauses.append("se.id IN (SELECT series_id FROM instances WHERE session_id = ?)")
            params.append(session_id)
        return self._run(
            lambda tx: self._series_records(tx, " AND ".join(clauses), params), write=False
        )

    def list_studies(
        self, *, patient_id: str | None = None, session_id: str | None = None
    ) -> list[dict[str, Any]]:
        clauses, params = ["1 = 1"], []
        if patient_id is not None:
            clauses.append("(p.id = ? OR p.patient_uid = ?)")
            params += [patient_id, patient_id]
        if session_id is not None:
            clauses.append(
                "st.id IN (SELECT se.study_id FROM series se JOIN instances i ON i.series_id = se.id"
                " WHERE i.session_id = ?)"
            )
            params.append(session_id)
        return self._run(
            lambda tx: self._study_records(tx, " AND ".join(clauses), params), write=False
        )

    def list_patients(self, *, session_id: str | None = None) -> list[dict[str, Any]]:
        clauses, params = ["1 = 1"], []
        if session_id is not None:
            clauses.append(
                "p.id IN (SELECT se.patient_id FROM series se JOIN instances i ON i.series_id = se.id"
                " WHERE i.session_id = ?)"
            )
            params.append(session_id)
        return self._run(
            lambda tx: self._patient_records(tx, " AND ".join(clauses), params), write=False
        )

    def delete_session_instances(self, session_id: str) -> int:
        def work(tx: Tx) -> list[str]:
            rows = tx.query(
                "SELECT blob_key, series_id FROM instances WHERE session_id = ?", (session_id,)
            )
            tx.execute("DELETE FROM instances WHERE session_id = ?", (session_id,))
            self._prune_empty(tx, sorted({r["series_id"] for r in rows}))
            return [r["blob_key"] for r in rows]

        keys = self._run(work)
        for key in keys:
            self.blobs.delete(key)
        return len(keys)

    @staticmethod
    def _prune_empty(tx: Tx, series_ids: Sequence[str]) -> None:
        """Delete those series that have no instance left, then their studies and
        patients left without children."""
        for series_id in series_ids:
            parents = tx.one("SELECT study_id, patient_id FROM series WHERE id = ?", (series_id,))
            if parents is None or tx.one(
                "SELECT 1 AS x FROM instances WHERE series_id = ? LIMIT 1", (series_id,)
            ):
                continue
            tx.execute("DELETE FROM series WHERE id = ?", (series_id,))
            if tx.one(
                "SELECT 1 AS x FROM series WHERE study_id = ? LIMIT 1", (parents["study_id"],)
            ):
                continue
            tx.execute("DELETE FROM studies WHERE id = ?", (parents["study_id"],))
            if not tx.one(
                "SELECT 1 AS x FROM studies WHERE patient_id = ? LIMIT 1", (parents["patient_id"],)
            ):
                tx.execute("DELETE FROM patients WHERE id = ?", (parents["patient_id"],))
