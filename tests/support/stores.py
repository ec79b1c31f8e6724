"""Which storage providers the contract suite runs on, and how to make an empty one.

Each provider gets a brand-new empty store per test: SQLite a file in ``tmp_path``;
PostgreSQL a new database on the server the test session started (the session-scoped
``postgres_server`` fixture, started only when a PostgreSQL test runs), dropped after
the test. MongoDB runs on mongomock, an in-process fake (no MongoDB server can be
installed on the test machines, see TESTING.md): the real provider with its client
replaced, registered as the test provider ``mongomock`` (``support.mongo``); a fresh
database per test, dropped after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dcm_processor_service import RuntimeContext
from dcm_processor_service.store import InstanceInput, Store

#: Providers of the contract suite (``pytest -k sqlite`` selects one).
PROVIDERS: list[str] = ["sqlite", "postgresql", "mongodb"]

#: Providers whose test store lives inside the test process, so processes the test
#: spawns cannot see it (mongomock keeps its data in memory). Keyed by the provider
#: parameter and by the provider name ``make_store`` returns for it.
_MONGOMOCK_ONLY = (
    "the mongodb provider is tested on mongomock, an in-process fake (no MongoDB server "
    "can run here), which child processes cannot share"
)
IN_PROCESS_ONLY: dict[str, str] = {"mongodb": _MONGOMOCK_ONLY, "mongomock": _MONGOMOCK_ONLY}


def requires_shared_server(provider: str) -> None:
    """Skip the calling test when ``provider``'s test store cannot be shared by several
    processes (call it first in tests that spawn processes on one store)."""
    reason = IN_PROCESS_ONLY.get(provider)
    if reason:
        pytest.skip(f"needs a store shared between processes: {reason}")


def make_store(
    provider: str, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[str, str, str]:
    """(provider, url, name) of a fresh empty store."""
    if provider == "sqlite":
        return ("sqlite", str(tmp_path / "store"), "test")
    if provider == "postgresql":
        from .postgres import sanitize_db_name

        server = request.getfixturevalue("postgres_server")
        name = server.create_database(sanitize_db_name(request.node.name))
        request.addfinalizer(lambda: server.drop_database(name))
        return ("postgresql", server.url(name), name)
    if provider == "mongodb":
        pytest.importorskip("mongomock", reason="the mongodb tests run on mongomock")
        import uuid

        from . import mongo

        mongo.register()
        name = f"test-{uuid.uuid4().hex}"
        request.addfinalizer(lambda: mongo.drop_database("contract", name))
        return (mongo.PROVIDER, "mongodb://contract", name)
    raise AssertionError(f"no test store recipe for provider {provider!r}")


def instance_input(
    sop: str,
    *,
    series: str = "1.2.3.1",
    study: str = "1.2.3",
    patient: str = "P1",
    modality: str = "CT",
    number: int = 1,
    session_id: str | None = None,
    peer_id: str | None = None,
) -> InstanceInput:
    """A CT instance record for store tests (no DICOM parsing involved)."""
    return InstanceInput(
        patient_uid=patient,
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        patient_meta={"PatientID": patient, "PatientName": "Doe^J"},
        study_meta={"StudyInstanceUID": study, "StudyDate": "20260101"},
        series_meta={"SeriesInstanceUID": series, "Modality": modality},
        instance_meta={"InstanceNumber": number},
        modality=modality,
        peer_id=peer_id,
        session_id=session_id,
    )


def job_context(
    store_url: tuple[str, str, str], session_id: str, job: str, event: str = "stable-series"
) -> RuntimeContext:
    """The runtime context of job ``job`` (its id and name) of ``session_id`` on the
    store ``store_url`` = (provider, url, name)."""
    provider, url, name = store_url
    return RuntimeContext(
        db_provider=provider,
        db_url=url,
        db_name=name,
        session_id=session_id,
        job_event=event,
        job_id=job,
        job_name=job,
    )


def corrupt_blob(store: Store, key: str, content: bytes, blobs: Any = None) -> None:
    """Replace the bytes of blob ``key`` behind the store's back, keeping the record
    that describes it (simulates damaged storage: the next read must raise
    IntegrityError). ``blobs``: the blob store holding it (default ``store.blobs``; the
    ``mongodb`` provider's instances are in ``store.dicom``).

    Each provider's bytes are rewritten where they live: a blob folder's file, the
    PostgreSQL ``blob_chunks`` rows (through a connection of its own), a GridFS file's
    chunks."""
    blobs = store.blobs if blobs is None else blobs  # type: ignore[attr-defined]
    if hasattr(blobs, "path"):  # a blob folder
        blobs.path(key).write_bytes(content)
    elif hasattr(blobs, "leases"):  # PostgreSQL chunk rows
        _corrupt_pg_blob(store, blobs.chunk_size, key, content)
    else:  # a GridFS bucket
        _corrupt_grid_file(blobs, key, content)


def _corrupt_pg_blob(store: Any, chunk_size: int, key: str, content: bytes) -> None:
    import psycopg

    pieces = [content[i : i + chunk_size] for i in range(0, len(content), chunk_size)]
    with psycopg.connect(store.settings.conninfo) as conn, conn.transaction():
        conn.execute("DELETE FROM blob_chunks WHERE key = %s", (key,))
        for seq, piece in enumerate(pieces):
            conn.execute(
                "INSERT INTO blob_chunks (key, seq, data) VALUES (%s, %s, %s)", (key, seq, piece)
            )
        conn.execute("UPDATE blobs SET chunks = %s WHERE key = %s", (len(pieces), key))


def _corrupt_grid_file(bucket: Any, key: str, content: bytes) -> None:
    import bson

    from dcm_processor_service.store.mongodb.grid import GRIDFS_CHUNK_SIZE, file_id_of

    db = bucket.conn.database
    file_id = file_id_of(key)
    doc = db[f"{bucket.name}.files"].find_one({"_id": file_id})
    assert doc is not None, f"GridFS file {file_id} not found in bucket {bucket.name!r}"
    size = int(doc.get("chunkSize") or GRIDFS_CHUNK_SIZE)
    chunks = db[f"{bucket.name}.chunks"]
    chunks.delete_many({"files_id": file_id})
    for n, start in enumerate(range(0, len(content), size)):
        chunks.insert_one(
            {"files_id": file_id, "n": n, "data": bson.Binary(content[start : start + size])}
        )
