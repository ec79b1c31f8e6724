"""The ``mongodb`` provider: the platform's layout, the compatible API on it, and
connection failures.

No MongoDB server can be installed on the test machines (see TESTING.md), so everything
here except the connection-failure tests runs against mongomock, an in-process fake,
through the provider's ``mongomock://`` URL test hook. These tests prove which
collections, buckets and document fields the provider writes and that the store logic
is right; they cannot prove server behaviour mongomock does not reproduce (races between
processes and connections, server-side index builds, failover). The connection-failure
tests use a real pymongo client against a closed loopback port: a real failure path
that needs no server.
"""

from __future__ import annotations

import functools
import io
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
    InvalidInputError,
    NotFoundError,
    StorageError,
    StoreUnavailableError,
    open_store,
    use_context,
)
from dcm_processor_service.store import JobRef, Peer
from dcm_processor_service.store import mongodb as mongo_module
from dcm_processor_service.store.mongodb import MongoStore, parse_mongo_url
from support.stores import instance_input, make_store

#: SPEC §3: the platform's collections and GridFS buckets.
SPEC_COLLECTIONS = {"sessions", "jobs", "sessiondata", "peers", "series", "studies", "patients"}
SPEC_BUCKETS = {"sessionfiles", "dicomfiles"}
#: SPEC §4: the exact fields of the index records.
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

OWNER = JobRef("sess", "job-a", "alpha", "stable-series")


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
        session_id="sess",
        job_id="job-a",
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


# ------------------------------------------------------------------------ layout
def test_writes_only_the_platform_collections_and_buckets(mongo: MongoStore) -> None:
    mongo.ensure_session("sess", peer_id="pacs")
    mongo.create_job("sess", "alpha", "stable-series", job_id="job-a")
    mongo.set_data(OWNER, "k", '{"a":[1,2]}')
    mongo.put_file(OWNER, "f.txt", io.BytesIO(b"hello"), content_type="text/plain")
    mongo.put_peer(Peer("pacs", "PACS", "127.0.0.1", 104))
    mongo.put_instance(_instance("1.9.1"), io.BytesIO(b"dicom"))

    buckets = {f"{b}.{part}" for b in SPEC_BUCKETS for part in ("files", "chunks")}
    assert set(mongo.database.list_collection_names()) == {
        *SPEC_COLLECTIONS,
        *buckets,
        "schema_version",  # the one addition: {_id: "core", version}
    }
    assert set(mongo_module.COLLECTIONS) == SPEC_COLLECTIONS
    assert set(mongo_module.BUCKETS) == SPEC_BUCKETS


def test_index_documents_have_exactly_the_spec_fields(mongo: MongoStore) -> None:
    mongo.put_instance(_instance("1.9.1", number=2), io.BytesIO(b"A" * 10))
    mongo.put_instance(_instance("1.9.2", number=1), io.BytesIO(b"B" * 10))
    mongo.put_instance(_instance("2.9.1", series="1.2.3.2", modality="MR"), io.BytesIO(b"C" * 10))
    db = mongo.database

    series = db.series.find_one({"SeriesInstanceUID": "1.2.3.1"})
    study = db.studies.find_one({"StudyInstanceUID": "1.2.3"})
    patient = db.patients.find_one({"PatientUID": "P1"})
    assert set(series) == SERIES_FIELDS
    assert set(study) == STUDY_FIELDS
    assert set(patient) == PATIENT_FIELDS
    for doc in (series, study, patient):
        assert isinstance(doc["_id"], str)
    # Instances: ids (strings) of GridFS files in the dicomfiles bucket
    assert len(series["Instances"]) == 2
    for iid in series["Instances"]:
        assert isinstance(iid, str)
        stored = db["dicomfiles.files"].find_one({"_id": ObjectId(iid)})
        assert stored["metadata"]["instanceId"] == iid
        assert stored["metadata"]["SeriesInstanceUID"] == "1.2.3.1"
        assert stored["metadata"]["SOPInstanceUID"] in {"1.9.1", "1.9.2"}
    assert len(study["Series"]) == 2 and series["_id"] in study["Series"]
    assert patient["Studies"] == [study["_id"]]
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

    # the records the store returns (a job's headers) have the same fields
    assert set(mongo.get_series("1.2.3.1")) == SERIES_FIELDS
    assert set(mongo.get_study("1.2.3")) == STUDY_FIELDS
    assert set(mongo.get_patient("P1")) == PATIENT_FIELDS
    numbers = [i["Metadata"]["InstanceNumber"] for i in mongo.list_instances("1.2.3.1")]
    assert numbers == [1, 2]


def test_session_documents_use_the_platform_field_names(mongo: MongoStore) -> None:
    mongo.ensure_session("sess", peer_id="pacs")
    mongo.create_job("sess", "alpha", "stable-series", job_id="job-a", params={"t": 1})
    mongo.set_data(OWNER, "k", '{"a":[1,2.5,null],"b":"x"}')
    db = mongo.database

    assert db.sessions.find_one({"_id": "sess"})["peerId"] == "pacs"
    job_doc = db.jobs.find_one({"_id": "job-a"})
    assert (job_doc["sessionId"], job_doc["jobName"], job_doc["event"]) == (
        "sess",
        "alpha",
        "stable-series",
    )
    data = db.sessiondata.find_one({"sessionId": "sess"})
    assert {k: data[k] for k in ("sessionId", "jobId", "jobName", "event", "name")} == {
        "sessionId": "sess",
        "jobId": "job-a",
        "jobName": "alpha",
        "event": "stable-series",
        "name": "k",
    }
    assert data["value"] == {"a": [1, 2.5, None], "b": "x"}  # native BSON, not text


def test_migrate_creates_unique_indexes_and_version(mongo: MongoStore) -> None:
    db = mongo.database
    assert db.schema_version.find_one({"_id": "core"})["version"] == mongo_module.SCHEMA_VERSION
    unique = {
        (name, tuple(k for k, _ in spec["key"]))
        for name in ("sessiondata", "peers", "series", "studies", "patients")
        for spec in db[name].index_information().values()
        if spec.get("unique")
    }
    assert unique == {
        ("sessiondata", ("sessionId", "jobId", "name")),
        ("peers", ("name",)),
        ("series", ("SeriesInstanceUID",)),
        ("studies", ("StudyInstanceUID",)),
        ("patients", ("PatientUID",)),
    }
    db.schema_version.update_one({"_id": "core"}, {"$set": {"version": 99}})
    with pytest.raises(StorageError, match="schema version 99 is newer"):
        mongo.migrate()


# ----------------------------------------------------------- compat API round trip
@pytest.mark.parametrize(
    "value",
    [
        {"nested": {"list": [1.5, -0.0, None, True]}, "text": "ümlaut\x00nul"},
        [1, 2**62, -(2**63)],
        2**70,  # beyond 64 bits: kept as JSON text
        {"$where": "x", "a.b": 1},  # '$' key: kept as JSON text
    ],
)
def test_session_data_roundtrip_through_the_compatible_api(job, value) -> None:
    dps.set_session_data("v", value)
    assert dps.has_session_data("v")
    assert dps.get_session_data("v") == value
    with use_context(job.replace(job_id="job-b", job_name="beta")):
        assert dps.get_session_data("v", job_name="alpha") == value
    [row] = dps.JobSession.current().list_data()
    assert row["value"] == value
    assert dps.remove_session_data("v") is True
    assert dps.has_session_data("v") is False


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
    [doc] = list(bucket.find())  # the old version is gone
    info = dps.get_session_file("report.txt")
    assert info is not None and info["_id"] == first_id and info["size"] == 11
    assert doc["filename"] == "report.txt" and doc["length"] == 11
    assert set(doc["metadata"]) == {
        "sessionId",
        "jobId",
        "jobName",
        "event",
        "name",
        "fileId",
        "sha256",
        "contentType",
        "meta",
        "createdAt",
    }
    assert doc["metadata"]["fileId"] == first_id and doc["metadata"]["meta"] == {"v": 2}
    assert dps.JobSession.current().file_record("report.txt").blob_key == str(doc["_id"])  # type: ignore[union-attr]
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


def test_reingest_keeps_one_gridfs_file_and_the_instance_id(mongo: MongoStore) -> None:
    first = mongo.put_instance(_instance("1.9.1"), io.BytesIO(b"one"))
    second = mongo.put_instance(_instance("1.9.1"), io.BytesIO(b"two!"))
    assert second["_id"] == first["_id"] and second["BlobKey"] != first["BlobKey"]
    db = mongo.database
    assert db["dicomfiles.files"].count_documents({}) == 1
    assert db.series.find_one()["Instances"] == [first["_id"]]
    with mongo.open_instance(mongo.get_instance(first["_id"])) as reader:
        assert reader.read() == b"two!"
    with pytest.raises(NotFoundError, match="stored bytes are missing"):
        mongo.open_instance(first)


def test_concurrent_first_ingests_of_one_instance_converge(mongo: MongoStore) -> None:
    """Two writers ingest the same new SOPInstanceUID at once: each uploads a version
    with its own instance id. Whoever cleans up last leaves one version and one id."""
    first = mongo.put_instance(_instance("1.9.1"), io.BytesIO(b"one"))
    db = mongo.database
    # the other writer's state just before its clean-up: its own version and id listed
    with gridfs.GridFSBucket(db, bucket_name="dicomfiles").open_upload_stream(
        "1.9.1", metadata={**db["dicomfiles.files"].find_one()["metadata"], "instanceId": "other"}
    ) as upload:
        upload.write(b"two")
    db.series.update_one({}, {"$addToSet": {"Instances": "other"}})
    assert len(mongo.get_series("1.2.3.1")["Instances"]) == 2

    third = mongo.put_instance(_instance("1.9.1"), io.BytesIO(b"three"))
    assert third["_id"] == "other" != first["_id"]  # the newest version's id wins
    assert db["dicomfiles.files"].count_documents({}) == 1
    assert db.series.find_one()["Instances"] == ["other"]
    with mongo.open_instance(mongo.get_instance("1.9.1")) as reader:
        assert reader.read() == b"three"


def test_session_cleanup_prunes_documents_and_refreshes_modalities(mongo: MongoStore) -> None:
    mongo.put_instance(_instance("1.1", session_id="s1"), io.BytesIO(b"x"))
    mongo.put_instance(
        _instance("2.1", series="1.2.3.9", modality="MR", session_id="s2"), io.BytesIO(b"y")
    )
    assert mongo.delete_session_instances("s1") == 1
    db = mongo.database
    assert db.series.find_one({"SeriesInstanceUID": "1.2.3.1"}) is None
    study = db.studies.find_one({"StudyInstanceUID": "1.2.3"})
    assert len(study["Series"]) == 1 and study["Metadata"]["ModalitiesInStudy"] == ["MR"]
    assert db.patients.find_one()["Metadata"]["ModalitiesInPatient"] == ["MR"]
    assert mongo.delete_session_instances("s2") == 1
    for name in ("series", "studies", "patients", "dicomfiles.files", "dicomfiles.chunks"):
        assert db[name].count_documents({}) == 0, name


# ------------------------------------------------------- an existing deployment
def test_reads_documents_the_platform_wrote(mongo: MongoStore) -> None:
    """ObjectId session ids, and instances stored without this SDK's metadata."""
    db = mongo.database
    oid = ObjectId()
    db.sessions.insert_one({"_id": oid, "status": "open"})
    assert mongo.get_session(str(oid)).status == "open"
    assert mongo.ensure_session(str(oid)).id == str(oid)
    assert db.sessions.count_documents({}) == 1

    # (open_upload_stream: GridFSBucket's one-call helpers do not run on mongomock)
    with gridfs.GridFSBucket(db, bucket_name="dicomfiles").open_upload_stream(
        "a.dcm", metadata={"SOPInstanceUID": "7.7"}
    ) as upload:
        upload.write(b"platform bytes")
    file_id = upload._id
    db.series.insert_one(
        {"_id": "ser", "SeriesInstanceUID": "7", "Instances": [str(file_id)], "Metadata": {}}
    )
    [record] = mongo.list_instances("ser")
    assert record["_id"] == str(file_id) and record["SOPInstanceUID"] == "7.7"
    with mongo.open_instance(record) as reader:  # no checksum recorded: read unverified
        assert reader.read() == b"platform bytes"


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
    monkeypatch.setattr(mongo_module, "DEFAULT_SERVER_SELECTION_TIMEOUT_MS", 200)
    port = _closed_port()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError, match="within 200 ms"):
        open_store("mongodb", f"mongodb://127.0.0.1:{port}", "x")
    assert time.monotonic() - started < 10  # pymongo's own default would wait 30 s


def test_url_options_win_over_the_defaults(tmp_path: Path) -> None:
    store = MongoStore("mongomock://opts/db?serverSelectionTimeoutMS=50&connectTimeoutMS=70")
    options = store.client_options()
    assert "serverSelectionTimeoutMS" not in options and "connectTimeoutMS" not in options
    assert options["tz_aware"] is True
    assert store.db_name == "db"
    assert MongoStore("mongomock://opts/db", "explicit").db_name == "explicit"
    default = MongoStore("mongomock://opts")
    assert default.db_name == mongo_module.DEFAULT_DB_NAME
    assert default.client_options()["serverSelectionTimeoutMS"] == 5000


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
    if parsed.password:
        assert parsed.password not in parsed.redact(url) and "***" in parsed.redact(url)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "mongodb://host"),
        ("postgresql://u:secret@h/db", "scheme 'postgresql:'"),
        ("mongodb:///db", "no host"),
        ("mongodb://u:secret@h:notaport/db", "invalid mongodb store 'url'"),
    ],
)
def test_bad_urls_are_rejected_without_the_password(url: str, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match) as caught:
        MongoStore(url)
    assert "secret" not in "".join(traceback.format_exception(caught.value))


def test_describe_names_host_and_database() -> None:
    store = MongoStore("mongomock://describe/platform")
    assert store.describe() == "mongodb store 'platform' at mongomock://describe (in-process fake)"
