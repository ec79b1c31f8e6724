"""Reading the DICOM index in the platform's documents: instance records from the
``dicomfiles`` bucket, and the series, study and patient records through one table.

Each record level is a :class:`Level`: its collection, the UID field that finds it
besides its ``_id``, the function that builds its SPEC §4 record from a document, and
how to select its documents that contain a set of series. ``get_series``/``get_study``/
``get_patient`` and ``list_series``/``list_studies``/``list_patients`` are one
implementation over that table. A record's list of children (``Instances``,
``Series``, ``Studies``) shows the children that exist (the platform leaves ids of
deleted ones behind); its modality list only non-empty text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Generic, TypeVar

from ..blobs import BlobInfo
from ..records import InstanceRecord, PatientRecord, SeriesRecord, StudyRecord
from ..slice_order import sort_instances
from .grid import NEWEST_FILE, GridBucket, blob_key, recorded_checksum
from .layout import (
    EXTRA,
    ORIGIN,
    RECORD_CHILDREN,
    RECORD_ORDER,
    all_id_values,
    extra_of,
    id_values,
    iso,
    oid,
    stored,
)
from .session_files import SessionFiles

__all__ = ["PATIENTS", "SERIES", "STUDIES", "IndexRecords", "Level"]

#: a series, study or patient record
RecordT = TypeVar("RecordT", SeriesRecord, StudyRecord, PatientRecord)
#: metadata keys of an instance file that are not header values
_NOT_HEADER = (EXTRA, "PeerUID", "Slices")


@dataclass(frozen=True)
class Level(Generic[RecordT]):
    """One record level: ``collection`` holds its documents, found by ``_id`` or
    ``uid_field``; ``build(index, db, doc)`` makes the record; ``holding(db, series)``
    is the query for its documents that contain one of the series ids ``series``."""

    kind: str
    collection: str
    uid_field: str
    build: Callable[[IndexRecords, Any, dict[str, Any]], RecordT]
    holding: Callable[[Any, set[str]], dict[str, Any]]


def _with_modalities(doc: dict[str, Any], field: str) -> dict[str, Any]:
    meta = dict(doc.get("Metadata") or {})
    meta[field] = [m for m in meta.get(field) or [] if isinstance(m, str) and m]
    return meta


def _series(index: IndexRecords, db: Any, doc: dict[str, Any]) -> SeriesRecord:
    instances = index._instances(db, list(doc.get("Instances") or []), str(doc["_id"]))
    return SeriesRecord(
        _id=str(doc["_id"]),
        PatientUID=stored(doc, "PatientUID"),
        StudyInstanceUID=stored(doc, "StudyInstanceUID"),
        SeriesInstanceUID=stored(doc, "SeriesInstanceUID"),
        PeerUID=doc.get("PeerUID"),
        Instances=[r["_id"] for r in instances],
        Metadata=dict(doc.get("Metadata") or {}),
        CreatedAt=iso(doc.get("CreatedAt")),
        UpdatedAt=iso(doc.get("UpdatedAt")),
    )


def _study(index: IndexRecords, db: Any, doc: dict[str, Any]) -> StudyRecord:
    return StudyRecord(
        _id=str(doc["_id"]),
        PatientUID=stored(doc, "PatientUID"),
        StudyInstanceUID=stored(doc, "StudyInstanceUID"),
        PeerUID=doc.get("PeerUID"),
        Series=index._existing(db, "series", list(doc.get("Series") or [])),
        Metadata=_with_modalities(doc, "ModalitiesInStudy"),
        CreatedAt=iso(doc.get("CreatedAt")),
        UpdatedAt=iso(doc.get("UpdatedAt")),
    )


def _patient(index: IndexRecords, db: Any, doc: dict[str, Any]) -> PatientRecord:
    return PatientRecord(
        _id=str(doc["_id"]),
        PatientUID=stored(doc, "PatientUID"),
        PeerUID=doc.get("PeerUID"),
        Studies=index._existing(db, "studies", list(doc.get("Studies") or [])),
        Metadata=_with_modalities(doc, "ModalitiesInPatient"),
        CreatedAt=iso(doc.get("CreatedAt")),
        UpdatedAt=iso(doc.get("UpdatedAt")),
    )


def _patients_holding(db: Any, series: set[str]) -> dict[str, Any]:
    studies = [
        str(d["_id"]) for d in db.studies.find({"Series": {"$in": sorted(series)}}, {"_id": 1})
    ]
    return {"Studies": {"$in": studies}}


SERIES: Level[SeriesRecord] = Level(
    "series",
    "series",
    "SeriesInstanceUID",
    _series,
    lambda db, series: {"_id": {"$in": all_id_values(series)}},
)
STUDIES: Level[StudyRecord] = Level(
    "study",
    "studies",
    "StudyInstanceUID",
    _study,
    lambda db, series: {"Series": {"$in": sorted(series)}},
)
PATIENTS: Level[PatientRecord] = Level(
    "patient", "patients", "PatientUID", _patient, _patients_holding
)


class IndexRecords(SessionFiles):
    """Reading instances and the series/study/patient records (part of ``MongoStore``)."""

    dicom: GridBucket

    # ------------------------------------------------------------- instances
    def _instance(self, doc: dict[str, Any], series_id: str | None) -> InstanceRecord:
        meta = doc.get("metadata") or {}
        extra = extra_of(meta)
        sha256 = recorded_checksum(doc, f"DICOM instance {meta.get('SOPInstanceUID')}")
        instance_meta = extra.get("instance")
        if not isinstance(instance_meta, dict):  # a file the platform wrote
            instance_meta = {k: v for k, v in meta.items() if k not in _NOT_HEADER}
        uploaded = doc.get("uploadDate")
        return InstanceRecord(
            _id=str(doc["_id"]),
            SOPInstanceUID=stored(meta, "SOPInstanceUID"),
            SOPClassUID=stored(meta, "SOPClassUID"),
            SeriesInstanceUID=stored(meta, "SeriesInstanceUID"),
            SeriesUID=series_id,
            TransferSyntaxUID=stored(extra, "transferSyntaxUID"),
            Metadata=dict(instance_meta),
            Size=int(doc.get("length") or 0),
            SHA256=sha256,
            BlobKey=blob_key(doc),
            PeerUID=meta.get("PeerUID"),
            SessionUID=extra.get("sessionId"),
            CreatedAt=iso(extra.get("createdAt") or uploaded),
            UpdatedAt=iso(uploaded),
        )

    def _instances(self, db: Any, ids: list[Any], series_id: str) -> list[InstanceRecord]:
        """The instance records of the listed file ids that exist, in slice order (the
        stored list keeps the platform's filing order; see :mod:`..slice_order`)."""
        docs = self.dicom.settle(db["dicomfiles.files"].find({"_id": {"$in": all_id_values(ids)}}))
        return sort_instances([self._instance(d, series_id) for d in docs])

    def get_instance(self, instance_id: str) -> InstanceRecord:
        def work(db: Any) -> InstanceRecord | None:
            docs = list(
                db["dicomfiles.files"]
                .find(
                    {
                        "$or": [
                            {"_id": {"$in": id_values(instance_id)}},
                            {"metadata.SOPInstanceUID": instance_id},
                        ]
                    }
                )
                .sort(NEWEST_FILE)
                .limit(1)
            )
            docs = self.dicom.settle(docs)
            if not docs:
                return None
            series = db.series.find_one({"Instances": str(docs[0]["_id"])}, {"_id": 1})
            return self._instance(docs[0], str(series["_id"]) if series else None)

        record = self._run(work)
        if record is None:
            raise self._not_found("instance", instance_id)
        return record

    def list_instances(self, series_id: str) -> list[InstanceRecord]:
        def work(db: Any) -> list[InstanceRecord] | None:
            series = self._find_record(db, SERIES, series_id)
            if series is None:
                return None
            return self._instances(db, list(series.get("Instances") or []), str(series["_id"]))

        records = self._run(work)
        if records is None:
            raise self._not_found("series", series_id)
        return records

    def open_instance(self, instance: InstanceRecord) -> BinaryIO:
        return self.dicom.open(
            BlobInfo(str(instance["BlobKey"]), int(instance["Size"]), instance["SHA256"] or ""),
            f"DICOM instance {instance['SOPInstanceUID']}",
        )

    # --------------------------------------------------------------- records
    @staticmethod
    def _find_record(db: Any, level: Level[RecordT], key: str) -> dict[str, Any] | None:
        docs = list(
            db[level.collection]
            .find({"$or": [{"_id": {"$in": id_values(key)}}, {level.uid_field: key}]})
            .sort(RECORD_ORDER)
            .limit(1)
        )
        return docs[0] if docs else None

    def _existing(self, db: Any, collection: str, ids: list[Any]) -> list[str]:
        """The listed record ids (text) whose records exist, in list order."""
        found = {
            str(d["_id"])
            for d in db[collection].find({"_id": {"$in": all_id_values(ids)}}, {"_id": 1})
        }
        return [str(i) for i in dict.fromkeys(ids) if str(i) in found]

    def _record(self, level: Level[RecordT], key: str) -> RecordT:
        def work(db: Any) -> RecordT | None:
            doc = self._find_record(db, level, key)
            return None if doc is None else level.build(self, db, doc)

        record = self._run(work)
        if record is None:
            raise self._not_found(level.kind, key)
        return record

    def _records(
        self,
        level: Level[RecordT],
        *,
        study_id: str | None = None,
        patient_id: str | None = None,
        session_id: str | None = None,
    ) -> list[RecordT]:
        def work(db: Any) -> list[RecordT]:
            series = self._series_ids(db, study_id, patient_id, session_id)
            query = {} if series is None else level.holding(db, series)
            docs = db[level.collection].find(query).sort(RECORD_ORDER)
            return [level.build(self, db, d) for d in docs]

        return self._run(work)

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

    # ----------------------------------------------------------- selection
    def _children(self, db: Any, collection: str, selector: dict[str, Any]) -> list[Any]:
        children = RECORD_CHILDREN[collection][0]
        return [
            c for d in db[collection].find(selector, {children: 1}) for c in d.get(children) or []
        ]

    def _session_series(self, db: Any, session_id: str) -> list[Any]:
        """Ids (text) of the series holding instances the session's ingest filed, and —
        for a session the platform opened — of its patient's series."""
        files = [
            str(d["_id"])
            for d in db["dicomfiles.files"].find(
                {f"metadata.{EXTRA}.sessionId": session_id}, {"_id": 1}
            )
        ]
        found = [str(d["_id"]) for d in db.series.find({"Instances": {"$in": files}}, {"_id": 1})]
        patient = self._platform_patient(db, session_id)
        if patient is not None:
            found.extend(str(s) for s in self._patient_tree(db, patient)[1])
        return found

    def _series_ids(
        self, db: Any, study_id: str | None, patient_id: str | None, session_id: str | None
    ) -> set[str] | None:
        """Ids of the series passing every given filter (``None``: no filter given)."""
        sets: list[set[str]] = []
        if study_id is not None:
            by = {"$or": [{"_id": {"$in": id_values(study_id)}}, {"StudyInstanceUID": study_id}]}
            sets.append({str(s) for s in self._children(db, "studies", by)})
        if patient_id is not None:
            by = {"$or": [{"_id": {"$in": id_values(patient_id)}}, {"PatientUID": patient_id}]}
            studies = self._children(db, "patients", by)
            sets.append(
                {
                    str(s)
                    for s in self._children(db, "studies", {"_id": {"$in": all_id_values(studies)}})
                }
            )
        if session_id is not None:
            sets.append(set(self._session_series(db, session_id)))
        return set.intersection(*sets) if sets else None

    def _platform_patient(self, db: Any, session_id: str) -> Any:
        """The patient ``_id`` of a session the platform opened (``None`` for a session
        of this package, or one without a patient)."""
        session = db.sessions.find_one({"_id": {"$in": id_values(session_id)}})
        if session is None or extra_of(session).get("origin") == ORIGIN:
            return None
        return session.get("patient_id")

    def _patient_tree(self, db: Any, patient_id: Any) -> tuple[list[Any], list[Any], list[Any]]:
        """(study ids, series ids, instance file ids) of a patient record."""
        patient = db.patients.find_one({"_id": {"$in": id_values(patient_id)}}) or {}
        studies = list(
            db.studies.find({"_id": {"$in": all_id_values(patient.get("Studies") or [])}})
        )
        series_ids = [s for st in studies for s in st.get("Series") or []]
        series = list(db.series.find({"_id": {"$in": all_id_values(series_ids)}}))
        files = [oid(str(i)) for s in series for i in s.get("Instances") or []]
        return [st["_id"] for st in studies], [s["_id"] for s in series], files
