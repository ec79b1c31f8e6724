"""Group commit keeps the ingest's promise: an ingest process killed with SIGKILL at any
moment loses no instance it reported stored, and leaves nothing half-written visible.

Real processes on a real store (SQLite file + blob folder, a PostgreSQL server); the
child reports each stored instance on stdout the moment ``iter_ingest`` yields it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from dcm_processor_service import InvalidInputError, ingest
from dcm_processor_service.store import Store, open_store
from support.dicomdata import write_ct_series
from support.stores import requires_shared_server

N_FILES = 24
BATCH = 4

INGESTER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from dcm_processor_service import iter_ingest
    from dcm_processor_service.store import open_store

    provider, url, name, folder, pause_at = sys.argv[1:6]
    pause_at = int(pause_at)
    files = sorted(str(p) for p in Path(folder).iterdir())

    def source():
        for i, path in enumerate(files):
            if i == pause_at:
                print("PAUSED", flush=True)
                time.sleep(60)  # killed here, with a batch open
            yield path

    store = open_store(provider, url, name)
    for outcome in iter_ingest(source(), store=store, batch_size=int(sys.argv[6])):
        print("STORED", outcome.sop_instance_uid, outcome.path, flush=True)
    print("DONE", flush=True)
    """
)


def _start(store_url: tuple[str, str, str], folder: Path, tmp_path: Path, pause_at: int) -> Any:
    script = tmp_path / "ingester.py"
    script.write_text(INGESTER)
    return subprocess.Popen(
        [sys.executable, str(script), *store_url, str(folder), str(pause_at), str(BATCH)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _check_store(store: Store, reported: dict[str, str]) -> int:
    """Every reported instance is there with the exact bytes of its file, and every
    instance record the store shows reads whole (size and sha256 verified); the number
    of records."""
    for sop_uid, path in reported.items():
        record = store.get_instance(sop_uid)
        with store.open_instance(record) as reader:
            assert reader.read() == Path(path).read_bytes(), f"{sop_uid} differs from {path}"
    seen = 0
    for series in store.list_series():
        for record in store.list_instances(series["_id"]):
            with store.open_instance(record) as reader:
                assert len(reader.read()) == int(record["Size"])
            seen += 1
    return seen


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_ct_series(tmp_path / "series", N_FILES, 16, 16)
    return tmp_path / "series"


def test_killed_with_a_batch_open_loses_nothing_reported(
    store_url: tuple[str, str, str], folder: Path, tmp_path: Path
) -> None:
    """Killed while a third batch is half added (the second may be committing in the
    helper thread, so it is reported or not yet): every reported instance is filed;
    only whole batches are visible, never the open one; the bytes of what was not
    committed are garbage the collection removes; a new ingest completes the series."""
    requires_shared_server(store_url[0])
    pause_at = 2 * BATCH + 2
    proc = _start(store_url, folder, tmp_path, pause_at)
    reported: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("PAUSED"):
                break
            _, sop_uid, path = line.split(maxsplit=2)
            reported[sop_uid] = path.strip()
        else:
            pytest.fail("the ingester ended before it paused")
        _kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(reported) in (BATCH, 2 * BATCH)  # the first batch, and the second if done
    store = open_store(*store_url)
    try:
        visible = _check_store(store, reported)
        assert visible in (BATCH, 2 * BATCH) and visible >= len(reported)
        garbage = store.collect_garbage()
        assert garbage.items == pause_at - visible, garbage.summary()
        report = ingest(folder, store=store)
        assert report.ok and report.n_stored == N_FILES
        assert _check_store(store, {s.sop_instance_uid: s.path for s in report.stored}) == N_FILES
    finally:
        store.close()


@pytest.mark.parametrize("delay_s", [0.0, 0.02, 0.08])
def test_killed_at_any_moment_loses_nothing_reported(
    store_url: tuple[str, str, str], folder: Path, tmp_path: Path, delay_s: float
) -> None:
    """Killed at an arbitrary moment after the first report (while files are written,
    flushed or their batch committed): every reported instance reads back exactly, and
    every visible record is whole."""
    requires_shared_server(store_url[0])
    proc = _start(store_url, folder, tmp_path, N_FILES)  # never pauses
    reported: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("STORED"), first
        time.sleep(delay_s)
        os.kill(proc.pid, signal.SIGKILL)
        rest = proc.stdout.read()  # what it reported before it died
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for line in [first, *rest.splitlines(keepends=True)]:
        # a line the kill cut off (no newline yet) was not a whole report
        if line.startswith("STORED") and line.endswith("\n"):
            _, sop_uid, path = line.split(maxsplit=2)
            reported[sop_uid] = path.strip()
    store = open_store(*store_url)
    try:
        visible = _check_store(store, reported)
        assert len(reported) <= visible <= N_FILES
        assert visible % BATCH == 0  # whole batches only: a batch is one transaction
    finally:
        store.close()


def test_a_failing_source_discards_the_open_batch(store: Store, folder: Path) -> None:
    """An error of the source mid-batch propagates; the committed batch stays, the open
    batch's bytes are deleted at once (nothing left for the garbage collection) - on
    the SQL providers. MongoDB has no group commit: each instance is filed as it comes."""
    files = sorted(folder.iterdir())

    def source() -> Any:
        yield from files[: BATCH + 2]
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        ingest(source(), store=store, batch_size=BATCH)
    kept = BATCH + 2 if store.provider == "mongodb" else BATCH
    assert _check_store(store, {}) == kept
    if store.provider != "mongodb":
        assert store.collect_garbage(dry_run=True).items == 0


def test_batch_size_is_checked(store: Store, folder: Path) -> None:
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(InvalidInputError, match="batch_size"):
            ingest(folder, store=store, batch_size=bad)  # type: ignore[arg-type]
