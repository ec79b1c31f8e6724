"""Cross-checks: what the platform writes, this package reads and acts on
(``test_platform_to_ours_*``), and what this package writes, the platform reads and
acts on (``test_ours_to_platform_*``) — one check per test, the same list each way.

Run inside the platform environment on mongomock (see ``conftest.py``; no MongoDB
server can run here); ``tests/test_mongodb_platform.py`` runs them and counts.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pymongo.errors
import pytest
from bson import ObjectId
from dcm_processor_db_provider import DBManager
from dcm_processor_db_provider import manager as platform_manager
from pydicom import dcmread
from pydicom.uid import generate_uid

import dcm_processor_service as dps
from dcm_processor_service import NotFoundError, use_context
from dcm_processor_service.index.ingest import ingest
from dcm_processor_service.store.mongodb import MongoStore
from platform_checks.conftest import (
    PEER,
    URL,
    Deployment,
    attach,
    ct_files,
    platform_job_id,
    platform_session_file,
    read,
    worker_environment,
)

#: The sub-document holding what only this package reads (the platform ignores it).
EXTRA = "dcmProcessorService"
#: The platform's record Metadata tags (its provider's lists).
PLATFORM_TAGS = (
    platform_manager.PATIENT_TAGS + platform_manager.STUDY_TAGS + platform_manager.SERIES_TAGS
)
#: Person-name tags other than PatientName, which the platform stores as ``[{}]``
#: (its JSON conversion loses them); this package keeps the name as text.
LOST_BY_THE_PLATFORM = ("ReferringPhysicianName", "OperatorsName")


def _documents(platform: DBManager) -> dict[str, list[dict[str, Any]]]:
    """Every document of every collection (for before/after comparisons)."""
    db = platform.db.get_db()
    return {
        name: sorted(db[name].find(), key=lambda d: str(d["_id"]))
        for name in sorted(db.list_collection_names())
    }


def _payload(size: int = 300_000) -> bytes:
    return bytes((i * 7) % 251 for i in range(size))


def _corrected(path: Path, description: str) -> Any:
    """A corrected resend of an instance: same UIDs, a corrected series description."""
    ds = read(path)
    ds.SeriesDescription = description
    return ds


# ====================================================================== sessions
def test_platform_to_ours_sessions(deployment: Deployment, ours: MongoStore) -> None:
    d = deployment
    session = ours.get_session(d.session_id)
    assert (session.id, session.peer_id) == (d.session_id, d.peer_id)
    before = d.platform.get_session(d.session_id)
    with use_context(d.context("pre")):
        report = dps.run_pre_services(session_id=d.session_id)  # the worker's pre job
    assert report["session_id"] == d.session_id
    after = d.platform.get_session(d.session_id)
    assert {k: after[k] for k in before} == before  # the platform's fields as they were
    assert ours.get_session(d.session_id).status == "running"
    assert len(d.platform.db.find("sessions")) == 1


def test_ours_to_platform_sessions(platform: DBManager, ours: MongoStore, tmp_path: Path) -> None:
    peer = dps.add_peer("pacs", "PACS", "127.0.0.1", 11112, store=ours)
    report = ingest(ct_files()[0], store=ours, peer_id=peer.id)
    patient_uid = ours.get_series(report.series_ids[0])["PatientUID"]
    session = ours.ensure_session(peer_id=peer.id, patient_uid=patient_uid)
    doc = platform.get_session(session.id)
    assert doc["peer_id"] == peer.id
    assert platform.get_peer(doc["peer_id"])["name"] == "pacs"  # the original get_peer()
    assert platform.get_patient_by_id(doc["patient_id"])["PatientUID"] == patient_uid


# ========================================================================== jobs
def test_platform_to_ours_jobs(deployment: Deployment, ours: MongoStore) -> None:
    d = deployment
    for doc in d.jobs:
        job = ours.get_job(str(doc["_id"]))
        assert (job.session_id, job.name, job.event, job.service_name, job.status) == (
            d.session_id,
            doc.get("job_name") or "",
            doc.get("job_event") or "",
            doc.get("service_name"),
            "pending",
        )
        assert job.params == doc["data"]["kwargs"]["params"]
    ctx = d.context("seg")
    assert (ctx.session_id, ctx.job_id, ctx.job_name, ctx.job_event) == (
        d.session_id,
        str(d.job("seg")["_id"]),
        "seg",
        "stable-series",
    )
    assert (ctx.job_service_name, ctx.peer_id) == ("svc", d.peer_id)
    assert ours.get_job(ctx.job_id).params == {"threshold": 300}  # type: ignore[arg-type]
    assert ours.find_job(d.session_id, "report", "stable-series").id == str(d.job("report")["_id"])  # type: ignore[union-attr]
    assert {j.id for j in ours.list_jobs(d.session_id)} == {str(j["_id"]) for j in d.jobs}


def test_ours_to_platform_jobs(platform: DBManager, ours: MongoStore, db_name: str) -> None:
    session = ours.ensure_session(peer_id="peer-1")
    job = ours.create_job(session.id, "seg", "stable-series", service_name="svc", params={"t": 1})
    doc = platform.get_job_by_id(job.id)
    assert platform.get_job_session_id(job.id) == session.id
    assert doc["data"]["kwargs"]["params"] == {"t": 1}
    env = worker_environment(doc, db_name)
    assert {
        k: env[f"DCM-PROCESSOR-SERVICE-{k}"]
        for k in ("SESSION-ID", "JOB-ID", "JOB-NAME", "JOB-EVENT", "JOB-SERVICE-NAME", "PEER-ID")
    } == {
        "SESSION-ID": session.id,
        "JOB-ID": job.id,
        "JOB-NAME": "seg",
        "JOB-EVENT": "stable-series",
        "JOB-SERVICE-NAME": "svc",
        "PEER-ID": "peer-1",
    }
    queued = platform.db.find("jobs", {"query": {"item_type": "queue"}})
    assert queued == []  # the platform's queue never picks it up


# ================================================================== session data
def test_platform_to_ours_session_data(deployment: Deployment) -> None:
    d = deployment
    job_id = str(d.job("seg")["_id"])
    d.platform.set_session_data(job_id, "threshold", {"t": [1, 2.5], "ok": True})
    with use_context(d.context("seg")):
        assert dps.has_session_data("threshold")
        assert dps.get_session_data("threshold") == {"t": [1, 2.5], "ok": True}
        d.platform.set_session_data(job_id, "threshold", 7)  # the platform replaces it
        assert dps.get_session_data("threshold") == 7
        assert dps.get_session_data("missing", default="d") == "d"


def test_ours_to_platform_session_data(deployment: Deployment) -> None:
    d = deployment
    job_id = str(d.job("seg")["_id"])
    with use_context(d.context("seg")):
        dps.set_session_data("threshold", {"t": [1, 2.5], "ok": True})
        assert d.platform.get_session_data(job_id, "threshold")["value"] == {
            "t": [1, 2.5],
            "ok": True,
        }
        dps.set_session_data("threshold", 7)
        assert d.platform.get_session_data(job_id, "threshold")["value"] == 7
        assert len(d.platform.db.find("sessiondata")) == 1
        assert dps.remove_session_data("threshold") is True
    assert d.platform.has_session_data(job_id, "threshold") is False


def test_platform_to_ours_session_data_of_another_job(deployment: Deployment) -> None:
    d = deployment
    d.platform.set_session_data(str(d.job("seg")["_id"]), "mask_volume", 123.5)
    with use_context(d.context("report")):
        assert dps.get_session_data("mask_volume") is None  # not the report job's own
        assert dps.get_session_data("mask_volume", job_name="seg") == 123.5
        assert dps.has_session_data("mask_volume", job_name="seg")


def test_ours_to_platform_session_data_of_another_job(deployment: Deployment) -> None:
    d = deployment
    with use_context(d.context("seg")):
        dps.set_session_data("mask_volume", 123.5)
    seg = platform_job_id(d.platform, d.session_id, "seg", "stable-series")
    assert d.platform.get_session_data(seg, "mask_volume")["value"] == 123.5
    report = str(d.job("report")["_id"])
    assert d.platform.get_session_data(report, "mask_volume") is None


# ================================================================= session files
def test_platform_to_ours_session_file_upload(deployment: Deployment) -> None:
    d = deployment
    job_id = str(d.job("seg")["_id"])
    file_id = d.platform.upload_session_file(
        job_id,
        io.BytesIO(_payload()),
        "mask.nii.gz",
        meta={"k": 1},
        content_type="application/gzip",
        ext=".nii.gz",
    )
    with use_context(d.context("seg")):
        info = dps.get_session_file("mask.nii.gz")
        assert info is not None and dps.has_session_file("mask.nii.gz")
        assert (info["_id"], info["size"], info["content_type"], info["meta"]) == (
            str(file_id),
            len(_payload()),
            "application/gzip",
            {"k": 1},
        )
        assert info["job_name"] == "seg" and info["event"] == "stable-series"
    with use_context(d.context("report")):
        assert dps.get_session_file("mask.nii.gz", job_name="seg")["_id"] == str(file_id)  # type: ignore[index]


def test_ours_to_platform_session_file_upload(deployment: Deployment) -> None:
    d = deployment
    seg, report = str(d.job("seg")["_id"]), str(d.job("report")["_id"])
    with use_context(d.context("seg")):
        file_id = dps.upload_session_file(
            _payload(), "mask.nii.gz", meta={"k": 1}, content_type="application/gzip", ext=".nii.gz"
        )
    ours = platform_session_file(d.platform, seg, "mask.nii.gz")
    assert ours is not None and str(ours["_id"]) == file_id
    # the same upload by the platform (another job): the same document shape
    d.platform.upload_session_file(
        report,
        io.BytesIO(_payload()),
        "mask.nii.gz",
        meta={"k": 1},
        content_type="application/gzip",
        ext=".nii.gz",
    )
    theirs = platform_session_file(d.platform, report, "mask.nii.gz")
    assert theirs is not None
    assert set(ours) == set(theirs)
    assert {k: type(v) for k, v in ours.items()} == {k: type(v) for k, v in theirs.items()}
    assert set(ours["metadata"]) == {*theirs["metadata"], "ext", EXTRA}  # ext: kept as meta
    for key in ("k", "name", "session_id"):
        assert ours["metadata"][key] == theirs["metadata"][key]
    assert ours["metadata"]["job_id"] == ObjectId(seg)
    for key in ("contentType", "length", "chunkSize"):
        assert ours[key] == theirs[key]
    assert ours["filename"].endswith(".nii.gz") and len(ours["filename"]) == len(theirs["filename"])


def test_platform_to_ours_session_file_download(deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    d.platform.upload_session_file(
        str(d.job("seg")["_id"]),
        io.BytesIO(_payload()),
        "x.bin",
        content_type="application/octet-stream",
    )
    with use_context(d.context("report")):
        assert dps.download_session_file("x.bin", job_name="seg").read() == _payload()  # type: ignore[union-attr]
        target = tmp_path / "x.bin"
        assert dps.download_session_file("x.bin", str(target), job_name="seg") == str(target)
        assert target.read_bytes() == _payload()


def test_ours_to_platform_session_file_download(deployment: Deployment, tmp_path: Path) -> None:
    d = deployment
    seg = str(d.job("seg")["_id"])
    with use_context(d.context("seg")):
        dps.upload_session_file(_payload(), "x.bin")
    doc = platform_session_file(d.platform, seg, "x.bin")
    assert d.platform.db.download_file("sessionfiles", doc["_id"]).read() == _payload()  # type: ignore[index]
    target = tmp_path / "x.bin"
    d.platform.db.download_file("sessionfiles", doc["_id"], {"filename": str(target)})  # type: ignore[index]
    assert target.read_bytes() == _payload()


def test_platform_to_ours_session_file_list(deployment: Deployment) -> None:
    d = deployment
    d.platform.upload_session_file(
        str(d.job("seg")["_id"]), io.BytesIO(b"a"), "a.txt", content_type="text/plain"
    )
    d.platform.upload_session_file(
        str(d.job("report")["_id"]), io.BytesIO(b"b"), "b.txt", content_type="text/plain"
    )
    with use_context(d.context("report")):
        listed = dps.JobSession.current().list_files()
    assert sorted((f.job_name, f.name, f.size) for f in listed) == [
        ("report", "b.txt", 1),
        ("seg", "a.txt", 1),
    ]


def test_ours_to_platform_session_file_list(deployment: Deployment) -> None:
    d = deployment
    for job in ("seg", "report"):
        with use_context(d.context(job)):
            dps.upload_session_file(job.encode(), f"{job}.txt")
    # how the platform's clean-up finds a session's files
    found = d.platform.db.find_file(
        "sessionfiles", {"query": {"session_id": ObjectId(d.session_id)}}
    )
    assert sorted(f["metadata"]["name"] for f in found) == ["report.txt", "seg.txt"]


def test_platform_to_ours_session_file_remove(deployment: Deployment) -> None:
    d = deployment
    seg = str(d.job("seg")["_id"])
    d.platform.upload_session_file(
        seg, io.BytesIO(_payload()), "x.bin", content_type="application/octet-stream"
    )
    with use_context(d.context("seg")):
        assert dps.remove_session_file("x.bin") is True
        assert dps.remove_session_file("x.bin") is False
    assert platform_session_file(d.platform, seg, "x.bin") is None
    db = d.platform.db.get_db()
    assert db["sessionfiles.chunks"].count_documents({}) == 0


def test_ours_to_platform_session_file_remove(deployment: Deployment) -> None:
    d = deployment
    seg = str(d.job("seg")["_id"])
    with use_context(d.context("seg")):
        dps.upload_session_file(_payload(), "x.bin")
    d.platform.db.remove_file(
        "sessionfiles", platform_session_file(d.platform, seg, "x.bin")["_id"]
    )  # type: ignore[index]
    with use_context(d.context("seg")):
        assert dps.has_session_file("x.bin") is False
        assert dps.download_session_file("x.bin") is None


def test_platform_to_ours_session_file_replace(deployment: Deployment) -> None:
    """The platform uploaded a file; this package replaces it: same id, new content."""
    d = deployment
    seg = str(d.job("seg")["_id"])
    first = d.platform.upload_session_file(
        seg, io.BytesIO(b"version one"), "r.txt", content_type="text/plain"
    )
    with use_context(d.context("seg")):
        again = dps.upload_session_file(b"version two!", "r.txt", meta={"v": 2})
    assert again == str(first)
    assert d.platform.db.download_file("sessionfiles", first).read() == b"version two!"
    assert len(d.platform.db.find_file("sessionfiles")) == 1


def test_ours_to_platform_session_file_replace(deployment: Deployment) -> None:
    """This package uploaded a file; the platform replaces it in place (keeping the old
    metadata, so our checksum is now stale): read unverified, not reported as damage."""
    d = deployment
    seg = str(d.job("seg")["_id"])
    with use_context(d.context("seg")):
        first = dps.upload_session_file(b"version one", "r.txt")
    again = d.platform.upload_session_file(
        seg, io.BytesIO(b"version two!"), "r.txt", content_type="text/plain"
    )
    assert str(again) == first
    with use_context(d.context("seg")):
        assert dps.download_session_file("r.txt").read() == b"version two!"  # type: ignore[union-attr]
        info = dps.get_session_file("r.txt")
    assert info is not None and info["sha256"] == "" and info["size"] == len(b"version two!")


# ========================================================================== peers
def test_platform_to_ours_peers(deployment: Deployment, ours: MongoStore) -> None:
    d = deployment
    peer = ours.get_peer("pacs")
    assert (peer.id, peer.aet, peer.host, peer.port, peer.tls) == (
        d.peer_id,
        "PACS",
        "127.0.0.1",
        11112,
        False,
    )
    assert peer.whitelist_aet == ("MODALITY",)
    with use_context(d.context("seg")):
        assert dps.get_peer().name == "pacs"  # the session's peer, by PEER-ID
        sender = dps.get_dicom_sender()
    assert sender is not None
    assert (sender.server_ae_title, sender.server_host, sender.server_port) == (
        "PACS",
        "127.0.0.1",
        11112,
    )


def test_ours_to_platform_peers(platform: DBManager, ours: MongoStore) -> None:
    saved = dps.add_peer("pacs", "PACS", "127.0.0.1", 11112, whitelist_aet=["MODALITY"], store=ours)
    doc = platform.get_dicom_peer("pacs")
    assert {k: doc[k] for k in PEER} == PEER
    assert platform.get_peer(saved.id)["name"] == "pacs"  # by ObjectId, as the platform looks up
    # the original package's get_dicom_sender arguments
    assert (doc.get("aet"), doc.get("host"), doc.get("port"), doc.get("tls", False)) == (
        "PACS",
        "127.0.0.1",
        11112,
        False,
    )


# ==================================================== series / study / patient records
def test_platform_to_ours_records_and_series_dicom(
    deployment: Deployment, ours: MongoStore, tmp_path: Path
) -> None:
    d = deployment
    headers = d.job("seg")["data"]["kwargs"]["headers"]  # the series record the job gets
    series = ours.get_series(str(headers["_id"]))
    assert series["_id"] == str(headers["_id"])
    for key in ("PatientUID", "StudyInstanceUID", "SeriesInstanceUID", "PeerUID", "Metadata"):
        assert series[key] == headers[key], key
    assert sorted(series["Instances"]) == sorted(headers["Instances"])
    [study] = d.platform.db.find("studies")
    assert ours.get_study(str(study["_id"]))["Series"] == study["Series"]
    assert ours.get_patient(str(d.patient["_id"]))["Studies"] == d.patient["Studies"]
    originals = {dcmread(p).SOPInstanceUID: dcmread(p) for p in ct_files()}
    with use_context(d.context("seg")):
        for series_id in (headers["_id"], {"$oid": str(headers["_id"])}, str(headers["_id"])):
            datasets = dps.get_series_dicom(series_id)  # as a job's headers carry the id
            assert len(datasets) == 5
            for ds in datasets:
                assert ds.PixelData == originals[ds.SOPInstanceUID].PixelData
        paths = dps.get_series_dicom(str(headers["_id"]), str(tmp_path / "dcm"))
    stored = {iid: d.platform.download_dicom_file(iid).read() for iid in headers["Instances"]}
    assert sorted(Path(p).read_bytes() for p in paths) == sorted(stored.values())


def test_ours_to_platform_records_and_series_dicom(
    platform: DBManager, ours: MongoStore, db_name: str
) -> None:
    peer_id = platform.create_dicom_peer(dict(PEER))
    report = ingest(_ct_folder(), store=ours, peer_id=str(peer_id))
    assert report.ok and report.n_stored == 5
    series = platform.get_series_by_id(report.series_ids[0])
    study = platform.db.find_one("studies", {"query": {"Series": report.series_ids[0]}})
    patient = platform.db.find_one("patients", {"query": {"Studies": str(study["_id"])}})
    # the original package's get_series_dicom: series Instances -> download_dicom_file
    originals = {dcmread(p).SOPInstanceUID: p.read_bytes() for p in ct_files()}
    for iid in series["Instances"]:
        data = platform.download_dicom_file(iid).read()
        assert data == originals[dcmread(io.BytesIO(data)).SOPInstanceUID]  # exact bytes
    # the documents the platform itself writes for the same instances (another database)
    twin = attach(
        DBManager(dburl=URL, dbname=f"{db_name}-twin", dbprovider="mongodb"), f"{db_name}-twin"
    )
    for path in ct_files():
        twin.upload_dicom_dataset(read(path), str(peer_id))
    [their_series] = twin.db.find("series")
    [their_study] = twin.db.find("studies")
    [their_patient] = twin.db.find("patients")
    for mine, theirs in ((series, their_series), (study, their_study), (patient, their_patient)):
        assert set(mine) - {EXTRA, "Scheduled"} == set(theirs) - {"Scheduled"}
        for key in ("PatientUID", "StudyInstanceUID", "SeriesInstanceUID", "PeerUID"):
            assert mine.get(key) == theirs.get(key), key
        for key, value in theirs["Metadata"].items():
            if key in LOST_BY_THE_PLATFORM and value == [{}]:
                continue
            assert mine["Metadata"][key] == value, key
    assert {k for k in PLATFORM_TAGS if k in series["Metadata"]} == {
        k for k in PLATFORM_TAGS if k in their_series["Metadata"]
    }
    files = platform.db.find_file("dicomfiles")
    theirs_files = twin.db.find_file("dicomfiles")
    for mine, theirs in zip(sorted(files, key=_sop), sorted(theirs_files, key=_sop), strict=True):
        assert set(mine) == set(theirs)
        assert (mine["contentType"], mine["filename"][-4:]) == (theirs["contentType"], ".dcm")
        for key in (
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "PeerUID",
            "Slices",
            "InstanceNumber",
            "PatientAge",
        ):
            assert mine["metadata"].get(key) == theirs["metadata"].get(key), key


def _sop(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["SOPInstanceUID"])


def _ct_folder() -> Path:
    return ct_files()[0].parent


# ========================================================= ingest by both sides
def test_platform_to_ours_same_instance_ingested_by_both(
    deployment: Deployment, ours: MongoStore
) -> None:
    """The platform filed an instance; this package files the same one again."""
    d = deployment
    path = ct_files()[0]
    before = _documents(d.platform)
    stored = ingest(path, store=ours, peer_id=d.peer_id).stored[0]
    after = _documents(d.platform)
    for name in ("dicomfiles.files", "series", "studies", "patients"):
        assert len(after[name]) == len(before[name]), name
    [series] = d.series()
    assert stored.instance_id in series["Instances"] and len(series["Instances"]) == 5
    assert d.platform.download_dicom_file(stored.instance_id).read() == path.read_bytes()


def test_ours_to_platform_same_instance_ingested_by_both(
    platform: DBManager, ours: MongoStore
) -> None:
    """This package filed an instance; the platform's DICOM server receives it again."""
    peer_id = str(platform.create_dicom_peer(dict(PEER)))
    path = ct_files()[0]
    stored = ingest(path, store=ours, peer_id=peer_id).stored[0]
    assert platform.upload_dicom_dataset(read(path), peer_id) == stored.instance_id
    for name in ("series", "studies", "patients"):
        assert len(platform.db.find(name)) == 1, name
    assert len(platform.db.find_file("dicomfiles")) == 1
    [series] = platform.db.find("series")
    assert series["Instances"] == [stored.instance_id]
    with use_context(db_provider="mongomock", db_url=URL, db_name=ours.db_name):
        [ds] = dps.get_series_dicom(str(series["_id"]))
    assert ds.SOPInstanceUID == read(path).SOPInstanceUID


def test_platform_to_ours_reingest_corrected_resend(
    deployment: Deployment, ours: MongoStore
) -> None:
    """The platform filed a series; this package files a corrected resend of one
    instance: the platform's record ids keep pointing at it, now corrected."""
    d = deployment
    path = ct_files()[0]
    [series] = d.series()
    corrected = _corrected(path, "corrected by resend")
    record = ours.put_instance(*_input_for(corrected, d.peer_id))
    assert record["_id"] in series["Instances"]
    data = d.platform.download_dicom_file(record["_id"]).read()
    assert dcmread(io.BytesIO(data)).SeriesDescription == "corrected by resend"
    assert d.platform.get_series_by_id(series["_id"])["Instances"] == series["Instances"]
    assert (
        ours.get_series(str(series["_id"]))["Metadata"]["SeriesDescription"]
        == "corrected by resend"
    )


def test_ours_to_platform_reingest_corrected_resend(platform: DBManager, ours: MongoStore) -> None:
    """This package filed a series; the platform's DICOM server receives a corrected
    resend: the same instance ids, the corrected bytes, a stale checksum read as such."""
    peer_id = str(platform.create_dicom_peer(dict(PEER)))
    report = ingest(_ct_folder(), store=ours, peer_id=peer_id)
    before = ours.get_series(report.series_ids[0])
    corrected = _corrected(ct_files()[0], "corrected by resend")
    platform.upload_dicom_dataset(corrected, peer_id)
    after = ours.get_series(report.series_ids[0])
    assert after["Instances"] == before["Instances"]
    record = ours.get_instance(corrected.SOPInstanceUID)
    assert record["SHA256"] == ""  # rewritten by the platform: stale, not damaged
    with use_context(db_provider="mongomock", db_url=URL, db_name=ours.db_name):
        datasets = dps.get_series_dicom(report.series_ids[0])
    by_sop = {ds.SOPInstanceUID: ds for ds in datasets}
    assert by_sop[corrected.SOPInstanceUID].SeriesDescription == "corrected by resend"


def _input_for(ds: Any, peer_id: str) -> tuple[Any, io.BytesIO]:
    from pydicom import dcmwrite

    from dcm_processor_service.index.metadata import instance_input

    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    buffer.seek(0)
    return instance_input(ds, peer_id=peer_id), buffer


# ======================================================================= clean-up
def test_platform_to_ours_cleanup(deployment: Deployment, ours: MongoStore) -> None:
    """This package wrote data, a file and a derived series into the platform's
    session; the platform's own clean-up removes all of it."""
    d = deployment
    derived = read(ct_files()[0])
    derived.SeriesInstanceUID, derived.SOPInstanceUID = generate_uid(), generate_uid()
    derived.file_meta.MediaStorageSOPInstanceUID = derived.SOPInstanceUID
    with use_context(d.context("seg")):
        dps.set_session_data("k", 1)
        dps.upload_session_file(b"mask", "mask.bin")
        ours.put_instance(*_input_for(derived, d.peer_id))
    assert len(ours.list_series(session_id=d.session_id)) == 2
    d.platform.clean_up_sesssion(d.session_id)
    with use_context(d.context("seg")):
        assert dps.get_session_data("k") is None
        assert dps.JobSession.current().list_files() == []
    with pytest.raises(NotFoundError):
        ours.get_session(d.session_id)
    assert ours.list_series() == [] and ours.list_patients() == []
    assert ours.database["dicomfiles.files"].count_documents({}) == 0


def test_ours_to_platform_cleanup(deployment: Deployment) -> None:
    """The platform wrote data, a file, records and instances; this package's
    post-services hook (the worker's post job) removes them as the platform's own
    clean-up would, and leaves the platform's jobs to its queue."""
    d = deployment
    d.platform.set_session_data(str(d.job("seg")["_id"]), "k", 1)
    d.platform.upload_session_file(
        str(d.job("seg")["_id"]), io.BytesIO(b"x"), "x.bin", content_type="text/plain"
    )
    with use_context(d.context("post")):
        report = dps.run_post_services(session_id=d.session_id)
    assert report == {"data": 1, "files": 1, "instances": 5, "session": 1}
    assert d.platform.get_session(d.session_id) is None
    assert d.platform.db.find("sessiondata") == [] and d.platform.db.find_file("sessionfiles") == []
    for name in ("series", "studies", "patients"):
        assert d.platform.db.find(name) == [], name
    assert d.platform.db.find_file("dicomfiles") == []
    assert len(d.platform.db.find("jobs")) == 4  # the queue's, untouched


# ==================================================================== guest rules
def test_platform_to_ours_guest_rules(deployment: Deployment, ours: MongoStore) -> None:
    """On a database the platform filled, this package's migrate() changes no document
    and plans only indexes nobody's writes can violate."""
    d = deployment
    d.platform.set_session_data(str(d.job("seg")["_id"]), "k", 1)
    before = _documents(d.platform)
    assert ours.migrate() == 2
    assert _documents(d.platform) == before
    db = ours.database
    for name in db.list_collection_names():
        for spec in db[name].index_information().values():
            if spec.get("unique") and spec["key"] != [("_id", 1)]:
                assert name.endswith(".chunks"), (name, spec)  # GridFS's own index


def test_ours_to_platform_guest_rules(platform: DBManager, db_name: str) -> None:
    """After this package's migrate() — on a database where version 0.1 had left its
    unique indexes — the platform's set_session_data and a second peer's ingest work."""
    db = platform.db.get_db()
    db.sessiondata.create_index([("sessionId", 1), ("jobId", 1), ("name", 1)], unique=True)
    db.series.create_index([("SeriesInstanceUID", 1)], unique=True)
    first_job = platform.create_job(
        str(ObjectId()), "f", {}, None, [], job_name="a", job_event="stable-series"
    )
    second_job = platform.create_job(
        str(ObjectId()), "f", {}, None, [], job_name="a", job_event="stable-series"
    )
    platform.set_session_data(str(first_job), "k", 1)
    with pytest.raises(pymongo.errors.DuplicateKeyError):  # what 0.1's index did
        platform.set_session_data(str(second_job), "k", 2)

    from dcm_processor_service.store import open_store

    store = open_store("mongomock", URL, db_name)  # opening it migrates
    assert [s.action for s in store.last_migration].count("drop index") == 2  # type: ignore[attr-defined]
    platform.set_session_data(str(second_job), "k", 2)
    assert platform.get_session_data(str(second_job), "k")["value"] == 2
    first, second = (str(platform.create_dicom_peer({**PEER, "name": n})) for n in ("a", "b"))
    for peer_id in (first, second):
        for path in ct_files():
            platform.upload_dicom_dataset(read(path), peer_id)
    by_peer = {s["PeerUID"]: len(s["Instances"]) for s in platform.db.find("series")}
    assert by_peer == {first: 5, second: 5}
    assert len(platform.db.find_file("dicomfiles")) == 10
    store.close()
