"""The ``mongodb`` provider: the platform's documents, GridFS files, guest rules, and
connection failures.

No MongoDB server can be installed on the test machines (see TESTING.md), so everything
here except the connection-failure tests runs against mongomock, an in-process fake
(``support.mongo``). These tests prove which collections, buckets, fields and id types
the provider writes and that the store logic is right; they cannot prove server
behaviour mongomock does not reproduce (races between processes and connections,
server-side index builds, failover). The platform's own provider reading and writing
the same database is checked in ``tests/test_mongodb_platform.py``. The
connection-failure tests use a real pymongo client against a closed loopback port: a
real failure path that needs no server.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import os
import socket
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("mongomock", reason="the mongodb provider is tested on mongomock")

import gridfs
import mongomock
import pymongo.errors
from bson import ObjectId

import dcm_processor_service as dps
from dcm_processor_service import (
    ConflictError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    StoreUnavailableError,
    open_store,
    use_context,
)
from dcm_processor_service.store import JobRef, Peer
from dcm_processor_service.store import mongodb as mongo_module
from dcm_processor_service.store.mongodb import EXTRA, MongoStore, parse_mongo_url
from dcm_processor_service.store.mongodb.grid import GRIDFS_CHUNK_SIZE
from support.mongo import MongomockStore, drop_database
from support.stores import corrupt_blob, instance_input, make_store

#: SPEC §3: the platform's collections and GridFS buckets.
SPEC_COLLECTIONS = {"sessions", "jobs", "sessiondata", "peers", "series", "studies", "patients"}
SPEC_BUCKETS = {"sessionfiles", "dicomfiles"}
#: the platform's record documents (its DB provider writes exactly these), plus ours
SERIES_FIELDS = {
    "_id",
    "PatientUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PeerUID",
    "Instances",
    "Metadata",
    "CreatedAt",
    "UpdatedAt",
}
STUDY_FIELDS = {
    "_id",
    "PatientUID",
    "StudyInstanceUID",
    "PeerUID",
    "Series",
    "Metadata",
    "CreatedAt",
    "UpdatedAt",
}
PATIENT_FIELDS = {"_id", "PatientUID", "PeerUID", "Studies", "Metadata", "CreatedAt", "UpdatedAt"}
#: the platform's queue fields: a job this package creates must have none of them
QUEUE_FIELDS = {"item_type", "channel", "consumer_id", "inProgress", "done", "attempts"}

SESSION, JOB_A, JOB_B = (str(ObjectId()) for _ in range(3))
OWNER = JobRef(SESSION, JOB_A, "alpha", "stable-series")


@pytest.fixture
def store_url(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """A fresh mongomock-backed store (overrides the all-providers fixture)."""
    return make_store("mongodb", tmp_path, request)


@pytest.fixture
def mongo(store_url: tuple[str, str, str]) -> Iterator[MongoStore]:
    store = open_store(*store_url)
    assert isinstance(store, MongoStore)
    yield store
    store.close()


@pytest.fixture
def job(store_url: tuple[str, str, str]) -> Iterator[dps.RuntimeContext]:
    provider, url, name = store_url
    with use_context(
        db_provider=provider,
        db_url=url,
        db_name=name,
        session_id=SESSION,
        job_id=JOB_A,
        job_name="alpha",
        job_event="stable-series",
    ) as ctx:
        yield ctx


_instance = functools.partial(instance_input, session_id="s1", peer_id="pacs")


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _platform_bucket(mongo: MongoStore, name: str) -> gridfs.GridFSBucket:
    """pymongo's GridFS reader and writer, which the platform's provider uses."""
    return gridfs.GridFSBucket(mongo.database, bucket_name=name)


# ------------------------------------------------------------------------ layout
def test_writes_only_the_platform_collections_and_buckets(mongo: MongoStore) -> None:
    mongo.ensure_session(SESSION, peer_id="pacs")
    mongo.create_job(SESSION, "alpha", "stable-series", job_id=JOB_A)
    mongo.set_data(OWNER, "k", '{"a":[1,2]}')
    mongo.put_file(OWNER, "f.txt", io.BytesIO(b"hello"), content_type="text/plain")
    mongo.put_peer(Peer("pacs", "PACS", "127.0.0.1", 104))
    mongo.put_instance(_instance("1.9.1"), io.BytesIO(b"dicom"))

    buckets = {f"{b}.{part}" for b in SPEC_BUCKETS for part in ("files", "chunks")}
    assert set(mongo.database.list_collection_names()) == {*SPEC_COLLECTIONS, *buckets}
    assert set(mongo_module.COLLECTIONS) == SPEC_COLLECTIONS
    assert set(mongo_module.BUCKETS) == SPEC_BUCKETS


def test_record_documents_have_the_platform_fields_and_id_types(mongo: MongoStore) -> None:
    mongo.put_instance(_instance("1.9.1", number=2), io.BytesIO(b"A" * 10))
    mongo.put_instance(_instance("1.9.2", number=1), io.BytesIO(b"B" * 10))
    mongo.put_instance(_instance("2.9.1", series="1.2.3.2", modality="MR"), io.BytesIO(b"C" * 10))
    db = mongo.database

    series = db.series.find_one({"SeriesInstanceUID": "1.2.3.1"})
    study = db.studies.find_one({"StudyInstanceUID": "1.2.3"})
    patient = db.patients.find_one({"PatientUID": "P1"})
    assert set(series) == {*SERIES_FIELDS, EXTRA}
    assert set(study) == {*STUDY_FIELDS, EXTRA}
    assert set(patient) == {*PATIENT_FIELDS, EXTRA, "Scheduled"}
    assert patient["Scheduled"] is False  # a new instance: the scheduler's turn again
    for doc in (series, study, patient):
        assert isinstance(doc["_id"], ObjectId) and doc[EXTRA] == {
            "origin": "dcm-processor-service"
        }
        assert isinstance(doc["CreatedAt"], dt.datetime) and doc["PeerUID"] == "pacs"
    # Instances: the GridFS _ids (as text) of the dicomfiles bucket, as the platform lists them
    assert len(series["Instances"]) == 2
    for iid in series["Instances"]:
        stored = db["dicomfiles.files"].find_one({"_id": ObjectId(iid)})
        assert stored["metadata"]["SeriesInstanceUID"] == "1.2.3.1"
        assert stored["metadata"]["PeerUID"] == "pacs" and stored["metadata"]["Slices"] == 1
    assert study["Series"] == [
        str(series["_id"]),
        str(db.series.find_one({"SeriesInstanceUID": "1.2.3.2"})["_id"]),
    ]
    assert patient["Studies"] == [str(study["_id"])]
    assert series["Metadata"] == {
        "PatientID": "P1",
        "PatientName": "Doe^J",
        "StudyInstanceUID": "1.2.3",
        "StudyDate": "20260101",
        "SeriesInstanceUID": "1.2.3.1",
        "Modality": "CT",
    }
    assert study["Metadata"]["ModalitiesInStudy"] == ["CT", "MR"]
    assert patient["Metadata"]["ModalitiesInPatient"] == ["CT", "MR"]

    # the records the store returns (a job's headers) have the SPEC §4 fields, ids as text
    record = mongo.get_series("1.2.3.1")
    assert set(record) == SERIES_FIELDS and record["_id"] == str(series["_id"])
    assert set(mongo.get_study("1.2.3")) == STUDY_FIELDS
    assert set(mongo.get_patient("P1")) == PATIENT_FIELDS
    numbers = [i["Metadata"]["InstanceNumber"] for i in mongo.list_instances("1.2.3.1")]
    assert numbers == [1, 2]


def test_session_job_and_data_documents_use_the_platform_fields(mongo: MongoStore) -> None:
    mongo.ensure_session(SESSION, peer_id="pacs")
    mongo.create_job(SESSION, "alpha", "stable-series", job_id=JOB_A, params={"t": 1})
    mongo.set_data(OWNER, "k", '{"a":[1,2.5,null],"b":"x"}')
    db = mongo.database

    session = db.sessions.find_one()
    assert session["_id"] == ObjectId(SESSION) and session["peer_id"] == "pacs"
    job_doc = db.jobs.find_one()
    assert job_doc["_id"] == ObjectId(JOB_A)
    assert (job_doc["sessionId"], job_doc["job_name"], job_doc["job_event"]) == (
        SESSION,  # text, as the platform's scheduler writes it
        "alpha",
        "stable-series",
    )
    assert job_doc["data"]["kwargs"]["params"] == {"t": 1} and job_doc["peer_id"] == "pacs"
    assert not QUEUE_FIELDS & set(job_doc)  # never picked up by the platform's queue
    data = db.sessiondata.find_one()
    assert {k: data[k] for k in ("session_id", "job_id", "name", "value")} == {
        "session_id": ObjectId(SESSION),
        "job_id": ObjectId(JOB_A),
        "name": "k",
        "value": {"a": [1, 2.5, None], "b": "x"},  # native BSON, not text
    }
    assert set(data) == {"_id", "session_id", "job_id", "name", "value", EXTRA}


def test_job_status_is_kept_apart_from_the_platform_queue_fields(mongo: MongoStore) -> None:
    db = mongo.database
    queued = {
        "_id": ObjectId(JOB_B),
        "sessionId": SESSION,
        "job_name": "seg",
        "job_event": "stable-series",
        "item_type": "queue",
        "inProgress": True,
        "done": False,
        "error": False,
        "progress": 0,
        "createdAt": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
    }
    db.jobs.insert_one(dict(queued))
    assert mongo.get_job(JOB_B).status == "running"  # read from the queue's fields
    mongo.update_job(JOB_B, progress={"percent": 40}, status="running")
    after = db.jobs.find_one({"_id": ObjectId(JOB_B)})
    assert {k: after[k] for k in queued} == queued  # the queue's own fields untouched
    assert after[EXTRA]["progress"] == {"percent": 40}
    assert mongo.find_job(SESSION, "seg", "stable-series").id == JOB_B  # type: ignore[union-attr]


def test_session_file_documents_are_the_platform_gridfs_format(mongo: MongoStore) -> None:
    payload = os.urandom(GRIDFS_CHUNK_SIZE * 2 + 7)
    record = mongo.put_file(
        OWNER,
        "mask.nii.gz",
        io.BytesIO(payload),
        content_type="application/gzip",
        meta={"ext": ".nii.gz", "k": 1},
    )
    db = mongo.database
    [doc] = list(db["sessionfiles.files"].find())
    assert record.id == str(doc["_id"])  # the returned id is the GridFS _id
    assert doc["filename"].endswith(".nii.gz") and len(doc["filename"]) == 32 + 7  # <uuid><ext>
    assert doc["contentType"] == "application/gzip" and doc["chunkSize"] == GRIDFS_CHUNK_SIZE
    assert doc["length"] == len(payload)
    meta = doc["metadata"]
    assert {k: meta[k] for k in ("ext", "k", "name", "session_id", "job_id")} == {
        "ext": ".nii.gz",
        "k": 1,
        "name": "mask.nii.gz",
        "session_id": ObjectId(SESSION),
        "job_id": ObjectId(JOB_A),
    }
    assert set(meta) == {"ext", "k", "name", "session_id", "job_id", EXTRA}
    assert db["sessionfiles.chunks"].count_documents({"files_id": doc["_id"]}) == 3
    # pymongo's GridFS reader (the platform's) reads it
    assert (
        _platform_bucket(mongo, "sessionfiles").open_download_stream(doc["_id"]).read() == payload
    )

    again = mongo.put_file(OWNER, "mask.nii.gz", io.BytesIO(b"v2"), content_type="application/gzip")
    assert again.id == record.id  # replaced in place, like the platform's re-upload
    assert _platform_bucket(mongo, "sessionfiles").open_download_stream(doc["_id"]).read() == b"v2"
    assert db["sessionfiles.chunks"].count_documents({}) == 1


def test_dicom_file_documents_are_the_platform_gridfs_format(mongo: MongoStore) -> None:
    header = {
        "PatientName": "Doe^J",
        "PatientAge": 45,
        "InstanceNumber": 3,
        "ImageType": ["A", "B"],
    }
    inp = _instance("1.9.1")
    inp = type(inp)(**{**inp.__dict__, "header": header})
    first = mongo.put_instance(inp, io.BytesIO(b"first"))
    db = mongo.database
    [doc] = list(db["dicomfiles.files"].find())
    assert doc["filename"].endswith(".dcm") and doc["contentType"] == "application/dicom"
    assert {k: v for k, v in doc["metadata"].items() if k != EXTRA} == {
        **header,
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.1",
        "SOPInstanceUID": "1.9.1",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "PeerUID": "pacs",
        "Slices": 1,
    }
    second = mongo.put_instance(inp, io.BytesIO(b"corrected"))  # a corrected resend
    assert second["_id"] == first["_id"] == str(doc["_id"])  # in place: same _id
    assert db["dicomfiles.files"].count_documents({}) == 1
    assert db.series.find_one()["Instances"] == [first["_id"]]
    assert (
        _platform_bucket(mongo, "dicomfiles").open_download_stream(doc["_id"]).read()
        == b"corrected"
    )
    with pytest.raises(NotFoundError, match="read it again"):
        mongo.open_instance(first)  # the record of the replaced version
    with mongo.open_instance(mongo.get_instance("1.9.1")) as reader:
        assert reader.read() == b"corrected"


# ------------------------------------------------------------ in-place replacement
def test_a_reader_during_a_replacement_is_told_to_read_again(mongo: MongoStore) -> None:
    old, new = os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024)
    record = mongo.put_file(OWNER, "big", io.BytesIO(old), content_type="application/octet-stream")
    reader = mongo.open_file(record)
    assert reader.read(1024 * 1024) == old[: 1024 * 1024]  # the first chunks are fetched
    mongo.put_file(OWNER, "big", io.BytesIO(new), content_type="application/octet-stream")
    with pytest.raises(NotFoundError, match="read it again"):
        reader.read()  # never a silent mix, never reported as corruption
    with mongo.open_file(mongo.get_file(OWNER, "big")) as fresh:  # type: ignore[arg-type]
        assert fresh.read() == new


def test_a_replacement_within_the_same_millisecond_is_a_new_version(
    mongo: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file version is named by its upload date in milliseconds: two versions
    written within one millisecond (frozen here: the clock of a fast machine) must still
    get different names, so a reader of the old record is told to read again instead of
    being handed the new bytes under the old size and checksum (reported as damage)."""
    import dcm_processor_service.store.mongodb.grid as grid

    frozen = grid.now()
    monkeypatch.setattr(grid, "now", lambda: frozen)
    first = mongo.put_file(OWNER, "f", io.BytesIO(b"one"), content_type="text/plain")
    second = mongo.put_file(OWNER, "f", io.BytesIO(b"two!"), content_type="text/plain")
    assert second.id == first.id and second.blob_key != first.blob_key
    assert second.updated_at > first.updated_at
    with pytest.raises(NotFoundError, match="read it again"):
        mongo.open_file(first).read()
    with mongo.open_file(second) as reader:
        assert reader.read() == b"two!"


def _leave_journal(mongo: MongoStore, monkeypatch: pytest.MonkeyPatch, content: bytes) -> None:
    """Replace the file "f" by a writer that dies right after claiming the swap."""
    from dcm_processor_service.store.mongodb.grid import GridBucket

    def killed(self: GridBucket, target: object) -> None:
        raise KeyboardInterrupt("writer killed")

    with monkeypatch.context() as patch:
        patch.setattr(GridBucket, "_finish", killed)
        with pytest.raises(KeyboardInterrupt):
            mongo.put_file(OWNER, "f", io.BytesIO(content), content_type="text/plain")


def _age_journal(mongo: MongoStore) -> dict:
    """Move the file's upload and the swap's start back in time (the writer died long ago)."""
    files = mongo.database["sessionfiles.files"]
    uploaded = dt.datetime(1999, 12, 31, tzinfo=dt.timezone.utc)
    started = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
    files.update_one(
        {},
        {
            "$set": {
                "uploadDate": uploaded,
                f"metadata.{EXTRA}.uploadDate": uploaded,
                f"metadata.{EXTRA}.swap.since": started,
            }
        },
    )
    return files.find_one()["metadata"][EXTRA]["swap"]


@pytest.mark.parametrize("phase", ["claimed", "half-moved"])
def test_a_replacement_whose_writer_died_is_completed_not_lost(
    mongo: MongoStore, monkeypatch: pytest.MonkeyPatch, phase: str
) -> None:
    old = os.urandom(3 * GRIDFS_CHUNK_SIZE)
    new = os.urandom(4 * GRIDFS_CHUNK_SIZE + 1)
    mongo.put_file(OWNER, "f", io.BytesIO(old), content_type="text/plain")
    _leave_journal(mongo, monkeypatch, new)
    journal = _age_journal(mongo)
    db = mongo.database
    target = db["sessionfiles.files"].find_one()["_id"]
    if phase == "half-moved":  # died after deleting the old chunks and moving two new ones
        db["sessionfiles.chunks"].delete_many({"files_id": target})
        db["sessionfiles.files"].update_one({}, {"$set": {f"metadata.{EXTRA}.swap.phase": "move"}})
        for n in (0, 1):
            db["sessionfiles.chunks"].update_one(
                {"files_id": journal["chunks"], "n": n}, {"$set": {"files_id": target}}
            )
    record = mongo.get_file(OWNER, "f")
    assert record is not None
    with mongo.open_file(record) as reader:  # waits for / completes the replacement
        assert reader.read() == new
    assert db["sessionfiles.chunks"].count_documents({"files_id": journal["chunks"]}) == 0
    assert "swap" not in db["sessionfiles.files"].find_one()["metadata"][EXTRA]


def test_a_platform_upload_after_a_dead_writers_swap_wins(
    mongo: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform re-uploads a file whose replacement a dead writer left journaled
    (its re-upload keeps the old metadata, journal included): its newer content stays."""
    mongo.put_file(OWNER, "f", io.BytesIO(b"old"), content_type="text/plain")
    _leave_journal(mongo, monkeypatch, b"ours, never finished")
    db = mongo.database
    doc = db["sessionfiles.files"].find_one()
    journal = doc["metadata"][EXTRA]["swap"]
    bucket = _platform_bucket(mongo, "sessionfiles")
    bucket.delete(doc["_id"])
    with bucket.open_upload_stream_with_id(doc["_id"], "x", metadata=doc["metadata"]) as up:
        up.write(b"the platform's")
    record = mongo.get_file(OWNER, "f")
    assert record is not None and record.sha256 == ""  # stale, and the journal obsolete
    with mongo.open_file(record) as reader:
        assert reader.read() == b"the platform's"
    assert "swap" not in db["sessionfiles.files"].find_one()["metadata"][EXTRA]
    assert db["sessionfiles.chunks"].count_documents({"files_id": journal["chunks"]}) == 0


def test_checksum_made_stale_by_a_platform_rewrite_is_not_corruption(mongo: MongoStore) -> None:
    """The platform's re-upload: delete, upload under the same _id, old metadata kept."""
    mongo.put_instance(_instance("1.9.1"), io.BytesIO(b"ours"))
    db = mongo.database
    doc = db["dicomfiles.files"].find_one()
    bucket = _platform_bucket(mongo, "dicomfiles")
    bucket.delete(doc["_id"])
    with bucket.open_upload_stream_with_id(doc["_id"], "x.dcm", metadata=doc["metadata"]) as up:
        up.write(b"platform's corrected version")
    record = mongo.get_instance("1.9.1")
    assert record["SHA256"] == ""  # stale: read unverified
    with mongo.open_instance(record) as reader:
        assert reader.read() == b"platform's corrected version"

    mongo.put_instance(_instance("1.9.1"), io.BytesIO(b"ours again"))
    record = mongo.get_instance("1.9.1")
    assert record["SHA256"]  # fresh again
    corrupt_blob(mongo, record["BlobKey"], b"ours agaiN", mongo.dicom)  # damage: same size
    with pytest.raises(IntegrityError, match="sha256"), mongo.open_instance(record) as reader:
        reader.read()


# --------------------------------------------------------------------- guest rules
def test_migrate_on_a_platform_database_creates_no_unique_index(mongo: MongoStore) -> None:
    db = mongo.database
    unique = {
        (name, tuple(k for k, _ in spec["key"]))
        for name in db.list_collection_names()
        for spec in db[name].index_information().values()
        if spec.get("unique") and name != "_id_"
    }
    assert unique == {
        ("dicomfiles.chunks", ("files_id", "n")),
        ("sessionfiles.chunks", ("files_id", "n")),
    }
    assert mongo.migration_plan() == []  # everything is in place
    assert mongo.migrate() == mongo_module.SCHEMA_VERSION and mongo.last_migration == []


def test_migrate_drops_the_unique_indexes_of_version_0_1_and_says_so(
    mongo: MongoStore, caplog: pytest.LogCaptureFixture
) -> None:
    db = mongo.database  # as dcm-processor-service 0.1 left it:
    db.series.drop_index("SeriesInstanceUID_1")
    db.sessiondata.create_index([("sessionId", 1), ("jobId", 1), ("name", 1)], unique=True)
    db.series.create_index([("SeriesInstanceUID", 1)], unique=True)
    # the platform's set_session_data: the same name in two sessions; no sessionId/jobId
    db.sessiondata.insert_one(
        {"session_id": ObjectId(), "job_id": ObjectId(), "name": "a", "value": 1}
    )
    with pytest.raises(pymongo.errors.DuplicateKeyError):  # what the platform hit
        db.sessiondata.insert_one({"session_id": ObjectId(), "job_id": ObjectId(), "name": "a"})
    plan = mongo.migration_plan()
    assert [(s.action, s.collection, s.keys) for s in plan] == [
        ("drop index", "sessiondata", ("sessionId", "jobId", "name")),
        ("drop index", "series", ("SeriesInstanceUID",)),
        ("create index", "series", ("SeriesInstanceUID",)),
    ]
    assert all(not s.done for s in plan) and all("0.1" in s.reason for s in plan[:2])
    with caplog.at_level("WARNING"):
        mongo.migrate()
    assert "drop index sessiondata(sessionId, jobId, name)" in caplog.text
    assert all(s.done for s in mongo.last_migration)
    db.sessiondata.insert_one({"session_id": ObjectId(), "job_id": ObjectId(), "name": "a"})
    assert db.sessiondata.count_documents({}) == 2  # no document was touched


def test_exclusive_layout_adds_unique_keys(store_url: tuple[str, str, str]) -> None:
    provider, url, name = store_url
    store = open_store(provider, f"{url}/?layout=exclusive", name)
    assert isinstance(store, MongoStore) and store.layout == "exclusive"
    unique = {
        (spec.collection, spec.keys)
        for spec in store.last_migration
        if spec.action == "create unique index"
    }
    assert ("sessiondata", ("session_id", "job_id", "name")) in unique
    assert ("series", ("PatientUID", "StudyInstanceUID", "SeriesInstanceUID", "PeerUID")) in unique
    db = store.database
    db.sessiondata.insert_one({"session_id": 1, "job_id": 1, "name": "a"})
    with pytest.raises(pymongo.errors.DuplicateKeyError):
        db.sessiondata.insert_one({"session_id": 1, "job_id": 1, "name": "a"})
    store.close()


def test_session_deletion_keeps_the_platform_jobs(mongo: MongoStore) -> None:
    mongo.ensure_session(SESSION)
    ours = mongo.create_job(SESSION, "alpha", "stable-series")
    mongo.database.jobs.insert_one(
        {"_id": ObjectId(JOB_B), "sessionId": SESSION, "item_type": "queue"}
    )
    assert mongo.delete_session(SESSION) is True
    assert [j.id for j in mongo.list_jobs(SESSION)] == [JOB_B]
    with pytest.raises(NotFoundError):
        mongo.get_job(ours.id)


def test_cleanup_of_a_platform_session_follows_its_patient(mongo: MongoStore) -> None:
    """The platform's rule: the session's patient, its studies, series and files go."""
    mongo.put_instance(_instance("1.1", session_id=None), io.BytesIO(b"x"))
    mongo.put_instance(_instance("2.1", series="1.2.3.9", session_id=None), io.BytesIO(b"y"))
    other = _instance("3.1", series="4.4.4.1", study="4.4.4", patient="P2", session_id=None)
    mongo.put_instance(other, io.BytesIO(b"z"))
    db = mongo.database
    patient = db.patients.find_one({"PatientUID": "P1"})
    session_id = str(
        db.sessions.insert_one({"patient_id": patient["_id"], "peer_id": "pacs"}).inserted_id
    )

    assert [s["SeriesInstanceUID"] for s in mongo.list_series(session_id=session_id)] == [
        "1.2.3.1",
        "1.2.3.9",
    ]
    assert mongo.delete_session_instances(session_id) == 2
    assert db.patients.count_documents({}) == db.studies.count_documents({}) == 1
    assert [d["metadata"]["SOPInstanceUID"] for d in db["dicomfiles.files"].find()] == ["3.1"]


def test_our_cleanup_never_deletes_an_emptied_platform_record(mongo: MongoStore) -> None:
    mongo.put_instance(_instance("1.1", session_id="ours"), io.BytesIO(b"x"))
    db = mongo.database
    # the platform filed a second instance into the same series; its record, not ours
    db.series.update_one({}, {"$unset": {EXTRA: ""}})
    assert mongo.delete_session_instances("ours") == 1
    series = db.series.find_one()
    assert series is not None and series["Instances"] == []  # emptied, kept
    assert db.studies.count_documents({}) == db.patients.count_documents({}) == 1


# ----------------------------------------------------------- compat API round trip
@pytest.mark.parametrize(
    "value",
    [
        {"nested": {"list": [1.5, -0.0, None, True]}, "text": "ümlaut\x00nul"},
        [1, 2**62, -(2**63)],
        2**70,  # beyond 64 bits: kept as JSON text beside a null value
        {"$where": "x", "a.b": 1},  # '$' key: kept as JSON text
    ],
)
def test_session_data_roundtrip_through_the_compatible_api(job, value) -> None:
    dps.set_session_data("v", value)
    assert dps.has_session_data("v")
    assert dps.get_session_data("v") == value
    with use_context(job.replace(job_id=JOB_B, job_name="beta")):
        assert dps.get_session_data("v", job_name="alpha") == value
    [row] = dps.JobSession.current().list_data()
    assert row["value"] == value
    assert dps.remove_session_data("v") is True
    assert dps.has_session_data("v") is False


def test_another_jobs_value_is_found_through_the_jobs_collection(mongo: MongoStore, job) -> None:
    """A value the platform's set_session_data stored (no owner name recorded with it)
    is found by job name through the job's document."""
    db = mongo.database
    db.jobs.insert_one(
        {
            "_id": ObjectId(JOB_B),
            "sessionId": SESSION,
            "job_name": "beta",
            "job_event": "stable-series",
        }
    )
    db.sessiondata.insert_one(
        {"session_id": ObjectId(SESSION), "job_id": ObjectId(JOB_B), "name": "v", "value": [1]}
    )
    assert dps.get_session_data("v", job_name="beta") == [1]
    assert dps.get_session_data("v", job_name="alpha") is None
    [row] = dps.JobSession.current().list_data()
    assert (row["job_name"], row["event"], row["value"]) == ("beta", "stable-series", [1])


def test_session_file_roundtrip_and_replace_through_the_compatible_api(job) -> None:
    first_id = dps.upload_session_file(b"version one", "report.txt", meta={"v": 1})
    store = dps.store_for()
    assert isinstance(store, MongoStore)
    bucket = store.database["sessionfiles.files"]

    class Source:
        """Checks, halfway through the upload, that readers still see version one."""

        def __init__(self) -> None:
            self.parts = [b"version ", b"two"]

        def read(self, n: int = -1) -> bytes:
            if len(self.parts) == 1:
                assert dps.download_session_file("report.txt").read() == b"version one"  # type: ignore[union-attr]
                assert dps.get_session_file("report.txt")["meta"] == {"v": 1}  # type: ignore[index]
            return self.parts.pop(0) if self.parts else b""

    second_id = dps.upload_session_file(Source(), "report.txt", meta={"v": 2})
    assert second_id == first_id  # the file id survives a replace
    assert dps.download_session_file("report.txt").read() == b"version two"  # type: ignore[union-attr]
    [doc] = list(bucket.find())
    info = dps.get_session_file("report.txt")
    assert info is not None and info["_id"] == first_id == str(doc["_id"]) and info["size"] == 11
    assert doc["metadata"]["v"] == 2 and doc["contentType"] == "text/plain"
    assert dps.remove_session_file("report.txt") is True
    assert bucket.count_documents({}) == 0
    assert store.database["sessionfiles.chunks"].count_documents({}) == 0


def test_failed_upload_keeps_the_previous_version_and_leaves_no_chunks(
    mongo: MongoStore,
) -> None:
    mongo.put_file(OWNER, "f", io.BytesIO(b"old"), content_type="text/plain")

    class Broken:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, n: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 3:
                raise OSError("disk went away")
            return b"x" * 300_000  # more than one GridFS chunk

    with pytest.raises(OSError, match="disk went away"):
        mongo.put_file(OWNER, "f", Broken(), content_type="text/plain")  # type: ignore[arg-type]
    record = mongo.get_file(OWNER, "f")
    assert record is not None
    with mongo.open_file(record) as reader:
        assert reader.read() == b"old"
    db = mongo.database
    assert db["sessionfiles.files"].count_documents({}) == 1
    assert db["sessionfiles.chunks"].count_documents({}) == 1


def test_an_instance_moved_to_another_series_leaves_its_old_series(mongo: MongoStore) -> None:
    mongo.put_instance(_instance("1.9.1"), io.BytesIO(b"one"))
    moved = mongo.put_instance(_instance("1.9.1", series="1.2.3.7"), io.BytesIO(b"two"))
    db = mongo.database
    assert [d["SeriesInstanceUID"] for d in db.series.find()] == ["1.2.3.7"]
    assert db.series.find_one()["Instances"] == [moved["_id"]]
    assert db.studies.find_one()["Series"] == [str(db.series.find_one()["_id"])]


# ------------------------------------------------------------------- concurrency
def test_upsert_that_loses_a_unique_key_race_is_retried(
    mongo: MongoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = mongomock.collection.Collection.find_one_and_update
    failures = {"left": 2}

    def racing(self, *args, **kwargs):  # another writer inserted the key first
        if failures["left"]:
            failures["left"] -= 1
            raise pymongo.errors.DuplicateKeyError("E11000 duplicate key", 11000)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(mongomock.collection.Collection, "find_one_and_update", racing)
    assert mongo.put_peer(Peer("pacs", "PACS", "127.0.0.1", 104)).name == "pacs"
    failures["left"] = 10**6
    with pytest.raises(ConflictError, match="unique key"):
        mongo.put_peer(Peer("other", "OTHER", "127.0.0.1", 104))


# ------------------------------------------------------------------ URLs, errors
def test_unreachable_server_is_a_clear_error_without_the_password() -> None:
    port = _closed_port()
    url = f"mongodb://svc:s3cr%40t-pw@127.0.0.1:{port}/platform?serverSelectionTimeoutMS=300"
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as caught:
        open_store("mongo", url, "jobsdb")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message and "'jobsdb'" in message and "300 ms" in message
    chain = "".join(traceback.format_exception(caught.value))
    for secret in ("s3cr@t-pw", "s3cr%40t-pw"):
        assert secret not in chain


def test_default_server_selection_timeout_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    from dcm_processor_service.store.mongodb import connection

    monkeypatch.setattr(connection, "DEFAULT_SERVER_SELECTION_TIMEOUT_MS", 200)
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="within 200 ms"):
        open_store("mongodb", f"mongodb://127.0.0.1:{port}/?layout=exclusive", "x")
    assert time.monotonic() - started < 10  # pymongo's own default would wait 30 s


def test_url_options_win_over_the_defaults() -> None:
    store = MongomockStore("mongodb://opts/db?serverSelectionTimeoutMS=50&connectTimeoutMS=70")
    options = store.client_options()
    assert "serverSelectionTimeoutMS" not in options and "connectTimeoutMS" not in options
    assert options["tz_aware"] is True
    assert store.db_name == "db"
    assert MongomockStore("mongodb://opts/db", "explicit").db_name == "explicit"
    default = MongomockStore("mongodb://opts")
    assert default.db_name == mongo_module.DEFAULT_DB_NAME
    assert default.client_options()["serverSelectionTimeoutMS"] == 5000
    for name in ("db", "explicit", mongo_module.DEFAULT_DB_NAME):
        drop_database("opts", name)


@pytest.mark.parametrize(
    ("url", "hosts", "database"),
    [
        ("mongodb://u:pw@db.example.org/x", "db.example.org:27017", "x"),
        ("mongodb://u:pw@a:1,b:2/x?replicaSet=rs", "a:1,b:2", "x"),
        ("mongodb://[::1]/", "[::1]:27017", None),
        ("mongodb://[::1]:27018", "[::1]:27018", None),
        ("mongodb+srv://u:p%40w@cluster.example.net/y", "cluster.example.net", "y"),
    ],
)
def test_url_forms(url: str, hosts: str, database: str | None) -> None:
    parsed = parse_mongo_url(url)  # no DNS look-up, even for mongodb+srv
    assert (parsed.host_list(), parsed.database) == (hosts, database)
    assert parsed.layout == "platform" and parsed.driver_url() == url
    if parsed.password:
        assert parsed.password not in parsed.redact(url) and "***" in parsed.redact(url)


@pytest.mark.parametrize(
    ("url", "driver_url"),
    [
        ("mongodb://h/db?layout=exclusive", "mongodb://h/db"),
        ("mongodb://h/db?replicaSet=rs&LAYOUT=exclusive&w=1", "mongodb://h/db?replicaSet=rs&w=1"),
        ("mongodb://h?layout=exclusive", "mongodb://h"),
    ],
)
def test_the_layout_option_never_reaches_pymongo(url: str, driver_url: str) -> None:
    parsed = parse_mongo_url(url)
    assert parsed.layout == "exclusive" and parsed.driver_url() == driver_url


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "mongodb://host"),
        ("postgresql://u:secret@h/db", "scheme 'postgresql:'"),
        ("mongomock://label/db", "scheme 'mongomock:'"),
        ("mongodb:///db", "no host"),
        ("mongodb://u:secret@h:notaport/db", "invalid mongodb store 'url'"),
        ("mongodb://u:secret@h/db?layout=shared", "'layout' value 'shared' - must be one of"),
    ],
)
def test_bad_urls_are_rejected_without_the_password(url: str, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match) as caught:
        MongoStore(url)
    assert "secret" not in "".join(traceback.format_exception(caught.value))


def test_describe_names_host_and_database() -> None:
    assert MongoStore.describe(MongomockStore("mongodb://describe/platform")) == (
        "mongodb store 'platform' at describe:27017"
    )
    drop_database("describe", "platform")
