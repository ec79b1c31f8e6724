"""The DICOM index in the SQL providers' tables: filing instances, reading records,
and removing what a session's ingest filed.

An instance is filed in one transaction with its patient, study and series rows
(upserts keyed by PatientUID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) - or
a batch of instances in one transaction (group commit, :mod:`.group_commit`); an
instance, series or study already filed under another patient is refused
(:class:`~dcm_processor_service.PatientConflictError`). The series, study and patient
records are read through one table (:mod:`.index_records`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from ..._errors import PatientConflictError
from ..blobs import BlobInfo
from ..instance_batch import BatchResult, InstanceBatch
from ..instance_read import StoredBytes, instance_blob, read_blob
from ..record_values import patient_identity
from ..records import InstanceInput, InstanceRecord, PatientRecord, SeriesRecord, StudyRecord
from ..slice_order import sort_instances
from .core import Tx, dumps, new_id, now_text
from .group_commit import SQLInstanceBatch
from .index_records import PATIENTS, SERIES, STUDIES, Level, RecordT, instance_record, read_records
from .session_state import SQLSessionState

__all__ = ["SQLDicomIndex"]


def _upsert(
    tx: Tx,
    now: str,
    table: str,
    key_col: str,
    key: str,
    cols: dict[str, Any],
    returning: str = "id",
) -> dict[str, Any]:
    """Insert or update the row of ``table`` whose ``key_col`` is ``key``; its
    ``returning`` columns."""
    names = [key_col, *cols]
    # a re-ingest without a peer/session keeps the ones already recorded
    updates = ", ".join(
        f"{c} = COALESCE(excluded.{c}, {table}.{c})"
        if c in ("peer_id", "session_id")
        else f"{c} = excluded.{c}"
        for c in cols
    )
    row = tx.row(
        f"INSERT INTO {table} (id, {', '.join(names)}, created_at, updated_at)"
        f" VALUES (?, {', '.join('?' for _ in names)}, ?, ?)"
        f" ON CONFLICT ({key_col}) DO UPDATE SET {updates}, updated_at = excluded.updated_at"
        f" RETURNING {returning}",
        (new_id(), key, *cols.values(), now, now),
    )
    return row


class _Filed:
    """What one filing transaction has written so far, so that the instances of a batch
    that share a patient, study and series cost one statement each for their parents
    instead of four: the patient, study and series rows upserted (an upsert with the
    same values again is skipped - the row already holds them; its ``updated_at`` stays
    the time of the first instance of the transaction), and the (patient, study,
    series) whose conflict check passed - once filed, the series and study belong to
    that patient in this transaction, so only the instance's own patient is checked
    again. Forgotten whenever rows are deleted (an instance moved series)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        self.checked: set[tuple[str, str, str]] = set()

    def forget(self) -> None:
        self.rows.clear()
        self.checked.clear()

    def upsert(
        self, tx: Tx, now: str, table: str, key_col: str, key: str, cols: dict[str, Any]
    ) -> str:
        """:func:`_upsert` unless this transaction upserted the same values already;
        the row's id."""
        done = self.rows.get((table, key))
        if done is not None and done[0] == cols:
            return done[1]
        row_id = str(_upsert(tx, now, table, key_col, key, cols)["id"])
        self.rows[(table, key)] = (cols, row_id)
        return row_id


class SQLDicomIndex(SQLSessionState):
    """The DICOM index half of the SQL store."""

    # ---------------------------------------------------------------- filing
    def put_instance(self, instance: InstanceInput, source: BinaryIO) -> InstanceRecord:
        return self._put_with_blob(source, lambda tx, blob: self._file_instance(tx, instance, blob))

    @contextlib.contextmanager
    def instance_batch(self) -> Iterator[InstanceBatch]:
        batch = SQLInstanceBatch(self)
        try:
            yield batch
        finally:
            batch.discard()

    def _file_batch(
        self, items: Sequence[tuple[InstanceInput, BlobInfo]]
    ) -> tuple[list[BatchResult], list[str]]:
        """File every instance of ``items`` (their blobs are written and durable) in one
        transaction, committed durably; return the result per item and the blobs the
        records pointed at before (to delete once committed)."""

        def unit(tx: Tx) -> tuple[list[BatchResult], list[str]]:
            results: list[BatchResult] = []
            replaced: list[str] = []
            filed = _Filed()  # per attempt: a retried transaction starts over
            for inp, blob in items:
                self._confirm_blob(tx, blob.key)
                try:
                    # refused before anything of this instance is written
                    record, old_key = self._file_instance(tx, inp, blob, filed)
                except PatientConflictError as exc:
                    results.append(exc)
                    continue
                results.append(record)
                if old_key and old_key != blob.key:
                    replaced.append(old_key)
            return results, replaced

        return self._run_durable(unit)

    def _file_instance(
        self, tx: Tx, inp: InstanceInput, blob: BlobInfo, filed: _Filed | None = None
    ) -> tuple[InstanceRecord, str | None]:
        """File one instance whose bytes are ``blob`` under its patient, study and series
        in transaction ``tx`` (``filed``: what this transaction filed before); return its
        record and the blob it pointed at before.
        Raises :class:`PatientConflictError` before writing anything."""
        filed = filed if filed is not None else _Filed()
        now = now_text()
        parents = (inp.patient_uid, inp.study_instance_uid, inp.series_instance_uid)
        self._refuse_other_patient(tx, inp, instance_only=parents in filed.checked)
        patient_id = filed.upsert(
            tx,
            now,
            "patients",
            "patient_uid",
            inp.patient_uid,
            {"peer_id": inp.peer_id, "meta": dumps(inp.patient_meta)},
        )
        study_id = filed.upsert(
            tx,
            now,
            "studies",
            "study_uid",
            inp.study_instance_uid,
            {"patient_id": patient_id, "peer_id": inp.peer_id, "meta": dumps(inp.study_meta)},
        )
        series_id = filed.upsert(
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
                "meta": dumps(inp.series_meta),
            },
        )
        old = tx.one(
            "SELECT blob_key, series_id FROM instances WHERE sop_uid = ?" + self.for_update,
            (inp.sop_instance_uid,),
        )
        row = _upsert(
            tx,
            now,
            "instances",
            "sop_uid",
            inp.sop_instance_uid,
            {
                "series_id": series_id,
                "sop_class_uid": inp.sop_class_uid,
                "transfer_syntax_uid": inp.transfer_syntax_uid,
                "meta": dumps(inp.instance_meta),
                "size": blob.size,
                "sha256": blob.sha256,
                "blob_key": blob.key,
                "peer_id": inp.peer_id,
                "session_id": inp.session_id,
            },
            returning="*",
        )
        filed.checked.add(parents)
        if old and old["series_id"] != series_id:
            # the instance moved to another series: drop what it left empty
            self._prune_empty(tx, [old["series_id"]])
            filed.forget()
        return instance_record(row, inp.series_instance_uid), (old["blob_key"] if old else None)

    @staticmethod
    def _refuse_other_patient(tx: Tx, inp: InstanceInput, *, instance_only: bool = False) -> None:
        """Raise :class:`PatientConflictError` when the instance's SOPInstanceUID, series
        or study is already filed under another patient (``instance_only``: the series
        and study are known to be filed under this patient; only the SOPInstanceUID is
        checked).

        Race-free in the transaction of the filing: SQLite writers hold the database
        lock (``BEGIN IMMEDIATE``); on PostgreSQL (``REPEATABLE READ``) a concurrent
        writer that filed the same series or study first makes this transaction's
        ``INSERT ... ON CONFLICT`` fail with a serialization error, and the retry sees
        the winner here."""
        instance = (
            "SELECT 1 AS rank, p.patient_uid, p.meta FROM instances i"
            " JOIN series s ON s.id = i.series_id"
            " JOIN patients p ON p.id = s.patient_id WHERE i.sop_uid = ?"
        )
        rows = (
            tx.query(instance, (inp.sop_instance_uid,))
            if instance_only
            else tx.query(
                instance + " UNION ALL SELECT 2 AS rank, p.patient_uid, p.meta FROM series s"
                " JOIN patients p ON p.id = s.patient_id WHERE s.series_uid = ?"
                " UNION ALL SELECT 3 AS rank, p.patient_uid, p.meta FROM studies st"
                " JOIN patients p ON p.id = st.patient_id WHERE st.study_uid = ?",
                (inp.sop_instance_uid, inp.series_instance_uid, inp.study_instance_uid),
            )
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

    # ------------------------------------------------------------- instances
    def get_instance(self, instance_id: str) -> InstanceRecord:
        row = self._read_one(
            "SELECT i.*, s.series_uid FROM instances i JOIN series s ON s.id = i.series_id"
            " WHERE i.id = ? OR i.sop_uid = ?",
            (instance_id, instance_id),
        )
        if row is None:
            raise self._not_found("instance", instance_id)
        return instance_record(row, row["series_uid"])

    def list_instances(self, series_id: str) -> list[InstanceRecord]:
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
            raise self._not_found("series", series_id)
        return sort_instances([instance_record(r, series["series_uid"]) for r in rows])

    def open_instance(self, instance: InstanceRecord) -> BinaryIO:
        info, what = instance_blob(instance)
        return self._open_current("instances", instance["_id"], info, what)

    def read_instance(self, instance: InstanceRecord) -> StoredBytes:
        info, what = instance_blob(instance)
        return self._current_blob(
            "instances", instance["_id"], info, what, lambda b: read_blob(self.blobs, b, what)
        )

    # --------------------------------------------------------------- records
    def _records(self, level: Level[RecordT], **filters: str | None) -> list[RecordT]:
        return self._run(lambda tx: read_records(tx, level, filters), write=False)

    def _record(self, level: Level[RecordT], key: str) -> RecordT:
        records = self._records(level, key=key)
        if not records:
            raise self._not_found(level.kind, key)
        return records[0]

    def get_series(self, series_id: str) -> SeriesRecord:
        return self._record(SERIES, series_id)

    def get_study(self, study_id: str) -> StudyRecord:
        return self._record(STUDIES, study_id)

    def get_patient(self, patient_id: str) -> PatientRecord:
        return self._record(PATIENTS, patient_id)

    def list_series(
        self,
        *,
        study_id: str | None = None,
        patient_id: str | None = None,
        session_id: str | None = None,
    ) -> list[SeriesRecord]:
        return self._records(
            SERIES, study_id=study_id, patient_id=patient_id, session_id=session_id
        )

    def list_studies(
        self, *, patient_id: str | None = None, session_id: str | None = None
    ) -> list[StudyRecord]:
        return self._records(STUDIES, patient_id=patient_id, session_id=session_id)

    def list_patients(self, *, session_id: str | None = None) -> list[PatientRecord]:
        return self._records(PATIENTS, session_id=session_id)

    # -------------------------------------------------------------- clean-up
    def delete_session_instances(self, session_id: str) -> int:
        deleted = self._delete_with_blobs(
            "instances",
            "session_id = ?",
            (session_id,),
            also="series_id",
            then=lambda tx, rows: self._prune_empty(tx, sorted({r["series_id"] for r in rows})),
        )
        return len(deleted)

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
