"""The series, study and patient records of the SQL index, read through one table.

Each record level is a :class:`Level`: the query that reads its rows (joined with what
its ``Metadata`` merges in), the filters it can be selected by - its key (record ``_id``
or DICOM UID), and the study, patient or session it belongs to - and the function that
builds the SPEC §4 record from a row. :func:`read_records` is the one implementation
behind ``get_series``/``get_study``/``get_patient`` and ``list_series``/
``list_studies``/``list_patients``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..records import InstanceRecord, PatientRecord, SeriesRecord, StudyRecord
from ..slice_order import sort_instances
from .core import Tx

__all__ = [
    "PATIENTS",
    "SERIES",
    "STUDIES",
    "Level",
    "RecordT",
    "instance_record",
    "read_records",
]

#: a series, study or patient record
RecordT = TypeVar("RecordT", SeriesRecord, StudyRecord, PatientRecord)

#: instances of a session, and the series, studies and patients they were filed under
_SESSION_SERIES = "SELECT series_id FROM instances WHERE session_id = ?"
_SESSION_PARENT = (
    "SELECT se.{column} FROM series se JOIN instances i ON i.series_id = se.id"
    " WHERE i.session_id = ?"
)
_OF_STUDY = "(st.id = ? OR st.study_uid = ?)"
_OF_PATIENT = "(p.id = ? OR p.patient_uid = ?)"


@dataclass(frozen=True)
class Level(Generic[RecordT]):
    """How one record level is read: ``query`` selects its rows (``WHERE`` and
    ``ORDER BY`` are added), ``filters`` maps a filter name to its SQL condition (each
    ``?`` takes the filter's value), ``build`` makes a record of a row."""

    kind: str
    query: str
    order: str
    filters: Mapping[str, str]
    build: Callable[[Tx, dict[str, Any]], RecordT]


def instance_record(row: dict[str, Any], series_uid: str) -> InstanceRecord:
    """The instance record of an ``instances`` row (of the series ``series_uid``)."""
    return InstanceRecord(
        _id=row["id"],
        SOPInstanceUID=row["sop_uid"],
        SOPClassUID=row["sop_class_uid"],
        SeriesInstanceUID=series_uid,
        SeriesUID=row["series_id"],
        TransferSyntaxUID=row["transfer_syntax_uid"],
        Metadata=json.loads(row["meta"]),
        Size=int(row["size"]),
        SHA256=row["sha256"],
        BlobKey=row["blob_key"],
        PeerUID=row["peer_id"],
        SessionUID=row["session_id"],
        CreatedAt=row["created_at"],
        UpdatedAt=row["updated_at"],
    )


def _series(tx: Tx, r: dict[str, Any]) -> SeriesRecord:
    instances = sort_instances(
        [
            {"id": i["id"], "Metadata": json.loads(i["meta"]), "SOPInstanceUID": i["sop_uid"]}
            for i in tx.query(
                "SELECT id, meta, sop_uid FROM instances WHERE series_id = ?", (r["id"],)
            )
        ]
    )
    return SeriesRecord(
        _id=r["id"],
        PatientUID=r["patient_uid"],
        StudyInstanceUID=r["study_uid"],
        SeriesInstanceUID=r["series_uid"],
        PeerUID=r["peer_id"],
        Instances=[i["id"] for i in instances],
        Metadata={
            **json.loads(r["patient_meta"]),
            **json.loads(r["study_meta"]),
            **json.loads(r["meta"]),
        },
        StudyUID=r["study_id"],
        CreatedAt=r["created_at"],
        UpdatedAt=r["updated_at"],
    )


def _study(tx: Tx, r: dict[str, Any]) -> StudyRecord:
    series = tx.query(
        "SELECT id, modality FROM series WHERE study_id = ? ORDER BY created_at, id", (r["id"],)
    )
    return StudyRecord(
        _id=r["id"],
        PatientUID=r["patient_uid"],
        StudyInstanceUID=r["study_uid"],
        PeerUID=r["peer_id"],
        Series=[s["id"] for s in series],
        Metadata={
            **json.loads(r["patient_meta"]),
            **json.loads(r["meta"]),
            "ModalitiesInStudy": sorted({s["modality"] for s in series if s["modality"]}),
        },
        CreatedAt=r["created_at"],
        UpdatedAt=r["updated_at"],
    )


def _patient(tx: Tx, r: dict[str, Any]) -> PatientRecord:
    studies = tx.query(
        "SELECT id FROM studies WHERE patient_id = ? ORDER BY created_at, id", (r["id"],)
    )
    modalities = tx.query("SELECT DISTINCT modality FROM series WHERE patient_id = ?", (r["id"],))
    return PatientRecord(
        _id=r["id"],
        PatientUID=r["patient_uid"],
        PeerUID=r["peer_id"],
        Studies=[s["id"] for s in studies],
        Metadata={
            **json.loads(r["meta"]),
            "ModalitiesInPatient": sorted({m["modality"] for m in modalities if m["modality"]}),
        },
        CreatedAt=r["created_at"],
        UpdatedAt=r["updated_at"],
    )


SERIES: Level[SeriesRecord] = Level(
    kind="series",
    query="SELECT se.*, st.study_uid, st.meta AS study_meta, p.patient_uid,"
    " p.meta AS patient_meta FROM series se JOIN studies st ON st.id = se.study_id"
    " JOIN patients p ON p.id = se.patient_id",
    order="se.created_at, se.id",
    filters={
        "key": "(se.id = ? OR se.series_uid = ?)",
        "study_id": _OF_STUDY,
        "patient_id": _OF_PATIENT,
        "session_id": f"se.id IN ({_SESSION_SERIES})",
    },
    build=_series,
)
STUDIES: Level[StudyRecord] = Level(
    kind="study",
    query="SELECT st.*, p.patient_uid, p.meta AS patient_meta FROM studies st"
    " JOIN patients p ON p.id = st.patient_id",
    order="st.created_at, st.id",
    filters={
        "key": _OF_STUDY,
        "patient_id": _OF_PATIENT,
        "session_id": f"st.id IN ({_SESSION_PARENT.format(column='study_id')})",
    },
    build=_study,
)
PATIENTS: Level[PatientRecord] = Level(
    kind="patient",
    query="SELECT * FROM patients p",
    order="p.created_at, p.id",
    filters={
        "key": _OF_PATIENT,
        "session_id": f"p.id IN ({_SESSION_PARENT.format(column='patient_id')})",
    },
    build=_patient,
)


def read_records(tx: Tx, level: Level[RecordT], filters: Mapping[str, str | None]) -> list[RecordT]:
    """The records of ``level`` passing every filter given (``None``: not given), in
    creation order."""
    clauses, params = ["1 = 1"], []
    for name, value in filters.items():
        if value is not None:
            clause = level.filters[name]
            clauses.append(clause)
            params += [value] * clause.count("?")
    rows = tx.query(f"{level.query} WHERE {' AND '.join(clauses)} ORDER BY {level.order}", params)
    return [level.build(tx, row) for row in rows]
