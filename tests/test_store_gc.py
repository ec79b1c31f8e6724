"""Garbage collection (``dcm-service db gc``, ``Store.collect_garbage``, ``migrate``).

Real writer processes are killed (kill -9) in the middle of an upload and while they
wait to commit the record of a finished upload; gc then frees exactly what they left
(measured independently: file sizes on disk, chunk bytes in PostgreSQL) and reports it,
``--dry-run`` first removing nothing. Then the other half: gc runs while live writer
processes are in the same two places, and must leave their data alone - they finish
afterwards and their files download intact. SQLite and PostgreSQL (real server); the
MongoDB part runs on mongomock (no MongoDB server can run here), in process.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dcm_processor_service as dps
from dcm_processor_service import RuntimeContext, use_context
from dcm_processor_service.cli import main
from dcm_processor_service.store import JobRef, Store, open_store
from dcm_processor_service.store.sqlite import sqlite_path
from support.stores import job_context, make_store, requires_shared_server

MIB = 1024 * 1024
SIZE = 16 * MIB

WRITER = textwrap.dedent(
    """
    import sys
    import dcm_processor_service as dps

    class Source:
        '''SIZE bytes of b"z"; prints HALF before the read that crosses the middle and
        waits there for a line on stdin.'''
        def __init__(self, total):
            self.total = self.left = total
            self.paused = False
        def read(self, n=-1):
            n = min(n if n > 0 else 1 << 20, self.left)
            if not self.paused and self.left - n < self.total // 2:
                self.paused = True
                print("HALF", flush=True)
                sys.stdin.readline()
            self.left -= n
            return b"z" * n

    dps.upload_session_file(Source(int(sys.argv[2])), sys.argv[1])
    print("DONE", flush=True)
    """
)


def _ctx(store_url: tuple[str, str, str]) -> RuntimeContext:
    return job_context(store_url, "gc-session", "writer")


class Writer:
    """A real writer process uploading SIZE bytes as session file ``name``."""

    def __init__(self, store_url: tuple[str, str, str], tmp_path: Path, name: str) -> None:
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        self.stderr = tmp_path / f"{name}.stderr"
        with open(self.stderr, "wb") as errors:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), name, str(SIZE)],
                env=dps.context_environ(_ctx(store_url)),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=errors,
                text=True,
            )

    def expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != word:
            ended = self.proc.poll()
            raise AssertionError(
                f"writer {self.proc.pid} said {line!r}, not {word!r} (exit status {ended});"
                f" its stderr: {self.stderr.read_text(errors='replace')[-3000:]!r}"
            )

    def resume(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def finish(self) -> None:
        self.expect("DONE")
        assert self.proc.wait(timeout=60) == 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def writers(store_url: tuple[str, str, str], tmp_path: Path) -> Iterator[Any]:
    requires_shared_server(store_url[0])
    started: list[Writer] = []

    def start(name: str) -> Writer:
        started.append(Writer(store_url, tmp_path, name))
        return started[-1]

    yield start
    for writer in started:
        writer.stop()


# ------------------------------------------------------------ what is on disk
def leftovers(store_url: tuple[str, str, str]) -> dict[str, tuple[int, int]]:
    """kind -> (items, bytes) that no record references, measured without the SDK."""
    provider, url, name = store_url
    if provider == "sqlite":
        db = sqlite_path(url, name)
        blobs = db.with_name(db.name + ".blobs")
        parts = [p.stat().st_size for p in (blobs / "tmp").glob("*.part")]
        with contextlib.closing(sqlite3.connect(db)) as conn:
            used = {
                r[0]
                for r in conn.execute(
                    "SELECT blob_key FROM session_files UNION SELECT blob_key FROM instances"
                )
            }
        loose = [
            p.stat().st_size
            for p in blobs.glob("??/*")
            if p.parent.name != "tmp" and p.name not in used
        ]
        return {
            "partial files": (len(parts), sum(parts)),
            "unreferenced blobs": (len(loose), sum(loose)),
        }
    import psycopg

    unref = (
        "NOT EXISTS (SELECT 1 FROM session_files f WHERE f.blob_key = b.key)"
        " AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.blob_key = b.key)"
    )
    with psycopg.connect(url) as conn:
        out = {}
        for kind, where in (
            ("incomplete blobs", "NOT b.complete"),
            ("unreferenced blobs", f"b.complete AND {unref}"),
        ):
            out[kind] = conn.execute(
                "SELECT count(*), coalesce(sum((SELECT coalesce(sum(octet_length(c.data)), 0)"
                f" FROM blob_chunks c WHERE c.key = b.key)), 0) FROM blobs b WHERE {where}"
            ).fetchone()
        return {k: (int(v[0]), int(v[1])) for k, v in out.items()}


@contextlib.contextmanager
def record_lock(store_url: tuple[str, str, str], name: str) -> Iterator[None]:
    """Hold what a writer needs to commit the record of session file ``name``: SQLite's
    write lock, or PostgreSQL's row lock on the file's record."""
    provider, url, db_name = store_url
    if provider == "sqlite":
        conn = sqlite3.connect(sqlite_path(url, db_name), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    import psycopg

    with psycopg.connect(url) as pg:
        pg.execute("SELECT 1 FROM session_files WHERE name = %s FOR UPDATE", (name,))
        yield
        pg.rollback()


def wait_for(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def upload_first_version(store_url: tuple[str, str, str], name: str) -> None:
    with use_context(_ctx(store_url)):
        dps.upload_session_file(b"first version", name)


def downloaded_sha(store_url: tuple[str, str, str], name: str) -> str:
    with use_context(_ctx(store_url)):
        data = dps.download_session_file(name)
    assert data is not None
    return hashlib.sha256(data.read()).hexdigest()  # type: ignore[union-attr]


FULL_SHA = hashlib.sha256(b"z" * SIZE).hexdigest()


def gc_json(
    capsys: pytest.CaptureFixture[str], store_url: tuple[str, str, str], *extra: str
) -> dict:
    provider, url, name = store_url
    capsys.readouterr()
    args = ["--db-provider", provider, "--db-url", url, "--db-name", name]
    code = main(["db", "gc", *args, "--json", *extra])
    assert code == 0
    return json.loads(capsys.readouterr().out)


# ----------------------------------------------------------------- the tests
@pytest.mark.slow
def test_gc_frees_what_killed_writers_left(
    store_url: tuple[str, str, str], writers: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    upload_first_version(store_url, "at-commit.bin")
    # three writers in the middle of their upload, one about to commit (all alive at
    # once: a writer's first write sweeps what dead writers left)
    mid = [writers(f"killed-{i}.bin") for i in range(3)]
    last = writers("at-commit.bin")
    for writer in [*mid, last]:
        writer.expect("HALF")
    with record_lock(store_url, "at-commit.bin"):
        last.resume()
        wait_for(
            lambda: leftovers(store_url)["unreferenced blobs"][0] == 1,
            "the finished blob of the waiting writer",
        )
        for writer in [*mid, last]:
            writer.kill()
    left = leftovers(store_url)
    mid_upload = "partial files" if store_url[0] == "sqlite" else "incomplete blobs"
    assert left["unreferenced blobs"] == (1, SIZE)
    assert left[mid_upload][0] == 3  # each about half written (PostgreSQL: chunks committed)
    assert 3 * 7 * MIB <= left[mid_upload][1] <= 3 * SIZE // 2

    dry = gc_json(capsys, store_url, "--dry-run")
    assert dry["dry_run"] and leftovers(store_url) == left  # nothing removed
    expected = {kind: n for kind, (n, _) in left.items()}
    assert dry["removed"] == expected
    assert dry["freed_bytes"] == {kind: size for kind, (_, size) in left.items()}

    done = gc_json(capsys, store_url)
    assert (done["removed"], done["freed_bytes"]) == (dry["removed"], dry["freed_bytes"])
    assert done["bytes"] == sum(size for _, size in left.values()) and done["in_flight"] == 0
    assert all(n == 0 for n, _ in leftovers(store_url).values())
    # what was committed is intact; a second gc finds nothing
    assert (
        downloaded_sha(store_url, "at-commit.bin") == hashlib.sha256(b"first version").hexdigest()
    )
    assert gc_json(capsys, store_url)["items"] == 0


@pytest.mark.slow
def test_gc_leaves_live_writers_alone(store_url: tuple[str, str, str], writers: Any) -> None:
    upload_first_version(store_url, "at-commit.bin")
    uploading = writers("uploading.bin")
    uploading.expect("HALF")  # alive, half of its bytes written
    committing = writers("at-commit.bin")
    committing.expect("HALF")
    store = open_store(*store_url)
    try:
        with record_lock(store_url, "at-commit.bin"):
            committing.resume()
            wait_for(
                lambda: leftovers(store_url)["unreferenced blobs"][0] == 1,
                "the finished blob of the committing writer",
            )
            before = leftovers(store_url)
            report = store.collect_garbage()
            assert report.items == 0 and report.in_flight == 2, report.summary()
            assert leftovers(store_url) == before  # not a byte removed
            migrated = store.migrate()  # migrate collects too: same rule
            assert migrated >= 1 and leftovers(store_url) == before
        committing.finish()
        uploading.resume()
        uploading.finish()
    finally:
        store.close()
    assert downloaded_sha(store_url, "at-commit.bin") == FULL_SHA
    assert downloaded_sha(store_url, "uploading.bin") == FULL_SHA
    assert all(n == 0 for n, _ in leftovers(store_url).values())


def test_gc_of_an_empty_or_tidy_store_removes_nothing(store: Store) -> None:
    owner = JobRef("s", "j", "j", "stable-series")
    store.put_file(owner, "a", io.BytesIO(b"kept"), content_type="x")
    store.put_file(owner, "a", io.BytesIO(b"kept, version 2"), content_type="x")
    report = store.collect_garbage()
    assert (report.items, report.bytes, report.in_flight) == (0, 0, 0)
    assert "removed nothing" in report.summary()
    with store.open_file(store.get_file(owner, "a")) as reader:  # type: ignore[arg-type]
        assert reader.read() == b"kept, version 2"


def test_mongodb_gc_removes_chunks_of_uploads_silent_for_min_age(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """mongomock (no MongoDB server can run here): GridFS chunks of an upload that never
    wrote its files document - the trace of a killed writer - and the chunks a
    replacement journal names, which must stay."""
    from bson import ObjectId

    store = open_store(*make_store("mongodb", tmp_path, request))
    try:
        owner = JobRef("s", "j", "j", "stable-series")
        store.put_file(owner, "kept", io.BytesIO(b"complete file"), content_type="x")
        db = store.database  # type: ignore[attr-defined]
        # what a writer killed mid-upload leaves: chunks, and no files document
        written, killed = 4 * 1024, ObjectId()
        db["sessionfiles.chunks"].insert_many(
            [{"files_id": killed, "n": n, "data": b"y" * 1024} for n in range(4)]
        )
        # new content of a replacement in progress, named by the file's swap journal
        kept = db["sessionfiles.files"].find_one({})
        journaled = ObjectId()
        db["sessionfiles.chunks"].insert_one({"files_id": journaled, "n": 0, "data": b"new"})
        db["sessionfiles.files"].update_one(
            {"_id": kept["_id"]},
            {"$set": {"metadata.dcmProcessorService.swap": {"chunks": journaled}}},
        )

        young = store.collect_garbage()  # the writer was active less than an hour ago
        assert (young.items, young.in_flight) == (0, 1)
        dry = store.collect_garbage(dry_run=True, min_age_s=0)
        assert dry.removed == {"stray chunks": 1} and dry.bytes == written
        done = store.collect_garbage(min_age_s=0)
        assert done.removed == {"stray chunks": 1} and done.bytes == written
        assert store.collect_garbage(min_age_s=0).items == 0
        assert db["sessionfiles.chunks"].count_documents({"files_id": killed}) == 0
        assert db["sessionfiles.chunks"].count_documents({"files_id": journaled}) == 1
    finally:
        store.close()
