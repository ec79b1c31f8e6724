"""DICOMDIR references never leave the DICOMDIR's folder, whoever reads the DICOMDIR.

A hostile medium: a DICOMDIR whose records reference two real instances of its own
folder plus ``../outside/x`` (a real DICOM file beside the medium), ``../../../../etc/
passwd``, an absolute path, a symbolic link to a file outside, a folder link leading out,
and a file that does not exist. Every entry point (ingest, the sender, the runner's input
scan, the CLI) stores / sends only the two contained instances and reports each other
reference as a per-file error naming the DICOMDIR and the reference.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dcm_processor_service.cli import main
from dcm_processor_service.index.ingest import ingest
from dcm_processor_service.net.sender import DicomSender
from dcm_processor_service.runner.inputs import scan_inputs
from dcm_processor_service.sources.dicomdir import dicomdir_references
from dcm_processor_service.store import Store
from support.dicomdata import files_in, test_file
from support.peers import run_storescp

CT5N = "dicomdirtests/98892001/CT5N"

INSIDE = [["IMG", "A"], ["IMG", "B"]]
OUTSIDE = [
    ["..", "outside", "x"],
    ["..", "..", "..", "..", "..", "..", "etc", "passwd"],
    ["/etc/passwd"],
    ["LINK"],  # a symbolic link to ../outside/x
    ["LINKDIR", "x"],  # a folder link to ../outside
]
MISSING = [["IMG", "NOPE"]]


def write_dicomdir(path: Path, file_ids: list[list[str]]) -> None:
    """A DICOMDIR with one IMAGE record per File ID (offsets are not followed by the
    readers under test)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "HOSTILE"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    records = []
    with warnings.catch_warnings():  # '..' and '/etc/passwd' are not valid CS values
        warnings.simplefilter("ignore")
        for file_id in file_ids:
            record = Dataset()
            record.OffsetOfTheNextDirectoryRecord = 0
            record.RecordInUseFlag = 0xFFFF
            record.OffsetOfReferencedLowerLevelDirectoryEntity = 0
            record.DirectoryRecordType = "IMAGE"
            record.ReferencedFileID = file_id if len(file_id) > 1 else file_id[0]
            record.ReferencedSOPClassUIDInFile = "1.2.840.10008.5.1.4.1.1.2"
            record.ReferencedSOPInstanceUIDInFile = generate_uid()
            record.ReferencedTransferSyntaxUIDInFile = ExplicitVRLittleEndian
            record.InstanceNumber = len(records) + 1
            records.append(record)
        ds.DirectoryRecordSequence = records
        ds.save_as(path, enforce_file_format=True)


@pytest.fixture
def medium(tmp_path: Path) -> dict[str, object]:
    """``tmp/media/DICOMDIR`` with two contained instances, ``tmp/outside/x`` beside it."""
    series = files_in(test_file(CT5N))
    media = tmp_path / "media"
    (media / "IMG").mkdir(parents=True)
    shutil.copy(series[0], media / "IMG" / "A")
    shutil.copy(series[1], media / "IMG" / "B")
    (tmp_path / "outside").mkdir()
    shutil.copy(series[2], tmp_path / "outside" / "x")
    os.symlink(tmp_path / "outside" / "x", media / "LINK")
    os.symlink("../outside", media / "LINKDIR")
    write_dicomdir(media / "DICOMDIR", [*INSIDE, *OUTSIDE, *MISSING])
    uid = {p.name: str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in series[:3]}
    return {
        "dicomdir": media / "DICOMDIR",
        "inside": {media / "IMG" / "A", media / "IMG" / "B"},
        "inside_uids": {uid[series[0].name], uid[series[1].name]},
        "outside_uid": uid[series[2].name],
    }


def assert_refused(failures: dict[str, str], dicomdir: Path) -> None:
    """One failure per outside reference naming the DICOMDIR and the reference, one
    'does not exist' for the missing file, nothing else."""
    refused = [reason for reason in failures.values() if "refused" in reason]
    assert len(refused) == len(OUTSIDE), failures
    for file_id in OUTSIDE:
        (reason,) = [r for r in refused if repr("\\".join(file_id)) in r]
        assert str(dicomdir) in reason and "outside its folder" in reason
    missing = [reason for reason in failures.values() if "does not exist" in reason]
    assert len(missing) == 1 and str(dicomdir) in missing[0]
    assert len(failures) == len(OUTSIDE) + len(MISSING)


def test_references_are_resolved_and_contained_in_one_place(medium: dict) -> None:
    refs = dicomdir_references(medium["dicomdir"])
    assert {r.path for r in refs if r.path is not None} == medium["inside"]
    assert_refused({r.label: str(r.problem) for r in refs if r.problem}, medium["dicomdir"])


def test_ingest_stores_only_the_contained_files(store: Store, medium: dict) -> None:
    report = ingest(medium["dicomdir"], store=store)
    assert {Path(s.path) for s in report.stored} == medium["inside"]
    assert {s.sop_instance_uid for s in report.stored} == medium["inside_uids"]
    assert_refused(dict(report.failed), medium["dicomdir"])
    stored = {
        i["SOPInstanceUID"] for s in store.list_series() for i in store.list_instances(s["_id"])
    }
    assert medium["outside_uid"] not in stored


def test_sender_sends_only_the_contained_files(tmp_path: Path, medium: dict) -> None:
    renamed = medium["dicomdir"].with_name("index.dir")  # any name, via send_dicom_from_dicomdir
    shutil.copy(medium["dicomdir"], renamed)
    with run_storescp(tmp_path / "rx") as scp:
        sender = DicomSender("TESTSCU", "127.0.0.1", scp.port, scp.aet)
        statuses = sender.send_dicom_from_dicomdir(renamed)
        by_name = sender.send(medium["dicomdir"])  # a file named DICOMDIR in a send
        received = set(scp.datasets())
    assert received == medium["inside_uids"]
    assert sum(ds.Status == 0 for ds in statuses) == 2
    assert len(statuses) == 2 + len(OUTSIDE) + len(MISSING)
    failures = {r.source: str(r.error) for r in by_name.results if not r.ok}
    assert_refused(failures, medium["dicomdir"])
    assert sum(r.ok for r in by_name.results) == 2


def test_runner_scan_groups_only_the_contained_files(medium: dict) -> None:
    scan = scan_inputs([medium["dicomdir"]])
    assert {p for g in scan.groups for p in g.files} == {p.resolve() for p in medium["inside"]}
    assert_refused(dict(scan.not_dicom), medium["dicomdir"])


def test_cli_ingest_reports_the_references_outside(
    tmp_path: Path, medium: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code = main(["ingest", str(medium["dicomdir"]), "--store", str(tmp_path / "store"), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 1 and result["stored"] == 2
    assert_refused({f["path"]: f["reason"] for f in result["failed"]}, medium["dicomdir"])
