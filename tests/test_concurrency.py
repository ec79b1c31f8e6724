"""Many processes on one session, and a writer killed mid-upload (every provider)."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import dcm_processor_service as dps
from dcm_processor_service import RuntimeContext, use_context
from support.stores import job_context, requires_shared_server

WRITERS = 8
WRITES = 500


def _writer(ctx: RuntimeContext, worker: int, errors: mp.Queue) -> None:  # runs in a child
    try:
        with use_context(ctx.replace(job_id=f"job-{worker}", job_name=f"writer-{worker}")):
            for i in range(WRITES):
                dps.set_session_data(f"value-{i}", {"worker": worker, "i": i})
    except BaseException as exc:  # report everything the caller would have seen
        errors.put(f"worker {worker}: {type(exc).__name__}: {exc}")
        raise


def _ctx(store_url: tuple[str, str, str]) -> RuntimeContext:
    return job_context(store_url, "busy-session", "reader")


@pytest.mark.slow
def test_parallel_writers_lose_nothing(store_url: tuple[str, str, str]) -> None:
    requires_shared_server(store_url[0])
    ctx = _ctx(store_url)
    with use_context(ctx):
        dps.set_session_data("warm-up", 1)  # schema created before the race starts
    mp_ctx = mp.get_context("spawn")
    errors: mp.Queue = mp_ctx.Queue()
    procs = [mp_ctx.Process(target=_writer, args=(ctx, w, errors)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    reported = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert reported == []
    assert [p.exitcode for p in procs] == [0] * WRITERS
    with use_context(ctx):
        rows = dps.JobSession.current().list_data()
        values = {(r["job_name"], r["name"]): r["value"] for r in rows if r["name"] != "warm-up"}
        assert len(values) == WRITERS * WRITES
        for w in range(WRITERS):
            for i in range(WRITES):
                assert values[(f"writer-{w}", f"value-{i}")] == {"worker": w, "i": i}


UPLOADER = textwrap.dedent(
    """
    import sys, time
    import dcm_processor_service as dps

    class Slow:
        '''A 200 MB source that announces when half of it has been read.'''
        def __init__(self, total):
            self.left = total
            self.announced = False
        def read(self, n=-1):
            n = min(n if n > 0 else 1 << 20, self.left)
            self.left -= n
            if self.left < 100 * 1024 * 1024 and not self.announced:
                self.announced = True
                print("HALF", flush=True)
                time.sleep(30)  # killed here
            return b"z" * n

    dps.upload_session_file(Slow(200 * 1024 * 1024), "big.bin")
    print("DONE", flush=True)
    """
)


def _kill_in_the_middle(
    proc: subprocess.Popen[str],
    ctx: RuntimeContext,
    previous: bytes,
    also: Any = None,
) -> None:
    """Wait until the uploader ``proc`` says it is in the middle of its upload, check
    that readers still see the ``previous`` version (and run ``also()``), SIGKILL it."""
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "HALF", f"uploader did not reach the middle of the upload: {line!r}"
        with use_context(ctx):
            assert dps.get_session_file("big.bin")["size"] == len(previous)  # type: ignore[index]
        if also is not None:
            also()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _assert_previous_version(previous: bytes) -> None:
    """``big.bin`` (in the current context) is still version 1, ``previous``, whole."""
    info = dps.get_session_file("big.bin")
    assert info is not None and info["size"] == len(previous) and info["meta"] == {"version": 1}
    data = dps.download_session_file("big.bin")
    assert data is not None
    assert hashlib.sha256(data.read()).hexdigest() == hashlib.sha256(previous).hexdigest()


@pytest.mark.slow
def test_killed_upload_leaves_previous_version_intact(
    store_url: tuple[str, str, str], tmp_path: Path
) -> None:
    requires_shared_server(store_url[0])
    ctx = _ctx(store_url)
    previous = os.urandom(1024 * 1024)
    with use_context(ctx):
        dps.upload_session_file(previous, "big.bin", meta={"version": 1})
    script = tmp_path / "uploader.py"
    script.write_text(UPLOADER)
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        env=dps.context_environ(ctx),
        stdout=subprocess.PIPE,
        text=True,
    )
    _kill_in_the_middle(proc, ctx, previous)
    with use_context(ctx):
        _assert_previous_version(previous)
        # and a new upload after the crash works
        dps.upload_session_file(b"after", "big.bin")
        assert dps.download_session_file("big.bin").read() == b"after"  # type: ignore[union-attr]


REPLACERS = 4
READERS = 4
DOWNLOADS = 80  # per reader


def _version(writer: int, n: int) -> bytes:
    """Version ``n`` of writer ``writer``: a self-describing header, then 80 KiB or (every
    tenth version) 1.5 MiB of bytes derived from it - one chunk or several."""
    head = f"{writer}:{n}|".encode()
    size = 3 * 512 * 1024 if n % 10 == 0 else 80 * 1024
    return head + hashlib.sha256(head).digest() * (size // 32)


def _check_version(data: bytes) -> str | None:
    head = data[: data.index(b"|") + 1] if b"|" in data[:40] else b""
    if not head:
        return f"no header in {len(data)} bytes"
    writer, n = (int(x) for x in head[:-1].split(b":"))
    return None if data == _version(writer, n) else f"version {writer}:{n} is damaged"


def _replacer(ctx: RuntimeContext, writer: int, stop: Any, errors: mp.Queue) -> None:
    try:
        with use_context(ctx.replace(job_id="writer", job_name="writer")):
            n = 1
            while not stop.is_set():
                dps.upload_session_file(_version(writer, n), "shared.bin")
                n += 1
    except BaseException as exc:
        errors.put(f"writer {writer}: {type(exc).__name__}: {exc}")
        raise


def _downloader(ctx: RuntimeContext, reader: int, results: mp.Queue) -> None:
    failures = []
    with use_context(ctx.replace(job_id=f"reader-{reader}", job_name=f"reader-{reader}")):
        for _ in range(DOWNLOADS):
            try:
                data = dps.download_session_file("shared.bin", job_name="writer")
                problem = _check_version(data.read()) if data is not None else "missing"
            except Exception as exc:  # what a job would have seen
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                failures.append(problem)
    results.put(failures)


@pytest.mark.slow
def test_download_racing_replaces_gets_a_whole_version(store_url: tuple[str, str, str]) -> None:
    requires_shared_server(store_url[0])
    ctx = _ctx(store_url)
    with use_context(ctx.replace(job_id="writer", job_name="writer")):
        dps.upload_session_file(_version(0, 0), "shared.bin")
    spawn = mp.get_context("spawn")
    stop, errors, results = spawn.Event(), spawn.Queue(), spawn.Queue()
    writers = [
        spawn.Process(target=_replacer, args=(ctx, w, stop, errors)) for w in range(REPLACERS)
    ]
    readers = [spawn.Process(target=_downloader, args=(ctx, r, results)) for r in range(READERS)]
    for p in writers + readers:
        p.start()
    try:
        failures = [f for _ in readers for f in results.get(timeout=240)]
    finally:
        stop.set()
        for p in writers + readers:
            p.join(timeout=60)
    assert [p.exitcode for p in writers + readers] == [0] * (REPLACERS + READERS)
    assert errors.empty()
    assert failures == [], f"{len(failures)} of {READERS * DOWNLOADS} downloads failed"


FILE_UPLOADER = textwrap.dedent(
    """
    import sys, time
    import dcm_processor_service as dps
    from dcm_processor_service.store import kernel_copy

    real = kernel_copy.start_write_back
    pieces = []

    def announce(fd, offset, length):
        '''The real write-back of each piece; after the second, pause to be killed.'''
        real(fd, offset, length)
        pieces.append(length)
        if len(pieces) == 2:
            print("HALF", flush=True)
            time.sleep(60)  # killed here

    kernel_copy.start_write_back = announce
    dps.upload_session_file(sys.argv[1], "big.bin")
    print("DONE", flush=True)
    """
)


@pytest.fixture(params=["sqlite", "postgresql+blob_dir"])
def blob_folder_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> tuple[tuple[str, str, str], Path]:
    """((provider, url, name), blob folder) of a fresh store that keeps file bytes in a
    blob folder (the kernel-copy upload path)."""
    from support.stores import make_store

    if request.param == "sqlite":
        store_url = make_store("sqlite", tmp_path, request)
        return store_url, tmp_path / "store.blobs"
    provider, url, name = make_store("postgresql", tmp_path, request)
    return (provider, f"{url}?blob_dir={tmp_path / 'blobs'}", name), tmp_path / "blobs"


def test_killed_kernel_copy_upload_leaves_previous_version_intact(
    blob_folder_store: tuple[tuple[str, str, str], Path], tmp_path: Path
) -> None:
    """A writer killed in the middle of the kernel copy of a regular file (some pieces
    copied, hashed and on their way to disk): readers see the previous version all
    along and after, nothing of the partial file is visible under a blob name, and the
    next writer's store sweeps the dead writer's ``.part`` file."""
    store_url, blob_folder = blob_folder_store
    ctx = _ctx(store_url)
    previous = os.urandom(1024 * 1024 + 7)
    with use_context(ctx):
        dps.upload_session_file(previous, "big.bin", meta={"version": 1})
    blobs_before = sorted(p.name for p in blob_folder.glob("??/*"))
    source = tmp_path / "volume.bin"
    source.write_bytes(os.urandom(40 * 1024 * 1024))  # five 8 MiB pieces
    script = tmp_path / "file_uploader.py"
    script.write_text(FILE_UPLOADER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(source)],
        env=dps.context_environ(ctx),
        stdout=subprocess.PIPE,
        text=True,
    )

    def partial_file_is_hidden() -> None:
        parts = list((blob_folder / "tmp").glob("*.part"))
        assert len(parts) == 1 and parts[0].stat().st_size >= 16 * 1024 * 1024

    _kill_in_the_middle(proc, ctx, previous, partial_file_is_hidden)
    assert sorted(p.name for p in blob_folder.glob("??/*")) == blobs_before
    dps.close_stores()  # the next writer is a new store object: it sweeps on its first write
    with use_context(ctx):
        _assert_previous_version(previous)
        dps.upload_session_file(str(source), "big.bin")
        assert list((blob_folder / "tmp").glob("*.part")) == []
        out = tmp_path / "out.bin"
        dps.download_session_file("big.bin", out)
        assert out.read_bytes() == source.read_bytes()
    dps.close_stores()
