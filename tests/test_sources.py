"""One reader of DICOM input (``dcm_processor_service.sources``), one policy in every
entry point: ingest, the sender, the runner's input scan, the CLI and NIfTI conversion.

* hidden entries found in a folder (``.name``, files or folders) are skipped and
  reported as skipped - never read, never a failure (the sender used to send a stray
  dotfile and report a failed instance; the runner skipped it silently);
* a FIFO in a folder is a failure, never opened (the sender used to block on it);
* a folder is walked the same way everywhere: its files, then its subfolders, by name;
* a DICOMDIR the caller names is followed whatever its file name; one met in a folder
  is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pydicom
import pytest

import dcm_processor_service as dps
from dcm_processor_service import DicomSender, InvalidInputError
from dcm_processor_service.cli import main
from dcm_processor_service.runner.inputs import scan_inputs
from dcm_processor_service.sources import HIDDEN, collect_files
from dcm_processor_service.store import Store
from support.dicomdata import files_in, test_file, write_ct_series
from support.peers import run_storescp

CT5N = "dicomdirtests/98892001/CT5N"
DICOMDIR = "dicomdirtests/DICOMDIR"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A series in ``in/ct`` plus ``in/notes.txt``, a hidden file and a hidden folder
    holding a DICOM file (which must not be read either)."""
    root = tmp_path / "in"
    (root / "ct").mkdir(parents=True)
    for path in files_in(test_file(CT5N)):
        shutil.copy(path, root / "ct" / path.name)
    (root / "notes.txt").write_text("not DICOM\n")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 64)
    (root / ".trash").mkdir()
    shutil.copy(files_in(test_file(CT5N))[0], root / ".trash" / "old.dcm")
    return root


def _hidden(root: Path) -> set[str]:
    return {str(root / ".DS_Store"), str(root / ".trash")}


def test_ingest_reports_hidden_entries_as_skipped(store: Store, folder: Path) -> None:
    report = dps.ingest(folder, store=store)
    assert {(p, r) for p, r in report.skipped} == {(p, HIDDEN) for p in _hidden(folder)}
    assert [Path(p).name for p, _ in report.failed] == ["notes.txt"]
    assert report.n_stored == 5


def test_runner_scan_reports_hidden_entries_as_skipped(folder: Path) -> None:
    scan = scan_inputs([folder])
    assert {(p, r) for p, r in scan.skipped} == {(p, HIDDEN) for p in _hidden(folder)}
    assert [Path(p).name for p, _ in scan.not_dicom] == ["notes.txt"]
    assert scan.dicom_files == 5


def test_sender_skips_hidden_entries_instead_of_failing_them(
    store: Store, folder: Path, tmp_path: Path
) -> None:
    with run_storescp(tmp_path / "rx") as scp:
        report = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet).send(folder)
    assert set(report.skipped) == _hidden(folder)
    assert [Path(r.source).name for r in report.results if not r.ok] == ["notes.txt"]
    assert sum(r.ok for r in report.results) == 5
    # the same walk as the ingest: a folder's files first, then its subfolders, by name
    ingested = [Path(o.path) for o in dps.iter_ingest(folder, store=store)]
    sent = [Path(r.source) for r in report.results]
    assert sent == [p for p in ingested if p.name not in (".DS_Store", ".trash")]
    assert sent[0].name == "notes.txt"


def test_cli_ingest_lists_hidden_entries_as_skipped(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (folder / "notes.txt").unlink()  # only good files and hidden entries: exit 0
    capsys.readouterr()
    code = main(["ingest", str(folder), "--store", str(tmp_path / "store"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["stored"] == 5 and result["failed"] == []
    assert {(s["path"], s["reason"]) for s in result["skipped"]} == {
        (p, HIDDEN) for p in _hidden(folder)
    }


def test_nifti_of_a_folder_ignores_hidden_entries(tmp_path: Path) -> None:
    series = tmp_path / "series"
    write_ct_series(series, 4, 16, 16, series_description="VISIBLE")
    # a bigger series in a hidden folder would win as dcm2niix's "main" volume
    write_ct_series(series / ".old", 12, 32, 32, series_description="HIDDEN", seed=1)
    _, json_path, _ = dps.series_files_to_nifti(series, tmp_path / "ct.nii")
    sidecar = json.loads(Path(json_path).read_text())
    assert sidecar["SeriesDescription"] == "VISIBLE" and sidecar["Slices"] == 4


def test_a_folder_of_hidden_entries_only_is_empty(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / ".hidden.dcm").write_bytes(b"x")
    with pytest.raises(InvalidInputError, match=r"is empty \(1 hidden entry skipped\)"):
        collect_files([tmp_path / "only"])


def test_a_hidden_file_named_by_the_caller_is_read(store: Store, tmp_path: Path) -> None:
    named = tmp_path / ".scan.dcm"
    shutil.copy(files_in(test_file(CT5N))[0], named)
    report = dps.ingest(named, store=store)
    assert report.n_stored == 1 and not report.skipped


@pytest.mark.timeout(60)
def test_sender_reports_a_fifo_in_a_folder_without_opening_it(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(files_in(test_file(CT5N))[0], root / "a.dcm")
    os.mkfifo(root / "pipe")  # opening it for reading would block until a writer comes
    with run_storescp(tmp_path / "rx") as scp:
        report = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet).send(root)
    failed = {Path(r.source).name: r.error for r in report.results if not r.ok}
    assert list(failed) == ["pipe"] and "a FIFO, not a file" in str(failed["pipe"])
    assert sum(r.ok for r in report.results) == 1


def test_a_named_dicomdir_is_followed_whatever_its_name(tmp_path: Path) -> None:
    medium = tmp_path / "medium"
    shutil.copytree(test_file("dicomdirtests"), medium)
    renamed = medium / "index.dir"
    (medium / "DICOMDIR").rename(renamed)
    referenced = {
        str(r.ReferencedSOPInstanceUIDInFile)
        for r in pydicom.dcmread(renamed).DirectoryRecordSequence
        if "ReferencedFileID" in r
    }
    with run_storescp(tmp_path / "rx") as scp:
        report = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet).send(renamed)
        received = set(scp.datasets())
    assert report.ok and received == referenced


def test_a_dicomdir_met_in_a_folder_is_skipped_by_the_runner(tmp_path: Path) -> None:
    medium = tmp_path / "medium"
    shutil.copytree(test_file("dicomdirtests"), medium)
    scan = scan_inputs([medium])
    # recognised by content (DICOMDIR-bigEnd, DICOMDIR-empty.dcm, ... too), not by name
    dicomdirs = {p for p, r in scan.skipped if r.startswith("DICOMDIR")}
    assert str(medium / "DICOMDIR") in dicomdirs and len(dicomdirs) == len(scan.skipped) > 2
    assert scan.dicom_files + len(scan.not_dicom) + len(dicomdirs) == len(files_in(medium))


def test_the_fast_scans_agree_with_pydicom_on_every_bundled_file() -> None:
    """The sender's identity scan and the leading-values scan (NIfTI's slice order)
    read the first bytes themselves (pydicom's reader is several times slower there):
    whatever they return must be what pydicom reads; when unsure they return None."""
    from pydicom.multival import MultiValue

    from dcm_processor_service.sources import read_identity, read_leading_values
    from support.dicomdata import TEST_FILES

    keywords = [
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "InstanceNumber",
        "ImageOrientationPatient",
        "ImagePositionPatient",
    ]
    compared = 0
    for path in files_in(TEST_FILES):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue  # not DICOM, or not readable by pydicom either
        identity = read_identity(path)
        if identity is not None:  # the dataset's UIDs, else the File Meta's
            meta = ds.file_meta
            assert identity.transfer_syntax == str(meta.TransferSyntaxUID), path
            assert identity.sop_instance_uid == str(
                ds.get("SOPInstanceUID") or meta.MediaStorageSOPInstanceUID
            ), path
            assert identity.sop_class_uid == str(
                ds.get("SOPClassUID") or meta.MediaStorageSOPClassUID
            ), path
        values = read_leading_values(path, keywords)
        if values is None:
            continue
        compared += 1
        for keyword in keywords:
            expected = ds.get(keyword)
            if expected in (None, ""):
                assert keyword not in values or values[keyword] in ("", []), (path, keyword)
            elif isinstance(expected, MultiValue):
                assert [float(v) for v in values[keyword]] == [float(v) for v in expected]
            elif keyword == "InstanceNumber":
                assert int(values[keyword]) == int(expected), path  # type: ignore[arg-type]
            else:
                assert values[keyword] == str(expected), (path, keyword)
    assert compared > 50  # most bundled files take the fast path
