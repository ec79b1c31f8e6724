"""Session data and files through the compatible API, on every provider."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import pytest

import dcm_processor_service as dps
from dcm_processor_service import InvalidInputError, MissingContextError, use_context


@pytest.fixture
def job(store_url: tuple[str, str, str]):
    """Run the test body as job 'alpha' of session 'sess' (stable-series)."""
    provider, url, name = store_url
    with use_context(
        db_provider=provider,
        db_url=url,
        db_name=name,
        session_id="sess",
        job_id="job-a",
        job_name="alpha",
        job_event="stable-series",
        job_service_name="svc",
        peer_id="pacs",
    ) as ctx:
        yield ctx


def as_job(job_id: str, job_name: str, event: str = "stable-series"):
    return use_context(
        dps.current_context().replace(job_id=job_id, job_name=job_name, job_event=event)
    )


@pytest.mark.parametrize(
    "value", [1, 2.5, "text", None, True, [1, "a", None], {"nested": {"list": [1.5]}}]
)
def test_data_roundtrip(job, value) -> None:
    dps.set_session_data("v", value)
    assert dps.has_session_data("v")
    assert dps.get_session_data("v", default="absent") == value


def test_data_default_replace_remove(job) -> None:
    assert dps.get_session_data("missing", default=42) == 42
    assert dps.has_session_data("missing") is False
    dps.set_session_data("k", 1)
    dps.set_session_data("k", {"v": 2})
    assert dps.get_session_data("k") == {"v": 2}
    assert dps.remove_session_data("k") is True
    assert dps.remove_session_data("k") is False
    assert dps.get_session_data("k") is None


def test_other_job_of_same_event_reads_by_job_name(job) -> None:
    dps.set_session_data("count", 7)
    with as_job("job-b", "beta"):
        assert dps.get_session_data("count") is None
        assert dps.get_session_data("count", job_name="alpha") == 7
        assert dps.has_session_data("count", job_name="alpha")
        dps.set_session_data("count", 8)
    with as_job("job-c", "gamma", "stable-study"):
        # another event does not see the series job's values
        assert dps.get_session_data("count", job_name="alpha", default="none") == "none"
    assert dps.get_session_data("count") == 7
    assert dps.get_session_data("count", job_name="beta") == 8


def _nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (object(), "not JSON-serialisable"),
        (b"bytes", "not JSON-serialisable"),
        (math.nan, "not JSON"),
        ({1j: 2}, "not JSON"),
        ({"s": {1, 2}}, "not JSON"),
        (_nested(100_000), "nested too deeply"),
    ],
    ids=["object", "bytes", "nan", "complex-key", "set", "100k-deep"],
)
def test_non_json_values_are_rejected(job, value, match) -> None:
    with pytest.raises(InvalidInputError, match=match):
        dps.set_session_data("bad", value)
    assert not dps.has_session_data("bad")


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("../etc/passwd", "path separator"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("..", "'\\.\\.'"),
        ("..hidden", "'\\.\\.'"),
        ("nul\x00byte", "control"),
        ("report\u202efdp.exe", "U\\+202E RIGHT-TO-LEFT OVERRIDE at position 6"),
        ("\u202dreport.pdf", "U\\+202D LEFT-TO-RIGHT OVERRIDE"),
        ("a\u2067b", "U\\+2067 RIGHT-TO-LEFT ISOLATE"),
        ("zero\u200bwidth", "U\\+200B ZERO WIDTH SPACE"),
        ("\ufeffbom", "U\\+FEFF"),
        ("c1\x85control", "U\\+0085"),
        ("line\u2028sep", "U\\+2028 LINE SEPARATOR"),
        ("", "empty"),
        ("x" * 256, "255"),
        (42, "must be a str"),
    ],
)
def test_bad_names_are_rejected(job, name, match) -> None:
    with pytest.raises(InvalidInputError, match=match):
        dps.set_session_data(name, 1)
    with pytest.raises(InvalidInputError, match=match):
        dps.upload_session_file(b"x", name)
    with pytest.raises(InvalidInputError, match=match):
        dps.get_session_data("ok", job_name=name)


def test_names_in_any_script_are_accepted(job) -> None:
    for name in ("résumé.pdf", "Ärztebrief", "報告書.txt", "تقرير", "mask 1 (final).nii.gz"):
        dps.set_session_data(name, name)
        assert dps.get_session_data(name) == name


@pytest.mark.parametrize("blank", ["   ", "\t", " \n "])
def test_blank_ids_are_rejected(store_url, blank: str) -> None:
    with dps.open_store(*store_url) as store:
        with pytest.raises(InvalidInputError, match="session_id .* blank"):
            store.ensure_session(blank)
        assert store.list_sessions() == []
    provider, url, name = store_url
    for field, variable in (("session_id", "SESSION-ID"), ("job_id", "JOB-ID")):
        ids = {"session_id": "s", "job_id": "j", field: blank}
        with (
            use_context(db_provider=provider, db_url=url, db_name=name, **ids),
            pytest.raises(InvalidInputError, match=f"DCM-PROCESSOR-SERVICE-{variable}.*blank"),
        ):
            dps.set_session_data("k", 1)


def test_missing_context_names_the_variable(store_url) -> None:
    provider, url, name = store_url
    with (
        use_context(db_provider=provider, db_url=url, db_name=name, job_id="j"),
        pytest.raises(MissingContextError, match="DCM-PROCESSOR-SERVICE-SESSION-ID"),
    ):
        dps.set_session_data("k", 1)
    with (
        use_context(session_id="s", job_id="j"),
        pytest.raises(MissingContextError, match="DCM-PROCESSOR-SERVICE-DB-PROVIDER"),
    ):
        dps.get_session_data("k")


def test_upload_sources_and_download_targets(job, tmp_path: Path) -> None:
    src = tmp_path / "report.pdf"
    src.write_bytes(b"%PDF-1.4 fake")
    id_path = dps.upload_session_file(str(src), "report.pdf", meta={"pages": 1})
    id_bytes = dps.upload_session_file(b"raw bytes", "raw.bin")
    id_obj = dps.upload_session_file(io.BytesIO(b"stream"), "stream", ext="json")
    assert len({id_path, id_bytes, id_obj}) == 3
    info = dps.get_session_file("report.pdf")
    assert info is not None
    assert (info["_id"], info["size"], info["contentType"], info["meta"]) == (
        id_path,
        13,
        "application/pdf",
        {"pages": 1},
    )
    assert info["sha256"] == __import__("hashlib").sha256(b"%PDF-1.4 fake").hexdigest()
    assert dps.get_session_file("stream")["contentType"] == "application/json"  # type: ignore[index]
    assert dps.get_session_file("raw.bin", select=["size"]) == {"size": 9}
    out = tmp_path / "out" / "copy.pdf"
    out.parent.mkdir()
    assert dps.download_session_file("report.pdf", str(out)) == str(out)
    assert out.read_bytes() == b"%PDF-1.4 fake"
    assert list(out.parent.iterdir()) == [out]  # no temp file left behind
    buffer = dps.download_session_file("stream")
    assert isinstance(buffer, io.BytesIO) and buffer.read() == b"stream"
    assert dps.download_session_file("absent") is None
    assert dps.get_session_file("absent") is None


def test_files_of_other_jobs_and_removal(job) -> None:
    dps.upload_session_file(b"v1", "mask")
    with as_job("job-b", "beta"):
        assert dps.has_session_file("mask") is False
        assert dps.download_session_file("mask", job_name="alpha").read() == b"v1"  # type: ignore[union-attr]
        assert dps.remove_session_file("mask") is False  # cannot remove another job's file
    dps.upload_session_file(b"v2", "mask")
    assert dps.download_session_file("mask").read() == b"v2"  # type: ignore[union-attr]
    assert dps.remove_session_file("mask") is True
    assert dps.has_session_file("mask") is False


@pytest.mark.parametrize(
    ("source", "match"),
    [("/definitely/not/here.bin", "does not exist"), (12345, "expected a path, bytes")],
)
def test_bad_upload_sources(job, source, match) -> None:
    with pytest.raises(InvalidInputError, match=match):
        dps.upload_session_file(source, "x")
    assert not dps.has_session_file("x")


def test_upload_directory_and_bad_meta(job, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="is a directory"):
        dps.upload_session_file(tmp_path, "x")
    with pytest.raises(InvalidInputError, match="meta"):
        dps.upload_session_file(b"x", "x", meta={"bad": object()})
    with pytest.raises(InvalidInputError, match="must be a dict"):
        dps.upload_session_file(b"x", "x", meta=["list"])  # type: ignore[arg-type]


def test_corrupted_file_fails_download(job) -> None:
    from support.stores import corrupt_blob

    dps.upload_session_file(b"a" * 1000, "f")
    session = dps.JobSession.current()
    record = session.file_record("f")
    assert record is not None
    corrupt_blob(session.store, record.blob_key, b"b" * 1000)
    with pytest.raises(dps.IntegrityError, match="'f'"):
        dps.download_session_file("f")


def test_large_file_round_trip_between_files(job, tmp_path: Path) -> None:
    """Path in, file out: the kernel-copy path of a blob folder (pieces of 8 MiB hashed
    on the side) and the streamed path of the other providers give the same bytes and
    the sha256 of the source."""
    import hashlib

    content = os.urandom(17 * 1024 * 1024 + 123)  # crosses two 8 MiB pieces
    tmp_path = tmp_path / "files"
    tmp_path.mkdir()
    src = tmp_path / "volume.nii"
    src.write_bytes(content)
    dps.upload_session_file(str(src), "volume.nii")
    info = dps.get_session_file("volume.nii")
    assert info is not None
    assert (info["size"], info["sha256"]) == (len(content), hashlib.sha256(content).hexdigest())
    out = tmp_path / "out.nii"
    out.write_bytes(b"older content that is replaced")
    assert dps.download_session_file("volume.nii", out) == str(out)
    assert out.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii", "volume.nii"]


def test_upload_from_an_open_file_starts_at_its_position(job, tmp_path: Path) -> None:
    src = tmp_path / "data.bin"
    src.write_bytes(b"HEADER" + b"payload" * 1000)
    with open(src, "rb") as handle:
        assert handle.read(6) == b"HEADER"
        dps.upload_session_file(handle, "payload")
        assert handle.read() == b""  # consumed to its end, as a streamed copy leaves it
    assert dps.download_session_file("payload").read() == b"payload" * 1000  # type: ignore[union-attr]


def test_corrupted_file_fails_download_to_a_file(job, tmp_path: Path) -> None:
    """A damaged blob downloaded to a file raises IntegrityError and leaves no target
    and no temporary file behind (the kernel copy is verified before the rename)."""
    from support.stores import corrupt_blob

    tmp_path = tmp_path / "files"
    tmp_path.mkdir()
    dps.upload_session_file(b"a" * 100_000, "f")
    session = dps.JobSession.current()
    record = session.file_record("f")
    assert record is not None
    for damaged in (b"b" * 100_000, b"a" * 99_999, b"a" * 100_001):  # other bytes, shorter, longer
        corrupt_blob(session.store, record.blob_key, damaged)
        with pytest.raises(dps.IntegrityError, match="'f'"):
            dps.download_session_file("f", tmp_path / "f.bin")
        assert list(tmp_path.iterdir()) == []


def test_corrupted_large_file_fails_download_to_a_file(job, tmp_path: Path) -> None:
    """A damaged file of several pieces (8 MiB kernel-copy pieces of a blob folder,
    2 MiB fetch batches of PostgreSQL chunks, GridFS chunks) downloaded to a file
    raises IntegrityError naming it - one bad byte in the middle, a shorter or a
    longer copy - and leaves no target and no temporary file behind."""
    from support.stores import corrupt_blob

    tmp_path = tmp_path / "files"
    tmp_path.mkdir()
    content = os.urandom(9 * 1024 * 1024 + 5)
    dps.upload_session_file(content, "scan.nii")
    session = dps.JobSession.current()
    record = session.file_record("scan.nii")
    assert record is not None
    middle = len(content) // 2
    flipped = content[:middle] + bytes([content[middle] ^ 1]) + content[middle + 1 :]
    for damaged in (flipped, content[:-1], content + b"x"):
        corrupt_blob(session.store, record.blob_key, damaged)
        with pytest.raises(dps.IntegrityError, match="'scan.nii'"):
            dps.download_session_file("scan.nii", tmp_path / "scan.nii")
        assert list(tmp_path.iterdir()) == []
    corrupt_blob(session.store, record.blob_key, content)  # repaired: reads again
    assert dps.download_session_file("scan.nii", tmp_path / "scan.nii") == str(
        tmp_path / "scan.nii"
    )
    assert (tmp_path / "scan.nii").read_bytes() == content
