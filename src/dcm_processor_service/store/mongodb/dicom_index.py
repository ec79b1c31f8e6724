"""The DICOM index in the platform's documents: ``dicomfiles``, ``series``, ``studies``,
``patients``.

What the platform's DICOM server writes, and so what this package writes:

* each instance is a GridFS file of ``dicomfiles`` named ``<uuid>.dcm``,
  ``contentType`` ``application/dicom``; its ``metadata`` is the header as record
  ``Metadata`` values (flat, keyword -> value) plus ``PeerUID`` and ``Slices: 1``;
* a re-ingest of the same instance (same SOPInstanceUID, and PeerUID when one is
  given) replaces the file *in place*, under the same ``_id`` (see
  :mod:`.grid`), so the ``Instances`` lists of the records stay valid;
* records are keyed as the platform keys them — a series by (``PatientUID``,
  ``StudyInstanceUID``, ``SeriesInstanceUID``, ``PeerUID``), a study by (``PatientUID``,
  ``StudyInstanceUID``, ``PeerUID``), a patient by (``PatientUID``, ``PeerUID``) — and
  hold ObjectId ``_id``s; ``Instances``, ``Series`` and ``Studies`` are lists of those
  ids as text; ``ModalitiesInStudy``/``ModalitiesInPatient`` are added to; a patient
  that gets a new instance is marked ``Scheduled: false``, so the platform's scheduler
  opens a session for it, as after the platform's own ingest.

This package also refreshes a record's ``Metadata`` from each instance filed into it (a
corrected resend corrects the record), which the platform does not do.

Clean-up follows the platform's rule for a platform session (the session's patient with
its studies, series and instance files), and for a session of this package removes the
instances its ingest filed; a record left empty is deleted only if this package created
it (``dcmProcessorService.origin``), otherwise it stays, empty, as the platform left it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

import pymongo
from bson import ObjectId

from ..._errors import NotFoundError, PatientConflictError
from ..blobs import BlobInfo
from ..record_values import patient_identity
from ..records import InstanceInput
from ..slice_order import sort_instances
from .grid import GridBucket, blob_key, recorded_checksum, unique_filename
from .layout import EXTRA, ORIGIN, aware, id_values, iso, now, oid, plain
from .session_state import SessionState, _extra

__all__ = ["DicomIndex"]

logger = logging.getLogger(__name__)

_NEWEST_FILE = [("uploadDate", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)]
_RECORD_ORDER = [("CreatedAt", pymongo.ASCENDING), ("_id", pymongo.ASCENDING)]
#: metadata keys of an instance file that are not header values
_NOT_HEADER = (EXTRA, "PeerUID", "Slices")
#: (collection, list of child ids, modality list in Metadata) per record level
_LEVELS = {
    "series": ("Instances", None),
    "studies": ("Series", "ModalitiesInStudy"),
    "patients": ("Studies", "ModalitiesInPatient"),
}


def _ids(values: Iterable[Any]) -> list[Any]:
    """Record ids as stored (text) to the ``_id`` values to query (both forms)."""
    out: list[Any] = []
    for value in values:
        out.extend(id_values(value))
    return out


class DicomIndex(SessionState):
    """Instances and the series/study/patient records (part of ``MongoStore``)."""

    dicom: GridBucket

    # ---------------------------------------------------------------- ingest
    def put_instance(self, instance: InstanceInput, source: BinaryIO) -> dict[str, Any]:
        inp = instance
        header = plain(inp.header, "DICOM header values")
        header.update(
            StudyInstanceUID=inp.study_instance_uid,
            SeriesInstanceUID=inp.series_instance_uid,
            SOPInstanceUID=inp.sop_instance_uid,
            SOPClassUID=inp.sop_class_uid,
        )
        selector: dict[str, Any] = {"metadata.SOPInstanceUID": inp.sop_instance_uid}
        if inp.peer_id is not None:
            selector["metadata.PeerUID"] = inp.peer_id
        previous = self.dicom.settle(
            self._run(
                lambda db: list(db["dicomfiles.files"].find(selector).sort(_NEWEST_FILE).limit(1))
            )
        )
        prev = previous[0] if previous else None
        self._refuse_other_patient(inp, prev["_id"] if prev else None)
        prev_meta = (prev or {}).get("metadata") or {}
        prev_extra = _extra(prev_meta)
        # a re-ingest without a peer/session keeps the ones already recorded
        peer = inp.peer_id if inp.peer_id is not None else prev_meta.get("PeerUID")
        session = inp.session_id if inp.session_id is not None else prev_extra.get("sessionId")
        doc = self.dicom.upload(
            source,
            filename=unique_filename(".dcm"),
            content_type="application/dicom",
            metadata={**header, "PeerUID": peer, "Slices": 1},
            extra={
                "sessionId": session,
                "transferSyntaxUID": inp.transfer_syntax_uid,
                "instance": plain(inp.instance_meta, "instance metadata"),
                "createdAt": aware(prev_extra.get("createdAt")) or now(),
            },
            replace=prev["_id"] if prev else None,
        )
        file_id = str(doc["_id"])
        try:
            series_id = self._file_records(inp, peer, file_id)
        except BaseException:
            if prev is None:  # a new file nothing references yet
                self.dicom.delete_ids([doc["_id"]])
            raise
        if prev is not None:  # it may have moved: unlink it from any other series
            self._run(lambda db: self._unlink(db, {file_id}, keep_series=series_id))
        return self._instance(doc, str(series_id))

    def _refuse_other_patient(self, inp: InstanceInput, previous_file: Any) -> None:
        """Raise :class:`PatientConflictError` when the instance (the series listing its
        ``previous_file``), its series or its study is filed under another patient.
        A check before filing: without multi-document transactions two processes racing
        with the first files of one series could still both pass it."""
        other = {"$ne": inp.patient_uid}
        fields = {"PatientUID": 1, "Metadata": 1}

        def work(db: Any) -> list[tuple[str, str, Any]]:
            found = []
            if previous_file is not None:
                owner = db.series.find_one({"Instances": str(previous_file)}, fields)
                found.append(("instance", inp.sop_instance_uid, owner))
            for level, collection, field, uid in (
                ("series", "series", "SeriesInstanceUID", inp.series_instance_uid),
                ("study", "studies", "StudyInstanceUID", inp.study_instance_uid),
            ):
                found.append(
                    (level, uid, db[collection].find_one({field: uid, "PatientUID": other}, fields))
                )
            return found

        for level, uid, owner in self._run(work):
            if owner is not None and owner.get("PatientUID") != inp.patient_uid:
                raise PatientConflictError(
                    level,
                    uid,
                    str(owner.get("PatientUID")),
                    inp.patient_uid,
                    patient_identity(owner.get("Metadata") or {}),
                    patient_identity(inp.patient_meta),
                )

    def _file_records(self, inp: InstanceInput, peer: Any, file_id: str) -> Any:
        """Add the instance to its series, the series to its study, the study to its
        patient (creating each that is missing); return the series ``_id``."""
        patient_meta = plain(inp.patient_meta, "patient metadata")
        study_meta = plain(inp.study_meta, "study metadata")
        series_meta = plain(inp.series_meta, "series metadata")
        uid = inp.patient_uid
        series_id = self._file_into(
            "series",
            {
                "PatientUID": uid,
                "StudyInstanceUID": inp.study_instance_uid,
                "SeriesInstanceUID": inp.series_instance_uid,
                "PeerUID": peer,
            },
            {**patient_meta, **study_meta, **series_meta},
            file_id,
            None,
        )
        study_id = self._file_into(
            "studies",
            {"PatientUID": uid, "StudyInstanceUID": inp.study_instance_uid, "PeerUID": peer},
            {**patient_meta, **study_meta},
            str(series_id),
            inp.modality,
        )
        self._file_into(
            "patients",
            {"PatientUID": uid, "PeerUID": peer},
            patient_meta,
            str(study_id),
            inp.modality,
        )
        return series_id

    def _file_into(
        self,
        collection: str,
        key: dict[str, Any],
        metadata: dict[str, Any],
        child: str,
        modality: str | None,
    ) -> Any:
        """Upsert one record by the platform's key, adding ``child`` to its list (and the
        modality to its modality list); return the record ``_id``."""
        children, modalities = _LEVELS[collection]
        stamp = now()
        meta = dict(metadata)
        if modalities and modality:
            meta[modalities] = [modality]
        created = {
            "_id": ObjectId(),
            children: [child],
            "Metadata": meta,
            "CreatedAt": stamp,
            "UpdatedAt": stamp,
            EXTRA: {"origin": ORIGIN},
        }
        added: dict[str, Any] = {children: child}
        if modalities and modality:
            added[f"Metadata.{modalities}"] = modality
        changed = {"UpdatedAt": stamp, **{f"Metadata.{k}": v for k, v in metadata.items()}}
        if collection == "patients":
            changed["Scheduled"] = False  # as the platform does: schedule the patient again

        def work(db: Any) -> Any:
            found = db[collection].find_one_and_update(
                key,
                {"$addToSet": added, "$set": changed},
                projection={"_id": 1},
                sort=_RECORD_ORDER,
            )
            if found is not None:
                return found["_id"]
            result = db[collection].update_one(key, {"$setOnInsert": created}, upsert=True)
            if result.upserted_id is not None:
                return result.upserted_id
            # a concurrent writer created it between the two steps: add to theirs
            return db[collection].find_one_and_update(
                key,
                {"$addToSet": added, "$set": changed},
                projection={"_id": 1},
                sort=_RECORD_ORDER,
            )["_id"]

        return self._converging(f"{collection} record {key}", work)

    # -------------------------------------------------------------- clean-up
    def _unlink(self, db: Any, file_ids: set[str], keep_series: Any = None) -> None:
        """Remove instance ids from the series that list them (except ``keep_series``),
        then delete records left empty that this package created, bottom-up, and
        refresh the modality lists of the studies and patients that remain."""
        selector: dict[str, Any] = {"Instances": {"$in": sorted(file_ids)}}
        if keep_series is not None:
            selector["_id"] = {"$ne": keep_series}
        touched = [d["_id"] for d in db.series.find(selector, {"_id": 1})]
        if not touched:
            return
        db.series.update_many(
            {"_id": {"$in": touched}}, {"$pull": {"Instances": {"$in": sorted(file_ids)}}}
        )
        self._prune(db, "series", touched)

    def _prune(self, db: Any, collection: str, ids: list[Any]) -> None:
        children, _ = _LEVELS[collection]
        empty = [
            d["_id"]
            for d in db[collection].find(
                {"_id": {"$in": ids}, children: {"$size": 0}, f"{EXTRA}.origin": ORIGIN},
                {"_id": 1},
            )
        ]
        parent = {"series": "studies", "studies": "patients"}.get(collection)
        if empty:
            db[collection].delete_many(
                {"_id": {"$in": empty}, children: {"$size": 0}, f"{EXTRA}.origin": ORIGIN}
            )
        if parent is None:
            return
        parent_children = _LEVELS[parent][0]
        texts = [str(i) for i in ids]
        parents = [d["_id"] for d in db[parent].find({parent_children: {"$in": texts}}, {"_id": 1})]
        if empty:
            db[parent].update_many(
                {"_id": {"$in": parents}},
                {"$pull": {parent_children: {"$in": [str(i) for i in empty]}}},
            )
        for parent_id in parents:
            self._refresh_modalities(db, parent, parent_id)
        self._prune(db, parent, parents)

    def _refresh_modalities(self, db: Any, collection: str, record_id: Any) -> None:
        doc = db[collection].find_one({"_id": record_id})
        if doc is None:
            return
        series_ids = list(doc.get("Series") or [])
        if collection == "patients":
            studies = db.studies.find(
                {"_id": {"$in": _ids(doc.get("Studies") or [])}}, {"Series": 1}
            )
            series_ids = [s for study in studies for s in study.get("Series") or []]
        found = db.series.distinct("Metadata.Modality", {"_id": {"$in": _ids(series_ids)}})
        field = _LEVELS[collection][1]
        db[collection].update_one(
            {"_id": record_id},
            {"$set": {f"Metadata.{field}": sorted(m for m in found if isinstance(m, str) and m)}},
        )

    def _platform_patient(self, db: Any, session_id: str) -> Any:
        """The patient ``_id`` of a session the platform opened (``None`` for a session
        of this package, or one without a patient)."""
        session = db.sessions.find_one({"_id": {"$in": id_values(session_id)}})
        if session is None or _extra(session).get("origin") == ORIGIN:
            return None
        return session.get("patient_id")

    def _patient_tree(self, db: Any, patient_id: Any) -> tuple[list[Any], list[Any], list[Any]]:
        """(study ids, series ids, instance file ids) of a patient record."""
        patient = db.patients.find_one({"_id": {"$in": id_values(patient_id)}}) or {}
        studies = list(db.studies.find({"_id": {"$in": _ids(patient.get("Studies") or [])}}))
        series_ids = [s for st in studies for s in st.get("Series") or []]
        series = list(db.series.find({"_id": {"$in": _ids(series_ids)}}))
        files = [oid(str(i)) for s in series for i in s.get("Instances") or []]
        return [st["_id"] for st in studies], [s["_id"] for s in series], files

    def delete_session_instances(self, session_id: str) -> int:
        def work(db: Any) -> int:
            tagged = [
                d["_id"]
                for d in db["dicomfiles.files"].find(
                    {f"metadata.{EXTRA}.sessionId": session_id}, {"_id": 1}
                )
            ]
            removed = set(tagged)
            patient = self._platform_patient(db, session_id)
            if patient is not None:  # the platform's own clean-up of its session
                studies, series, files = self._patient_tree(db, patient)
                removed.update(files)
                self.dicom.delete_ids(files)
                db.series.delete_many({"_id": {"$in": series}})
                db.studies.delete_many({"_id": {"$in": studies}})
                db.patients.delete_many({"_id": {"$in": id_values(patient)}})
            if tagged:
                self.dicom.delete_ids(tagged)
                self._unlink(db, {str(i) for i in tagged})
            return len(removed)

        count = self._run(work)
        logger.debug("%s: removed %d instance(s) of session %s", self.describe(), count, session_id)
        return count

    # ------------------------------------------------------------- instances
    def _instance(self, doc: dict[str, Any], series_id: str | None) -> dict[str, Any]:
        meta = doc.get("metadata") or {}
        extra = _extra(meta)
        sha256 = recorded_checksum(doc, f"DICOM instance {meta.get('SOPInstanceUID')}")
        instance_meta = extra.get("instance")
        if not isinstance(instance_meta, dict):  # a file the platform wrote
            instance_meta = {k: v for k, v in meta.items() if k not in _NOT_HEADER}
        uploaded = doc.get("uploadDate")
        return {
            "_id": str(doc["_id"]),
            "SOPInstanceUID": meta.get("SOPInstanceUID"),
            "SOPClassUID": meta.get("SOPClassUID"),
            "SeriesInstanceUID": meta.get("SeriesInstanceUID"),
            "SeriesUID": series_id,
            "TransferSyntaxUID": extra.get("transferSyntaxUID"),
            "Metadata": dict(instance_meta),
            "Size": int(doc.get("length") or 0),
            "SHA256": sha256,
            "BlobKey": blob_key(doc),
            "PeerUID": meta.get("PeerUID"),
            "SessionUID": extra.get("sessionId"),
            "CreatedAt": iso(extra.get("createdAt") or uploaded),
            "UpdatedAt": iso(uploaded),
        }

    def _instances(self, db: Any, ids: list[Any], series_id: str) -> list[dict[str, Any]]:
        """The instance records of the listed file ids that exist, in slice order (the
        stored list keeps the platform's filing order; see :mod:`..slice_order`)."""
        docs = self.dicom.settle(db["dicomfiles.files"].find({"_id": {"$in": _ids(ids)}}))
        return sort_instances([self._instance(d, series_id) for d in docs])

    def get_instance(self, instance_id: str) -> dict[str, Any]:
        def work(db: Any) -> dict[str, Any] | None:
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
                .sort(_NEWEST_FILE)
                .limit(1)
            )
            docs = self.dicom.settle(docs)
            if not docs:
                return None
            series = db.series.find_one({"Instances": str(docs[0]["_id"])}, {"_id": 1})
            return self._instance(docs[0], str(series["_id"]) if series else None)

        record = self._run(work)
        if record is None:
            raise NotFoundError(f"instance {instance_id!r} not found in {self.describe()}")
        return record

    def list_instances(self, series_id: str) -> list[dict[str, Any]]:
        def work(db: Any) -> list[dict[str, Any]] | None:
            series = self._find_record(db, "series", "SeriesInstanceUID", series_id)
            if series is None:
                return None
            return self._instances(db, list(series.get("Instances") or []), str(series["_id"]))

        records = self._run(work)
        if records is None:
            raise NotFoundError(f"series {series_id!r} not found in {self.describe()}")
        return records

    def open_instance(self, instance: dict[str, Any]) -> BinaryIO:
        return self.dicom.open(
            BlobInfo(str(instance["BlobKey"]), int(instance["Size"]), instance.get("SHA256") or ""),
            f"DICOM instance {instance['SOPInstanceUID']}",
        )

    # --------------------------------------------------------------- records
    @staticmethod
    def _find_record(db: Any, collection: str, uid_field: str, key: str) -> dict[str, Any] | None:
        docs = list(
            db[collection]
            .find({"$or": [{"_id": {"$in": id_values(key)}}, {uid_field: key}]})
            .sort(_RECORD_ORDER)
            .limit(1)
        )
        return docs[0] if docs else None

    def _existing(self, db: Any, collection: str, ids: list[Any]) -> list[str]:
        """The listed record ids (text) whose records exist, in list order."""
        found = {
            str(d["_id"]) for d in db[collection].find({"_id": {"$in": _ids(ids)}}, {"_id": 1})
        }
        return [str(i) for i in dict.fromkeys(ids) if str(i) in found]

    def _series_record(self, db: Any, doc: dict[str, Any]) -> dict[str, Any]:
        instances = self._instances(db, list(doc.get("Instances") or []), str(doc["_id"]))
        return {
            "_id": str(doc["_id"]),
            "PatientUID": doc.get("PatientUID"),
            "StudyInstanceUID": doc.get("StudyInstanceUID"),
            "SeriesInstanceUID": doc.get("SeriesInstanceUID"),
            "PeerUID": doc.get("PeerUID"),
            "Instances": [r["_id"] for r in instances],
            "Metadata": dict(doc.get("Metadata") or {}),
            "CreatedAt": iso(doc.get("CreatedAt")),
            "UpdatedAt": iso(doc.get("UpdatedAt")),
        }

    @staticmethod
    def _with_modalities(doc: dict[str, Any], field: str) -> dict[str, Any]:
        meta = dict(doc.get("Metadata") or {})
        meta[field] = [m for m in meta.get(field) or [] if isinstance(m, str) and m]
        return meta

    def _study_record(self, db: Any, doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "_id": str(doc["_id"]),
            "PatientUID": doc.get("PatientUID"),
            "StudyInstanceUID": doc.get("StudyInstanceUID"),
            "PeerUID": doc.get("PeerUID"),
            "Series": self._existing(db, "series", list(doc.get("Series") or [])),
            "Metadata": self._with_modalities(doc, "ModalitiesInStudy"),
            "CreatedAt": iso(doc.get("CreatedAt")),
            "UpdatedAt": iso(doc.get("UpdatedAt")),
        }

    def _patient_record(self, db: Any, doc: dict[str, Any]) -> dict[str, Any]:
        return {
            "_id": str(doc["_id"]),
            "PatientUID": doc.get("PatientUID"),
            "PeerUID": doc.get("PeerUID"),
            "Studies": self._existing(db, "studies", list(doc.get("Studies") or [])),
            "Metadata": self._with_modalities(doc, "ModalitiesInPatient"),
            "CreatedAt": iso(doc.get("CreatedAt")),
            "UpdatedAt": iso(doc.get("UpdatedAt")),
        }

    def _get_record(
        self,
        kind: str,
        collection: str,
        uid_field: str,
        key: str,
        build: Callable[[Any, dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:
        def work(db: Any) -> dict[str, Any] | None:
            doc = self._find_record(db, collection, uid_field, key)
            return None if doc is None else build(db, doc)

        record = self._run(work)
        if record is None:
            raise NotFoundError(f"{kind} {key!r} not found in {self.describe()}")
        return record

    def get_series(self, series_id: str) -> dict[str, Any]:
        return self._get_record(
            "series", "series", "SeriesInstanceUID", series_id, self._series_record
        )

    def get_study(self, study_id: str) -> dict[str, Any]:
        return self._get_record(
            "study", "studies", "StudyInstanceUID", study_id, self._study_record
        )

    def get_patient(self, patient_id: str) -> dict[str, Any]:
        return self._get_record(
            "patient", "patients", "PatientUID", patient_id, self._patient_record
        )

    # -------------------------------------------------------------- listings
    def _children(self, db: Any, collection: str, selector: dict[str, Any]) -> list[Any]:
        children = _LEVELS[collection][0]
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
                {str(s) for s in self._children(db, "studies", {"_id": {"$in": _ids(studies)}})}
            )
        if session_id is not None:
            sets.append(set(self._session_series(db, session_id)))
        return set.intersection(*sets) if sets else None

    def _list(
        self,
        collection: str,
        selector: Callable[[Any], dict[str, Any] | None],
        build: Callable[[Any, dict[str, Any]], dict[str, Any]],
    ) -> list[dict[str, Any]]:
        def work(db: Any) -> list[dict[str, Any]]:
            query = selector(db)
            if query is None:
                return []
            return [build(db, d) for d in db[collection].find(query).sort(_RECORD_ORDER)]

        return self._run(work)

    def list_series(
        self,
        *,
        study_id: str | None = None,
        patient_id: str | None = None,
        session_id: str | None = None,
    ) -> list[dict[str, Any]]:
        def selector(db: Any) -> dict[str, Any] | None:
            ids = self._series_ids(db, study_id, patient_id, session_id)
            return {} if ids is None else {"_id": {"$in": _ids(ids)}}

        return self._list("series", selector, self._series_record)

    def list_studies(
        self, *, patient_id: str | None = None, session_id: str | None = None
    ) -> list[dict[str, Any]]:
        def selector(db: Any) -> dict[str, Any] | None:
            ids = self._series_ids(db, None, patient_id, session_id)
            return {} if ids is None else {"Series": {"$in": sorted(ids)}}

        return self._list("studies", selector, self._study_record)

    def list_patients(self, *, session_id: str | None = None) -> list[dict[str, Any]]:
        def selector(db: Any) -> dict[str, Any] | None:
            ids = self._series_ids(db, None, None, session_id)
            if ids is None:
                return {}
            studies = [
                str(d["_id"]) for d in db.studies.find({"Series": {"$in": sorted(ids)}}, {"_id": 1})
            ]
            return {"Studies": {"$in": studies}}

        return self._list("patients", selector, self._patient_record)
