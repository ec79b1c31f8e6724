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
from typing import Any, BinaryIO

from bson import ObjectId

from ..._errors import PatientConflictError
from ..record_values import patient_identity
from ..records import InstanceInput, InstanceRecord
from .grid import NEWEST_FILE, unique_filename
from .index_records import IndexRecords
from .layout import (
    EXTRA,
    ORIGIN,
    RECORD_CHILDREN,
    RECORD_ORDER,
    all_id_values,
    aware,
    extra_of,
    id_values,
    now,
    plain,
)

__all__ = ["DicomIndex"]

logger = logging.getLogger(__name__)


class DicomIndex(IndexRecords):
    """Filing instances into the series/study/patient records, and removing what a
    session filed (part of ``MongoStore``); reading is :class:`IndexRecords`'."""

    # ---------------------------------------------------------------- ingest
    def put_instance(self, instance: InstanceInput, source: BinaryIO) -> InstanceRecord:
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
                lambda db: list(db["dicomfiles.files"].find(selector).sort(NEWEST_FILE).limit(1))
            )
        )
        prev = previous[0] if previous else None
        self._refuse_other_patient(inp, prev["_id"] if prev else None)
        prev_meta = (prev or {}).get("metadata") or {}
        prev_extra = extra_of(prev_meta)
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
        children, modalities = RECORD_CHILDREN[collection]
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
                sort=RECORD_ORDER,
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
                sort=RECORD_ORDER,
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
        children, _ = RECORD_CHILDREN[collection]
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
        parent_children = RECORD_CHILDREN[parent][0]
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
                {"_id": {"$in": all_id_values(doc.get("Studies") or [])}}, {"Series": 1}
            )
            series_ids = [s for study in studies for s in study.get("Series") or []]
        found = db.series.distinct("Metadata.Modality", {"_id": {"$in": all_id_values(series_ids)}})
        field = RECORD_CHILDREN[collection][1]
        db[collection].update_one(
            {"_id": record_id},
            {"$set": {f"Metadata.{field}": sorted(m for m in found if isinstance(m, str) and m)}},
        )

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
