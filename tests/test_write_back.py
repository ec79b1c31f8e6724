"""The disk write of a durable blob started while it is filled (store/write_back.py,
the kernel-copy and streamed upload paths of a blob folder)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import sys
import threading
from pathlib import Path

import pytest

from dcm_processor_service import StorageError
from dcm_processor_service.store import kernel_copy
from dcm_processor_service.store.blobs import DirectoryBlobStore
from dcm_processor_service.store.kernel_copy import copy_hashed
from dcm_processor_service.store.write_back import _sync_file_range, start_write_back

MiB = 1024 * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_sync_file_range_is_found_on_linux() -> None:
    assert _sync_file_range() is not None


def test_write_back_of_a_file_keeps_its_bytes_and_ignores_failures(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB + 1)
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        start_write_back(fd, 0, len(data))
        start_write_back(fd, len(data), 0)  # an empty range: nothing to do
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    start_write_back(fd, 0, MiB)  # a closed descriptor: only a hint, nothing raised
    read_only = os.open(path, os.O_RDONLY)
    try:
        start_write_back(read_only, 0, -5)  # a bad range: ignored as well
    finally:
        os.close(read_only)


def test_write_back_needs_the_destination_to_be_hashed(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 100)
    with (
        open(tmp_path / "a", "rb") as src,
        open(tmp_path / "b", "wb") as dst,
        pytest.raises(ValueError, match="destination"),
    ):
        copy_hashed(src.fileno(), 0, dst.fileno(), 0, hash_fd=src.fileno(), write_back=True)


@pytest.mark.parametrize("source_kind", ["regular file", "stream"])
def test_durable_blobs_round_trip_on_both_fill_paths(tmp_path: Path, source_kind: str) -> None:
    """Kernel copy (regular file) and streamed copy (anything else) with write-back:
    the bytes stored, their size and sha256 are those of the source."""
    data = os.urandom(19 * MiB + 3)  # several 8 MiB write-back pieces and a short tail
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    store = DirectoryBlobStore(tmp_path / "blobs")
    with open(path, "rb") if source_kind == "regular file" else io.BytesIO(data) as source:
        info = store.write(source)
    assert (info.size, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert store.path(info.key).read_bytes() == data


def test_a_failing_copy_leaves_no_thread_no_part_file_and_no_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy fails after some pieces were copied, hashed and sent to disk (an I/O
    error injected into the write-back of the third piece): the error reaches the
    caller as a StorageError, the helper thread is gone when the call returns, and
    neither a ``.part`` file nor a blob is left."""
    calls: list[int] = []
    real = kernel_copy.start_write_back

    def failing(fd: int, offset: int, length: int) -> None:
        calls.append(length)
        if len(calls) == 3:
            raise OSError(errno.EIO, "injected write-back failure")
        real(fd, offset, length)

    monkeypatch.setattr(kernel_copy, "start_write_back", failing)
    path = tmp_path / "src.bin"
    path.write_bytes(os.urandom(40 * MiB))
    store = DirectoryBlobStore(tmp_path / "blobs")
    threads_before = set(threading.enumerate())
    with open(path, "rb") as source, pytest.raises(StorageError, match="injected"):
        store.write(source)
    assert len(calls) == 3
    assert set(threading.enumerate()) <= threads_before
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "blobs").rglob("*")) == [
        Path("blobs/tmp")
    ]
