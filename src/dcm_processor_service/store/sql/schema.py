"""The SQL providers' schema: versioned steps, applied once each, in order.

:data:`SCHEMA` lists ``(version, steps)``; a step is a SQL statement or, for a data
change, a function of the transaction. :func:`apply_versions` applies what a database
lacks and records it in ``schema_version`` (one row per component: ``core`` here, the
PostgreSQL blob tables their own). The caller holds the lock that serialises
migrations (SQLite's write lock, PostgreSQL's advisory lock).

Tables (text columns hold JSON or ISO-8601 UTC time): ``sessions``, ``jobs``,
``session_data``, ``session_files``, ``peers``, and the DICOM index ``patients`` ->
``studies`` -> ``series`` -> ``instances`` (keyed by PatientUID, StudyInstanceUID,
SeriesInstanceUID, SOPInstanceUID).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence

from ..._errors import StorageError
from ..record_values import patient_uid, platform_metadata
from .core import Tx, dumps, now_text

__all__ = ["CORE", "SCHEMA", "SCHEMA_VERSION", "Step", "apply_versions"]

logger = logging.getLogger(__name__)

#: A schema step: a SQL statement, or a function of the transaction (data changes).
Step = str | Callable[[Tx], None]
#: ``schema_version.component`` of the tables below
CORE = "core"


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
            (key, dumps(platform_metadata(meta)), row["id"]),
        )
    for table in ("studies", "series"):
        for row in tx.query(f"SELECT id, meta FROM {table}"):
            meta = json.loads(row["meta"])
            cleaned = platform_metadata(meta)
            if cleaned != meta:
                tx.execute(f"UPDATE {table} SET meta = ? WHERE id = ?", (dumps(cleaned), row["id"]))


#: Versioned schema: (version, steps) — SQL statements, or functions of a transaction
#: for data changes. Applied in order, each version once.
SCHEMA: list[tuple[int, list[Step]]] = [
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


def apply_versions(
    tx: Tx, component: str, schema: Sequence[tuple[int, Sequence[Step]]], where: str
) -> int:
    """Apply the versions of ``schema`` that ``component`` lacks inside ``tx``; return
    the resulting version. A database at a newer version than ``schema`` knows is
    refused (``where`` names the store in the message)."""
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "component TEXT PRIMARY KEY, version INTEGER NOT NULL, applied_at TEXT NOT NULL)"
    )
    row = tx.one("SELECT version FROM schema_version WHERE component = ?", (component,))
    current = int(row["version"]) if row else 0
    latest = schema[-1][0]
    if current > latest:
        raise StorageError(
            f"{where}: schema version {current} of {component!r} is newer than this "
            f"dcm-processor-service supports ({latest}) - upgrade the package"
        )
    for version, steps in schema:
        if version <= current:
            continue
        for step in steps:
            if callable(step):
                step(tx)
            else:
                tx.execute(step)
        tx.execute(
            "INSERT INTO schema_version (component, version, applied_at) VALUES (?, ?, ?)"
            " ON CONFLICT (component) DO UPDATE SET version = excluded.version,"
            " applied_at = excluded.applied_at",
            (component, version, now_text()),
        )
        logger.info("%s: applied %s schema version %d", where, component, version)
    return max(current, latest)
