"""The PostgreSQL provider against a real server (no mocks).

The storage contract itself runs on PostgreSQL through ``test_store_contract.py``; this
file covers what only a shared server has: many processes on one session, a server
restart in the middle of work, concurrent first-use migration, fork safety, connection
errors that must name host/port/database but never the password, and URL parsing.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
import threading
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import pytest

import dcm_processor_service as dps
from dcm_processor_service import (
    InvalidInputError,
    RuntimeContext,
    StorageError,
    StoreUnavailableError,
    open_store,
    use_context,
)
from dcm_processor_service.store import InstanceInput, JobRef
from support.postgres import PostgresServer, free_port, sanitize_db_name

pytestmark = pytest.mark.postgresql

SPAWN = mp.get_context("spawn")


def _db_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _sql(server: PostgresServer, url: str, statement: str) -> list[tuple[Any, ...]]:
    return server.sql(statement, dbname=_db_of(url))


def _assert_no_leftover_blobs(server: PostgresServer, url: str) -> None:
    """Every blob is complete and referenced by exactly one record; no stray chunks."""
    incomplete = _sql(server, url, "SELECT count(*) FROM blobs WHERE NOT complete")[0][0]
    orphans = _sql(
        server,
        url,
        "SELECT count(*) FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM session_files f"
        " WHERE f.blob_key = b.key) AND NOT EXISTS (SELECT 1 FROM instances i"
        " WHERE i.blob_key = b.key)",
    )[0][0]
    stray = _sql(
        server,
        url,
        "SELECT count(*) FROM blob_chunks c WHERE NOT EXISTS"
        " (SELECT 1 FROM blobs b WHERE b.key = c.key)",
    )[0][0]
    assert (incomplete, orphans, stray) == (0, 0, 0)


# --------------------------------------------------------------- many processes
PROCS = 16
OPS = 500
HOT_DATA, HOT_FILE = "hot-value", "hot.bin"


def _content(worker: int, i: int) -> bytes:
    """Deterministic small file content (200 B - 6 KB) of op ``i`` of ``worker``."""
    seed = hashlib.sha256(f"{worker}:{i}".encode()).digest()
    return seed * (7 + (worker * 31 + i * 17) % 180)


def _mixed_worker(ctx: RuntimeContext, worker: int, go: Any, errors: Any) -> None:
    """Runs in a child: 500 mixed data/file operations on one session."""
    try:
        go.wait(120)
        mine = ctx.replace(job_id=f"job-{worker}", job_name=f"worker-{worker}")
        hot = ctx.replace(job_id="hot-job", job_name="hot")
        data: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        with use_context(mine):
            for i in range(OPS):
                op = i % 10
                if op in (0, 1, 2):
                    key = f"k-{i % 40}"
                    data[key] = {"w": worker, "i": i, "list": list(range(i % 5))}
                    dps.set_session_data(key, data[key])
                elif op == 3 and data:
                    key = sorted(data)[i % len(data)]
                    got = dps.get_session_data(key)
                    assert got == data[key], f"read {key}: {got!r} != {data[key]!r}"
                elif op in (4, 5):
                    name = f"f-{i % 12}.bin"
                    files[name] = _content(worker, i)
                    dps.upload_session_file(files[name], name, meta={"i": i})
                elif op == 6 and files:
                    name = sorted(files)[i % len(files)]
                    got_file = dps.download_session_file(name)
                    assert got_file is not None and got_file.read() == files[name], name
                elif op == 7:
                    with use_context(hot):
                        dps.set_session_data(HOT_DATA, {"w": worker, "i": i})
                elif op == 8:
                    with use_context(hot):
                        dps.upload_session_file(_content(worker, i), HOT_FILE)
                else:
                    assert dps.has_session_data(f"k-{i % 40}") == (f"k-{i % 40}" in data)
    except BaseException as exc:  # everything the caller would have seen
        errors.put(f"worker {worker}: {type(exc).__name__}: {exc}")
        raise


@pytest.mark.slow
def test_16_processes_mixed_operations_lose_nothing(
    postgres_server: PostgresServer, pg_db: str
) -> None:
    ctx = RuntimeContext(
        db_provider="postgresql",
        db_url=pg_db,
        db_name=_db_of(pg_db),
        session_id="busy",
        job_event="stable-series",
        job_id="checker",
        job_name="checker",
    )
    go, errors = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_mixed_worker, args=(ctx, w, go, errors)) for w in range(PROCS)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(timeout=300)
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == []
    assert [p.exitcode for p in procs] == [0] * PROCS

    # replay each worker's operations to know the final value of every key and file
    with use_context(ctx):
        session = dps.JobSession.current()
        values = {(r["job_name"], r["name"]): r["value"] for r in session.list_data()}
        n_data = len(values)
        for w in range(PROCS):
            expected_data: dict[str, Any] = {}
            expected_files: dict[str, bytes] = {}
            for i in range(OPS):
                if i % 10 in (0, 1, 2):
                    expected_data[f"k-{i % 40}"] = {"w": w, "i": i, "list": list(range(i % 5))}
                elif i % 10 in (4, 5):
                    expected_files[f"f-{i % 12}.bin"] = _content(w, i)
            for key, value in expected_data.items():
                assert values.pop((f"worker-{w}", key)) == value
            for name, content in expected_files.items():
                got = dps.download_session_file(name, job_name=f"worker-{w}")
                assert got is not None and got.read() == content, (w, name)
        # the contended key: exactly one value, one of those written (last write wins)
        hot = values.pop(("hot", HOT_DATA))
        assert hot["i"] % 10 == 7 and 0 <= hot["w"] < PROCS
        assert values == {}
        hot_file = dps.download_session_file(HOT_FILE, job_name="hot")
        assert hot_file is not None
        assert hot_file.read() in {_content(w, i) for w in range(PROCS) for i in range(8, OPS, 10)}
    counts = _sql(
        postgres_server,
        pg_db,
        "SELECT (SELECT count(*) FROM session_data), (SELECT count(*) FROM session_files),"
        " (SELECT count(*) FROM session_files WHERE name = 'hot.bin')",
    )[0]
    assert counts == (n_data, PROCS * 12 + 1, 1)
    _assert_no_leftover_blobs(postgres_server, pg_db)


# ---------------------------------------------------------------- index contention
def _ingest_worker(url: str, worker: int, go: Any, errors: Any) -> None:
    try:
        go.wait(120)
        store = open_store("postgresql", url)
        for i in range(40):
            sop = f"1.2.9.{(worker + i) % 30}"  # overlapping SOP UIDs across workers
            store.put_instance(
                InstanceInput(
                    patient_uid="PAT",
                    study_instance_uid="1.2.9",
                    series_instance_uid="1.2.9.0",
                    sop_instance_uid=sop,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    patient_meta={"PatientID": "PAT"},
                    study_meta={"StudyInstanceUID": "1.2.9"},
                    series_meta={"SeriesInstanceUID": "1.2.9.0", "Modality": "CT"},
                    instance_meta={"InstanceNumber": i},
                    modality="CT",
                    session_id="ingest",
                ),
                io.BytesIO(sop.encode() * 100),
            )
        store.close()
    except BaseException as exc:
        errors.put(f"worker {worker}: {type(exc).__name__}: {exc}")
        raise


@pytest.mark.slow
def test_concurrent_ingest_of_one_series_never_duplicates(
    postgres_server: PostgresServer, pg_db: str
) -> None:
    open_store("postgresql", pg_db).close()  # the schema race is tested separately
    go, errors = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_ingest_worker, args=(pg_db, w, go, errors)) for w in range(8)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(timeout=300)
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == []
    assert [p.exitcode for p in procs] == [0] * 8
    counts = _sql(
        postgres_server,
        pg_db,
        "SELECT (SELECT count(*) FROM patients), (SELECT count(*) FROM studies),"
        " (SELECT count(*) FROM series), (SELECT count(*) FROM instances)",
    )[0]
    assert counts == (1, 1, 1, 30)
    store = open_store("postgresql", pg_db)
    try:
        series = store.get_series("1.2.9.0")
        assert len(series["Instances"]) == 30
        for record in store.list_instances("1.2.9.0"):
            with store.open_instance(record) as reader:
                assert reader.read() == record["SOPInstanceUID"].encode() * 100
    finally:
        store.close()
    _assert_no_leftover_blobs(postgres_server, pg_db)


# ------------------------------------------------------------- first-use migration
def _first_use(url: str, go: Any, results: Any) -> None:
    try:
        go.wait(120)
        store = open_store("postgresql", url)
        store.set_data(JobRef("s", "j", "j", "stable-series"), f"p{os.getpid()}", "1")
        store.close()
        results.put("ok")
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")
        raise


def test_concurrent_first_use_migration(postgres_server: PostgresServer, pg_db: str) -> None:
    go, results = SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=_first_use, args=(pg_db, go, results)) for _ in range(8)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let the children import, so they open the store together
    go.set()
    for p in procs:
        p.join(timeout=120)
    outcomes = [results.get(timeout=5) for _ in procs]
    assert outcomes == ["ok"] * 8
    assert [p.exitcode for p in procs] == [0] * 8
    from dcm_processor_service.store.sql import SCHEMA_VERSION

    versions = _sql(
        postgres_server, pg_db, "SELECT component, version FROM schema_version ORDER BY 1"
    )
    assert versions == [("core", SCHEMA_VERSION), ("postgresql-blobs", 1)]
    assert _sql(postgres_server, pg_db, "SELECT count(*) FROM session_data")[0][0] == 8
    store = open_store("postgresql", pg_db)
    try:
        assert store.migrate() == SCHEMA_VERSION
    finally:
        store.close()


# ------------------------------------------------------------------ server restart
@pytest.mark.slow
def test_server_restart_mid_run(restartable_server: PostgresServer) -> None:
    server = restartable_server
    url = server.url(server.create_database("restart"))
    store = open_store("postgresql", url)
    owner = JobRef("s", "j", "j", "stable-series")
    stop = threading.Event()
    restarted = threading.Event()
    log: list[tuple[str, int, bool, str, bool]] = []  # (kind, i, ok, error, after restart)
    lock = threading.Lock()

    def content(i: int) -> bytes:
        return hashlib.sha256(str(i).encode()).digest() * (1024 * 64 + i % 1000)  # ~2 MiB

    def work(thread: int) -> None:
        i = thread
        while not stop.is_set():
            kind = "file" if i % 3 == 0 else "data"
            ok, error = True, ""
            try:
                if kind == "file":
                    store.put_file(owner, f"file-{i % 5}", io.BytesIO(content(i)), content_type="x")
                else:
                    store.set_data(owner, f"key-{i}", str(i))
            except StorageError as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            with lock:
                log.append((kind, i, ok, error, restarted.is_set()))
            i += 2

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        server.restart()  # fast shutdown: every connection is terminated
        restarted.set()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=120)
    assert sum(1 for e in log if e[2] and not e[4]) > 5  # work went on before...
    assert sum(1 for e in log if e[2] and e[4]) > 5  # ...and after the restart
    for _kind, _i, ok, error, _after in log:  # only the clear connection error is allowed
        if not ok:
            assert error.startswith("StoreUnavailableError") and f":{server.port}" in error
            assert server.password not in error
    # the last operations (after the restart) all succeeded
    assert all(entry[2] for entry in log[-5:]), log[-5:]
    # nothing half-written: every successful value is there, every file verifies
    for kind, i, ok, _error, _after in log:
        if kind == "data" and ok:
            assert store.get_data(owner, f"key-{i}") == str(i)
    files = store.list_files("s")
    assert files
    written = {content(i) for kind, i, _ok, _e, _a in log if kind == "file"}
    for record in files:
        with store.open_file(record) as reader:
            assert reader.read() in written  # VerifyingReader checked size + sha256
    store.close()
    # a new process-level store works too, and migrate() sweeps nothing that is in use
    again = open_store("postgresql", url)
    assert again.migrate() >= 1
    assert len(again.list_files("s")) == len(files)
    again.close()


# ----------------------------------------------------------------------- fork safety
def test_forked_child_uses_its_own_pool(pg_db: str) -> None:
    store = open_store("postgresql", pg_db)
    owner = JobRef("s", "j", "j", "stable-series")
    store.set_data(owner, "parent", "1")  # the parent's pool is open now
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # child: same store object, must open a new pool
        code = 1
        try:
            store.set_data(owner, "child", "2")
            code = 0 if store.get_data(owner, "parent") == "1" else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent's connections were not touched by the child
    for _ in range(10):
        assert store.get_data(owner, "child") == "2"
    store.close()


# ------------------------------------------------------------------- file streaming
class _Generated(io.RawIOBase):
    """A ``size``-byte stream generated on the fly (never held in memory)."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self.left, 256 * 1024)  # short reads are coalesced
        piece = bytes([self.left % 251]) * n
        buffer[:n] = piece
        self.left -= n
        self.digest.update(piece)
        return n


def test_large_file_streams_with_bounded_memory(pg_db: str) -> None:
    store = open_store("postgresql", pg_db)
    owner = JobRef("s", "j", "j", "stable-series")
    size = 40 * 1024 * 1024 + 123
    source = _Generated(size)
    tracemalloc.start()
    try:
        record = store.put_file(owner, "big", source, content_type="x")  # type: ignore[arg-type]
        _, upload_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        digest = hashlib.sha256()
        for chunk in store.iter_file(record):
            digest.update(chunk)
        _, download_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        store.close()
    assert record.size == size and record.sha256 == source.digest.hexdigest()
    assert digest.hexdigest() == record.sha256
    assert upload_peak < 8 * 1024 * 1024 and download_peak < 8 * 1024 * 1024


def test_open_reader_keeps_its_version_when_the_file_is_replaced(pg_db: str) -> None:
    store = open_store("postgresql", pg_db)
    owner = JobRef("s", "j", "j", "stable-series")
    old = os.urandom(3 * 1024 * 1024 + 5)
    first = store.put_file(owner, "f", io.BytesIO(old), content_type="x")
    with store.open_file(first) as reader:
        head = reader.read(1024 * 1024)
        store.put_file(owner, "f", io.BytesIO(b"new"), content_type="x")  # deletes old blob
        assert head + reader.read() == old  # read from the snapshot, verified
    # opened after the replace, the stale record gives the current version
    with store.open_file(first) as reader:
        assert reader.read() == b"new"
    store.close()


def test_blob_dir_option_keeps_files_in_a_directory(pg_db: str, tmp_path: Path) -> None:
    store = open_store("postgresql", f"{pg_db}?blob_dir={tmp_path / 'blobs'}&pool_max=2")
    owner = JobRef("s", "j", "j", "stable-series")
    record = store.put_file(owner, "f", io.BytesIO(b"on disk"), content_type="x")
    assert (tmp_path / "blobs" / record.blob_key[:2] / record.blob_key).read_bytes() == b"on disk"
    assert b"".join(store.iter_file(record)) == b"on disk"
    store.close()


# ------------------------------------------------------------------- clear errors
def _check_message(exc: BaseException, host: str, port: int, db: str, password: str) -> None:
    text = str(exc)
    assert host in text and str(port) in text and db in text, text
    assert password not in text and password not in repr(exc.__cause__ or ""), text


def test_closed_port_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(StoreUnavailableError, match="refused") as info:
        open_store("postgresql", f"postgresql://dcm:hunter2-secret@127.0.0.1:{port}/dcmdb")
    _check_message(info.value, "127.0.0.1", port, "dcmdb", "hunter2-secret")


def test_wrong_credentials_are_a_clear_error(postgres_server: PostgresServer, pg_db: str) -> None:
    role = sanitize_db_name("dcm_role")
    postgres_server.sql(f"CREATE ROLE {role} LOGIN PASSWORD 'right-password-1'")
    db = _db_of(pg_db)
    postgres_server.sql(f'GRANT ALL ON DATABASE "{db}" TO {role}')
    postgres_server.sql(f"GRANT ALL ON SCHEMA public TO {role}", dbname=db)
    good = postgres_server.url(db, user=role, password="right-password-1")
    open_store("postgresql", good).close()  # the right password works (scram-sha-256)
    bad = postgres_server.url(db, user=role, password="wrong-password-2")
    with pytest.raises(StoreUnavailableError, match="password authentication failed") as info:
        open_store("postgresql", bad)
    _check_message(info.value, "127.0.0.1", postgres_server.port, db, "wrong-password-2")
    assert "check the user name and password" in str(info.value)


def test_missing_database_is_a_clear_error(postgres_server: PostgresServer) -> None:
    url = postgres_server.url("no_such_db")
    with pytest.raises(StoreUnavailableError, match="does not exist") as info:
        open_store("postgresql", url)
    _check_message(
        info.value, "127.0.0.1", postgres_server.port, "no_such_db", postgres_server.password
    )
    assert "createdb" in str(info.value)


def test_name_argument_overrides_the_url_database(
    postgres_server: PostgresServer, pg_db: str
) -> None:
    with pytest.raises(StoreUnavailableError, match="'other_db'"):
        open_store("postgresql", pg_db, "other_db")
    store = open_store("postgresql", postgres_server.url("postgres"), _db_of(pg_db))
    assert store.describe().endswith("/" + _db_of(pg_db))
    store.close()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("", "empty"),
        ("mysql://u:topsecret@h/db", "neither"),
        ("postgresql://u:topsecret@h:notaport/db", "invalid PostgreSQL URL"),
        ("postgresql://u:topsecret@h/db?pool_max=0", "pool_max"),
        ("postgresql://u:topsecret@h/db?pool_timeout=soon", "pool_timeout"),
    ],
)
def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match) as info:
        open_store("postgresql", url)
    assert "topsecret" not in str(info.value)


def test_url_parsing() -> None:
    from dcm_processor_service.store.postgresql import parse_url

    s = parse_url(
        "postgresql://u:p%40ss@db.example:6543/main?sslmode=prefer&blob_dir=/x&pool_max=8"
    )
    assert (s.host, s.port, s.dbname, s.user, s.password) == (
        "db.example",
        "6543",
        "main",
        "u",
        "p@ss",
    )
    assert (s.blob_dir, s.pool_max, s.params["sslmode"]) == ("/x", 8, "prefer")
    assert "blob_dir" not in s.conninfo and "p@ss" not in repr(s)
    assert parse_url("postgres://u@h/main", "override").dbname == "override"
    kw = parse_url("host=h port=7 user=u dbname=d")
    assert (kw.host, kw.port, kw.user, kw.dbname) == ("h", "7", "u", "d")


def test_a_missing_chunk_in_the_middle_fails_every_read_path(
    postgres_server: PostgresServer, pg_db: str, tmp_path: Path
) -> None:
    """A chunk row lost from the middle of a blob (damaged storage): the batched,
    prefetching reader stops at the gap, and a download to a file (the overlapped copy)
    or to memory, and a streamed read, raise IntegrityError naming the file, leaving
    no file behind."""
    from dcm_processor_service import IntegrityError
    from support.stores import job_context

    ctx = job_context(("postgresql", pg_db, _db_of(pg_db)), "s", "j")
    content = os.urandom(7 * 1024 * 1024 + 11)  # 8 chunks of 1 MiB, 4 fetch batches
    with use_context(ctx):
        dps.upload_session_file(content, "volume.nii")
        record = dps.JobSession.current().file_record("volume.nii")
        assert record is not None
        _sql(
            postgres_server,
            pg_db,
            f"DELETE FROM blob_chunks WHERE key = '{record.blob_key}' AND seq = 5",
        )
        target = tmp_path / "out" / "volume.nii"
        target.parent.mkdir()
        with pytest.raises(IntegrityError, match="'volume.nii'.*damaged"):
            dps.download_session_file("volume.nii", target)
        assert list(target.parent.iterdir()) == []
        with pytest.raises(IntegrityError, match="'volume.nii'"):
            dps.download_session_file("volume.nii")
        store = dps.JobSession.current().store
        with pytest.raises(IntegrityError, match="'volume.nii'"), store.open_file(record) as reader:
            while reader.read(300_000):
                pass
    dps.close_stores()


def test_a_reader_already_read_from_copies_the_rest_verified(pg_db: str, tmp_path: Path) -> None:
    """copy_to_file on a reader that was read from: the overlapped whole-blob copy is
    not taken, the rest is pumped through the verifying reader and still verified."""
    from dcm_processor_service.store.blobs import copy_to_file

    store = open_store("postgresql", pg_db)
    owner = JobRef("s", "j", "j", "stable-series")
    content = os.urandom(3 * 1024 * 1024 + 5)
    record = store.put_file(owner, "f", io.BytesIO(content), content_type="x")
    try:
        with store.open_file(record) as reader, open(tmp_path / "rest", "wb") as out:
            head = reader.read(1000)
            assert copy_to_file(reader, out) == len(content) - 1000
        assert head + (tmp_path / "rest").read_bytes() == content
        with store.open_file(record) as reader, open(tmp_path / "whole", "wb") as out:
            assert copy_to_file(reader, out) == len(content)
        assert (tmp_path / "whole").read_bytes() == content
    finally:
        store.close()


def test_relaxed_chunk_commits_never_leak_into_the_record_commit(
    postgres_server: PostgresServer, pg_db: str
) -> None:
    """Chunk transactions skip the WAL-flush wait with ``SET LOCAL`` only: on a database
    whose ``synchronous_commit`` is on, the pooled connection that sent the chunks
    commits the blob and the record durably afterwards (a session-wide ``SET`` would
    leave it off for every later commit on that connection)."""
    db = _db_of(pg_db)
    _sql(postgres_server, pg_db, f'ALTER DATABASE "{db}" SET synchronous_commit = on')
    store = open_store("postgresql", f"{pg_db}?pool_min=1&pool_max=1")
    owner = JobRef("s", "j", "j", "stable-series")
    content = os.urandom(3 * 1024 * 1024 + 1)  # four chunk transactions
    try:
        record = store.put_file(owner, "f", io.BytesIO(content), content_type="x")
        settings = store._run(lambda tx: tx.one("SHOW synchronous_commit"), write=False)  # type: ignore[attr-defined]
        assert settings == {"synchronous_commit": "on"}
        with store.open_file(record) as reader:
            assert reader.read() == content
    finally:
        store.close()
