"""The SQLite store on disk: owner-only modes (it holds patient data), and a clear
``StorageError`` - not a raw ``PermissionError`` - when its blob folder cannot be
written or a blob cannot be read (checked in a child process that cannot ignore file
modes, also when the suite runs as root)."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from dcm_processor_service.index.ingest import ingest
from dcm_processor_service.store import JobRef, open_store
from dcm_processor_service.store.sqlite import sqlite_path
from support.dicomdata import test_file
from support.unprivileged import run_unprivileged

OWNER = JobRef("s", "j", "j", "stable-series")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def store_files(url: str | Path) -> tuple[Path, Path]:
    db = sqlite_path(str(url), "t")
    return db, db.with_name(db.name + ".blobs")


def test_store_files_are_owner_only(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # what most systems use: group/other could read
    try:
        folder = f"{tmp_path / 'store'}/"  # a folder the store creates
        with open_store("sqlite", folder, "t") as store:
            store.put_file(OWNER, "mask.nii.gz", io.BytesIO(b"patient data"), content_type="x")
            ingest(test_file("CT_small.dcm"), store=store)
            db, blobs = store_files(folder)
            assert db.parent == tmp_path / "store" and mode(db.parent) == 0o700
            for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
                assert mode(path) == 0o600, path
            folders = [blobs, blobs / "tmp", *(p for p in blobs.glob("??") if p.is_dir())]
            assert len(folders) >= 3 and {mode(f) for f in folders} == {0o700}
            files = [p for p in blobs.glob("??/*") if p.is_file()]
            assert len(files) == 2 and {mode(f) for f in files} == {0o600}
    finally:
        os.umask(old_umask)


def test_an_older_store_open_to_others_is_tightened(tmp_path: Path) -> None:
    with open_store("sqlite", str(tmp_path), "t") as store:
        store.put_file(OWNER, "f", io.BytesIO(b"x"), content_type="x")
    db, blobs = store_files(tmp_path)
    os.chmod(db, 0o644)
    os.chmod(blobs, 0o755)
    os.chmod(blobs / "tmp", 0o755)
    with open_store("sqlite", str(tmp_path), "t") as store:
        assert store.get_file(OWNER, "f") is not None
    assert (mode(db), mode(blobs), mode(blobs / "tmp")) == (0o600, 0o700, 0o700)


def test_unwritable_blob_folder_and_unreadable_blob_are_storage_errors(tmp_path: Path) -> None:
    with open_store("sqlite", str(tmp_path), "t") as store:
        record = store.put_file(OWNER, "old", io.BytesIO(b"stored before"), content_type="x")
    _db, blobs = store_files(tmp_path)
    os.chmod(blobs / "tmp", 0o500)  # read-only: no new file can be created there
    os.chmod(blobs / record.blob_key[:2] / record.blob_key, 0)
    try:
        result = run_unprivileged(
            """
            import io, json
            from dcm_processor_service import StorageError
            from dcm_processor_service.store import JobRef, open_store
            owner = JobRef("s", "j", "j", "stable-series")
            out = {}
            with open_store("sqlite", sys.argv[1], "t") as store:
                for what, action in (
                    ("write", lambda: store.put_file(owner, "new", io.BytesIO(b"x"),
                                                     content_type="x")),
                    ("read", lambda: store.open_file(store.get_file(owner, "old")).read()),
                ):
                    try:
                        action()
                        out[what] = None
                    except Exception as exc:
                        out[what] = [type(exc).__name__, isinstance(exc, StorageError), str(exc)]
                out["files"] = [f.name for f in store.list_files("s")]
            print(json.dumps(out))
            """,
            str(tmp_path),
        )
    finally:
        os.chmod(blobs / "tmp", 0o700)
    name, is_storage_error, message = result["write"]
    assert (name, is_storage_error) == ("StorageError", True)
    assert f"in blob folder {blobs}" in message and "Permission denied" in message
    assert "cannot write there" in message
    name, is_storage_error, message = result["read"]
    assert (name, is_storage_error) == ("StorageError", True)
    assert record.blob_key in message and "Permission denied" in message
    assert result["files"] == ["old"]  # nothing half-written
