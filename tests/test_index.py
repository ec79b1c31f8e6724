"""DICOM index: ingest (folders, files, DICOMDIR, datasets, bad input), the records it
files, series access in anatomical order, listing helpers, and session clean-up.

Real files from pydicom's bundled test data; every test runs on each storage provider
(the ``store`` fixture).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pydicom.valuerep import PersonName

from dcm_processor_service import (
    DicomInputError,
    InvalidInputError,
    NotFoundError,
    use_context,
)
from dcm_processor_service.index import series as series_api
from dcm_processor_service.index.ingest import (
    IngestFailure,
    IngestSkip,
    StoredInstance,
    ingest,
    iter_ingest,
)
from dcm_processor_service.index.metadata import (
    INSTANCE_KEYWORDS,
    PATIENT_KEYWORDS,
    SERIES_KEYWORDS,
    STUDY_KEYWORDS,
    patient_key,
)
from dcm_processor_service.index.order import order_slices
from dcm_processor_service.index.series import get_series_dicom
from dcm_processor_service.store import Store
from support.dicomdata import (
    DICOMDIR_TESTS,
    files_in,
    platform_patient_uid,
    sha256_file,
    test_file,
    write_ct_series,
)
from support.stores import requires_shared_server
from support.unprivileged import run_unprivileged

CT5N = "dicomdirtests/98892001/CT5N"
MR2 = "dicomdirtests/98892003/MR2"
MR700 = "dicomdirtests/98892003/MR700"
CT2_GAP = "dicomdirtests/77654033/CT2"


# ----------------------------------------------------------------------- helpers
def expected_json(value: Any) -> Any:
    """What a tag value should look like in the index (independent of the code)."""
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, MultiValue | list):
        return [expected_json(v) for v in value]
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value) if value is not None else None


def read_headers(folder: Path) -> list[Dataset]:
    return [dcmread(p, stop_before_pixels=True) for p in files_in(folder)]


def copy_series(relative: str, dst: Path) -> Path:
    shutil.copytree(test_file(relative), dst)
    return dst


def reasons(report_failed: list[IngestFailure]) -> dict[str, str]:
    return {Path(path).name: reason for path, reason in report_failed}


# ----------------------------------------------------------------------- records
def test_ingest_folder_files_records_value_by_value(store: Store) -> None:
    folder = test_file(CT5N)
    report = ingest(folder, store=store, peer_id="PACS-1", session_id="session-1")

    assert report.ok and report.n_stored == 5 and report.n_failed == report.n_skipped == 0
    assert len(report.series_ids) == 1
    assert report.bytes_stored == sum(p.stat().st_size for p in files_in(folder))
    headers = read_headers(folder)
    first = headers[0]

    series = store.get_series(report.series_ids[0])
    assert series["_id"] == report.series_ids[0]
    assert series["SeriesInstanceUID"] == first.SeriesInstanceUID
    assert series["StudyInstanceUID"] == first.StudyInstanceUID
    assert series["PatientUID"] == platform_patient_uid(first.PatientID)
    assert series["PeerUID"] == "PACS-1"
    assert sorted(series["Instances"]) == sorted(s.instance_id for s in report.stored)
    meta = series["Metadata"]
    checked = 0
    for keyword in (*PATIENT_KEYWORDS, *STUDY_KEYWORDS, *SERIES_KEYWORDS):
        if keyword == "PatientAge":
            continue  # whole years, checked below
        if keyword in first and (keyword == "PatientName" or not first[keyword].is_empty):
            assert meta[keyword] == expected_json(first[keyword].value), keyword
            checked += 1
        else:  # an empty tag is left out, as the platform does
            assert keyword not in meta, keyword
    assert checked >= 15
    assert meta["PatientName"] == "Doe^Peter" and meta["SeriesNumber"] == 5
    assert meta["Modality"] == "CT" and meta["PatientAge"] == 43  # "043Y"
    json.dumps(series, allow_nan=False, default=str)  # JSON-serialisable

    study = store.get_study(first.StudyInstanceUID)
    assert study["Series"] == [series["_id"]]
    assert study["PatientUID"] == series["PatientUID"] and study["PeerUID"] == "PACS-1"
    assert study["Metadata"]["ModalitiesInStudy"] == ["CT"]
    assert study["Metadata"]["StudyDate"] == first.StudyDate
    assert "SeriesDescription" not in study["Metadata"]
    patient = store.get_patient(series["PatientUID"])
    assert patient["Studies"] == [study["_id"]]
    assert patient["Metadata"]["PatientID"] == "98890234"
    assert patient["Metadata"]["ModalitiesInPatient"] == ["CT"]
    assert "StudyDate" not in patient["Metadata"]

    by_sop = {h.SOPInstanceUID: (h, p) for h, p in zip(headers, files_in(folder), strict=True)}
    for stored in report.stored:
        record = store.get_instance(stored.instance_id)
        header, path = by_sop[record["SOPInstanceUID"]]
        assert record["SessionUID"] == "session-1" and record["PeerUID"] == "PACS-1"
        assert record["SOPClassUID"] == header.SOPClassUID
        assert record["TransferSyntaxUID"] == header.file_meta.TransferSyntaxUID
        assert record["Size"] == path.stat().st_size
        assert record["SHA256"] == sha256_file(path)
        for keyword in INSTANCE_KEYWORDS:
            if keyword in header:
                assert record["Metadata"][keyword] == expected_json(header[keyword].value), keyword
        assert record["Metadata"]["ImagePositionPatient"] == [
            float(v) for v in header.ImagePositionPatient
        ]
        assert record["Metadata"]["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]


@pytest.mark.parametrize(
    "dicomdir", ["DICOMDIR", "DICOMDIR-implicit", "DICOMDIR-bigEnd", "DICOMDIR-reordered"]
)
def test_ingest_dicomdir_follows_referenced_files(store: Store, dicomdir: str) -> None:
    report = ingest(DICOMDIR_TESTS / dicomdir, store=store)

    referenced = [p for p in files_in(DICOMDIR_TESTS) if p.parent.parent.parent == DICOMDIR_TESTS]
    assert report.ok and report.n_stored == len(referenced) == 31
    assert sorted(Path(s.path) for s in report.stored) == sorted(referenced)
    per_series: dict[str, int] = defaultdict(int)
    patients = set()
    for header in (dcmread(p, stop_before_pixels=True) for p in referenced):
        per_series[header.SeriesInstanceUID] += 1
        patients.add(platform_patient_uid(header.PatientID))
    records = store.list_series()
    assert {r["SeriesInstanceUID"]: len(r["Instances"]) for r in records} == per_series
    assert {p["PatientUID"] for p in store.list_patients()} == patients


def test_ingest_tree_skips_dicomdirs_and_reports_non_dicom(store: Store) -> None:
    report = ingest(DICOMDIR_TESTS, store=store)

    skipped = {Path(p).name for p, _ in report.skipped}
    assert {"DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-implicit", "DICOMDIR-empty.dcm"} <= skipped
    assert all("DICOMDIR" in reason for _, reason in report.skipped)
    assert {Path(p).name for p, _ in report.failed} == {"README.txt", "README"}
    assert all(reason.startswith("not a DICOM file") for _, reason in report.failed)
    # every other file is stored: the 31 referenced ones and TINY_ALPHA's 50 header-only CTs
    assert report.n_stored == 31 + 50
    assert len(store.list_series()) == len(report.series_ids)


# -------------------------------------------------------------------- bad input
def test_bad_files_are_reported_and_good_files_stored(store: Store, tmp_path: Path) -> None:
    folder = copy_series(CT5N, tmp_path / "in")
    copy_series(MR2, folder / "sub" / "MR2")
    good = files_in(folder)
    real = good[0].read_bytes()
    (folder / "notes.txt").write_text("not DICOM\n" * 20)
    (folder / "half.dcm").write_bytes(real[: len(real) // 2])
    big = write_ct_series(tmp_path / "big", 1, 64, 64, names=["big.dcm"])[0].read_bytes()
    (folder / "cut-pixels.dcm").write_bytes(big[: int(len(big) * 0.9)])
    (folder / "empty.dcm").write_bytes(b"")
    no_uids = dcmread(test_file("JPEGLSNearLossless_08.dcm"))
    no_uids.save_as(folder / "no-uids.dcm")
    os.symlink(folder / "missing-target", folder / "dangling")
    os.mkfifo(folder / "pipe")
    (folder / ".hidden").write_bytes(real)
    os.mkdir(folder / "emptydir")

    report = ingest([folder, tmp_path / "nonexistent.dcm", 42], store=store)

    failed = reasons(report.failed)
    assert set(failed) == {
        "notes.txt", "half.dcm", "cut-pixels.dcm", "empty.dcm", "no-uids.dcm", "dangling",
        "pipe", "nonexistent.dcm", "42",
    }  # fmt: skip
    assert failed["notes.txt"].startswith("not a DICOM file")
    assert failed["half.dcm"].startswith("truncated")
    assert "(7FE0,0010)" in failed["cut-pixels.dcm"] and "remain" in failed["cut-pixels.dcm"]
    assert failed["empty.dcm"] == "empty file"
    assert failed["no-uids.dcm"] == "StudyInstanceUID is missing; SeriesInstanceUID is missing"
    assert failed["dangling"].startswith("broken symbolic link")
    assert failed["pipe"] == "a FIFO, not a file"
    assert failed["nonexistent.dcm"] == "does not exist"
    assert "not a path or a pydicom Dataset" in failed["42"]
    assert [Path(p).name for p, _ in report.skipped] == [".hidden"]
    assert not report.ok and report.n_stored == len(good) == 12

    # nothing partial: exactly the good instances are filed
    stored = {
        i["SOPInstanceUID"] for s in store.list_series() for i in store.list_instances(s["_id"])
    }
    assert stored == {dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in good}
    with pytest.raises(
        DicomInputError, match=r"(?s)9 file\(s\) could not be ingested:\n.*notes.txt"
    ):
        report.raise_for_failures()
    assert "12 instance(s) in 4 series; 9 failed; 1 skipped" in report.summary()


def test_unreadable_file_is_reported(store_url: tuple[str, str, str], tmp_path: Path) -> None:
    # in a child process that cannot ignore file modes (root can: the test drops that)
    requires_shared_server(store_url[0])
    folder = copy_series(CT5N, tmp_path / "in")
    locked = files_in(folder)[0]
    locked.chmod(0)
    result = run_unprivileged(
        """
        import json
        from dcm_processor_service.index.ingest import ingest
        from dcm_processor_service.store import open_store
        with open_store(*sys.argv[2:5]) as store:
            report = ingest(sys.argv[1], store=store)
            stored = [i["SOPInstanceUID"] for s in store.list_series()
                      for i in store.list_instances(s["_id"])]
        print(json.dumps({"failed": report.failed, "stored": stored}))
        """,
        str(folder),
        *store_url,
    )
    assert reasons(result["failed"]) == {locked.name: "permission denied"}
    readable = {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files_in(folder)[1:]
    }
    assert set(result["stored"]) == readable


def test_invalid_sources_raise_before_anything_is_stored(store: Store, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no such file or folder"):
        ingest(tmp_path / "nope", store=store)
    with pytest.raises(InvalidInputError, match="invalid ingest source 42"):
        iter_ingest(42, store=store)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="invalid 'session_id'"):
        ingest(test_file(CT5N), store=store, session_id="")
    assert store.list_series() == []


def test_store_errors_propagate(tmp_path: Path) -> None:
    from dcm_processor_service.store.sqlite import SQLiteStore

    closed = SQLiteStore(str(tmp_path / "store"), "t")
    closed.close()
    with pytest.raises(Exception, match="closed"):
        ingest(test_file(CT5N), store=closed)


# ---------------------------------------------------------------- re-ingesting
def test_reingest_replaces_and_never_duplicates(store: Store, tmp_path: Path) -> None:
    folder = copy_series(CT5N, tmp_path / "in")
    first = ingest(folder, store=store)
    # the same files twice in one call (folder + a file in it) are ingested once
    again = ingest([folder, files_in(folder)[0], folder / ".." / "in"], store=store)
    assert again.n_stored == 5
    assert {s.instance_id for s in again.stored} == {s.instance_id for s in first.stored}
    assert len(store.list_instances(first.series_ids[0])) == 5

    # a changed instance (same SOPInstanceUID) replaces the stored one
    path = files_in(folder)[0]
    ds = dcmread(path)
    ds.SeriesDescription = "CHANGED"
    ds.save_as(path)
    replaced = ingest(path, store=store).stored[0]
    record = store.get_instance(replaced.sop_instance_uid)
    assert record["_id"] in {s.instance_id for s in first.stored}
    assert record["SHA256"] == sha256_file(path)
    assert store.get_series(first.series_ids[0])["Metadata"]["SeriesDescription"] == "CHANGED"
    assert len(store.list_instances(first.series_ids[0])) == 5
    with store.open_instance(record) as reader:
        assert reader.read() == path.read_bytes()


# -------------------------------------------------------------------- datasets
def test_ingest_datasets_and_bare_dataset_files(store: Store, tmp_path: Path) -> None:
    originals = [dcmread(p) for p in files_in(test_file(CT5N))]
    from_scratch = Dataset()
    from_scratch.update(copy.deepcopy(originals[0]))  # no file_meta, encoding unknown
    from_scratch.SOPInstanceUID = originals[0].SOPInstanceUID + ".1"
    implicit = dcmread(test_file("MR_small_implicit.dcm"))
    del implicit.file_meta  # encoding known only from how it was read
    compressed = dcmread(test_file("SC_rgb_jpeg_dcmtk.dcm"))
    del compressed.file_meta
    dicomdir = dcmread(DICOMDIR_TESTS / "DICOMDIR")
    no_uid = copy.deepcopy(originals[1])
    del no_uid.SeriesInstanceUID

    report = ingest(
        [
            *originals,
            from_scratch,
            implicit,
            compressed,
            dicomdir,
            no_uid,
            test_file("ExplVR_LitEndNoMeta.dcm"),
        ],
        store=store,
    )

    assert report.n_stored == 5 + 3
    assert [p for p, _ in report.skipped] == [
        "<dataset #9 " + str(DICOMDIR_TESTS / "DICOMDIR") + ">"
    ]
    failed = dict(report.failed)
    assert len(failed) == 2
    assert (
        "encapsulated (compressed) Pixel Data but no file_meta TransferSyntaxUID"
        in failed[f"<dataset #8 {compressed.filename}>"]
    )
    assert failed[f"<dataset #10 {no_uid.filename}>"] == "SeriesInstanceUID is missing"
    assert not hasattr(from_scratch, "file_meta")  # the caller's dataset is untouched

    series = store.get_series(originals[0].SeriesInstanceUID)
    assert len(series["Instances"]) == 6
    back = {ds.SOPInstanceUID: ds for ds in get_series_dicom(series["_id"], store=store)}
    for original in originals:
        assert back[original.SOPInstanceUID] == original
        assert back[original.SOPInstanceUID].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back[from_scratch.SOPInstanceUID] == from_scratch
    record = store.get_instance(implicit.SOPInstanceUID)
    assert record["TransferSyntaxUID"] == ImplicitVRLittleEndian
    assert get_series_dicom(implicit.SeriesInstanceUID, store=store)[0] == implicit

    # a file holding a bare dataset (no preamble, no file meta) is stored as Part 10
    bare = dcmread(test_file("ExplVR_LitEndNoMeta.dcm"), force=True)
    out = get_series_dicom(bare.SeriesInstanceUID, tmp_path / "bare", store=store)
    written = dcmread(out[0])  # readable without force
    assert written == bare and written.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert JPEGBaseline8Bit not in {
        r["TransferSyntaxUID"] for r in store.list_instances(series["_id"])
    }


# ------------------------------------------------------------- series access
def test_get_series_dicom_anatomical_order_bytes_and_datasets(store: Store, tmp_path: Path) -> None:
    folder = test_file(CT5N)
    series_id = ingest(folder, store=store).series_ids[0]
    sources = {dcmread(p).SOPInstanceUID: p for p in files_in(folder)}

    datasets = get_series_dicom(series_id, store=store)
    positions = [float(ds.ImagePositionPatient[2]) for ds in datasets]
    assert positions == sorted(positions)  # axial [1,0,0,0,1,0]: normal +z, ascending
    assert [int(ds.InstanceNumber) for ds in datasets] == [10, 9, 8, 7, 6]
    for ds in datasets:
        assert ds == dcmread(sources[ds.SOPInstanceUID])

    paths = get_series_dicom(series_id, tmp_path / "out" / "deep", store=store)
    assert [dcmread(p).SOPInstanceUID for p in paths] == [ds.SOPInstanceUID for ds in datasets]
    assert sorted(paths) == paths and Path(paths[0]).name.startswith("0001_")
    assert all(
        Path(p).name.endswith(f"_{ds.SOPInstanceUID}.dcm")
        for p, ds in zip(paths, datasets, strict=True)
    )
    for p, ds in zip(paths, datasets, strict=True):
        assert sha256_file(p) == sha256_file(sources[ds.SOPInstanceUID])
    assert sorted(os.listdir(tmp_path / "out" / "deep")) == [
        Path(p).name for p in paths
    ]  # no .part left

    # by SeriesInstanceUID too; writing again replaces the files
    uid = datasets[0].SeriesInstanceUID
    assert get_series_dicom(uid, tmp_path / "out" / "deep", store=store) == paths
    assert len(os.listdir(tmp_path / "out" / "deep")) == 5


def test_get_series_dicom_errors(store: Store, tmp_path: Path) -> None:
    ingest(test_file(CT5N), store=store)
    with pytest.raises(NotFoundError, match="no-such-series"):
        get_series_dicom("no-such-series", store=store)
    (tmp_path / "file").write_text("x")
    series_id = store.list_series()[0]["_id"]
    with pytest.raises(InvalidInputError, match="it is a file, not a folder"):
        get_series_dicom(series_id, tmp_path / "file", store=store)
    with pytest.raises(InvalidInputError, match="invalid series id"):
        get_series_dicom("", store=store)


def test_get_series_dicom_damaged_instance_raises(store: Store) -> None:
    """The instances read ahead in a helper thread are verified like the others: a
    damaged one (here the fourth of five) raises IntegrityError naming it."""
    from dcm_processor_service import IntegrityError
    from support.stores import corrupt_blob

    series_id = ingest(test_file(CT5N), store=store).series_ids[0]
    records = store.list_instances(series_id)
    damaged = records[3]
    blobs = getattr(store, "dicom", None) if store.provider == "mongodb" else None
    with store.open_instance(damaged) as reader:
        size = len(reader.read())
    corrupt_blob(store, damaged["BlobKey"], b"\0" * size, blobs)
    with pytest.raises(IntegrityError, match=damaged["SOPInstanceUID"]):
        get_series_dicom(series_id, store=store)


@pytest.mark.parametrize(
    ("orientation", "label"),
    [
        ((1, 0, 0, 0, 1, 0), "axial"),
        ((1, 0, 0, 0, -1, 0), "axial, normal towards feet"),
        ((0, 1, 0, 0, 0, -1), "sagittal"),
        ((1, 0, 0, 0, 0.8660254, -0.5), "oblique 30 degrees"),
    ],
)
def test_order_follows_the_normal_not_names_or_numbers(
    store: Store, tmp_path: Path, orientation: tuple[float, ...], label: str
) -> None:
    paths = write_ct_series(tmp_path / "in", 6, 8, 8, orientation=orientation, seed=len(label))
    # InstanceNumbers deliberately scrambled: the order must come from the geometry
    for path, number in zip(paths, [4, 1, 6, 2, 5, 3], strict=True):
        ds = dcmread(path)
        ds.InstanceNumber = number
        ds.save_as(path)
    report = ingest(tmp_path / "in", store=store)
    datasets = get_series_dicom(report.series_ids[0], store=store)
    assert [ds.SOPInstanceUID for ds in datasets] == [dcmread(p).SOPInstanceUID for p in paths], (
        label
    )


def test_order_of_real_series_with_gap_and_without_common_normal(store: Store) -> None:
    ingest([test_file(CT2_GAP), test_file(MR700), test_file(MR2)], store=store)
    ct2_uid = dcmread(files_in(test_file(CT2_GAP))[0], stop_before_pixels=True).SeriesInstanceUID
    ct2 = get_series_dicom(ct2_uid, store=store)
    assert [int(ds.InstanceNumber) for ds in ct2] == [18, 180, 181, 182]  # z ascending, with a gap
    # localizers in 7 rotated planes: no common normal -> InstanceNumber order
    mr700 = next(s for s in store.list_series() if s["Metadata"]["SeriesNumber"] == 700)
    assert [int(ds.InstanceNumber) for ds in get_series_dicom(mr700["_id"], store=store)] == list(
        range(1, 8)
    )
    for record in store.list_series():
        numbers = [int(ds.InstanceNumber) for ds in get_series_dicom(record["_id"], store=store)]
        if record["Metadata"]["SeriesNumber"] == 2:  # MR2: 3-plane scouts
            assert numbers == sorted(numbers)


def test_order_slices_rules() -> None:
    sagittal = [0, 1, 0, 0, 0, -1]  # normal (0,1,0) x (0,0,-1) = (-1,0,0): towards the right
    items = [
        {"InstanceNumber": 3},  # no geometry: after the stack
        {
            "ImageOrientationPatient": sagittal,
            "ImagePositionPatient": [5, 0, 0],
            "InstanceNumber": 1,
        },
        {
            "ImageOrientationPatient": sagittal,
            "ImagePositionPatient": [-5, 0, 0],
            "InstanceNumber": 2,
        },
        {"InstanceNumber": None},
        {
            "ImageOrientationPatient": sagittal,
            "ImagePositionPatient": [5, 0, 0],
            "InstanceNumber": 0,
        },
    ]
    # along -x: x=5 (position -5; tie broken by InstanceNumber 0, 1) before x=-5
    assert order_slices(items) == [4, 1, 2, 0, 3]
    tilted = [
        *items,
        {"ImageOrientationPatient": [1, 0, 0, 0, 1, 0], "ImagePositionPatient": [0, 0, 0]},
    ]
    assert order_slices(tilted) == [4, 1, 2, 0, 3, 5]  # not parallel: InstanceNumber, missing last
    assert order_slices([]) == []


def test_read_header_reads_only_what_it_needs(store: Store, tmp_path: Path) -> None:
    path = write_ct_series(tmp_path / "in", 1, 256, 256, names=["a.dcm"])[0]
    ds = dcmread(path)
    ds.add_new(0x00090010, "LO", "TEST")  # a private block bigger than the first read
    ds.add_new(0x00091010, "OB", b"\x01" * 200_000)
    ds.save_as(path)
    record = store.get_instance(ingest(path, store=store).stored[0].sop_instance_uid)
    for first_read in (100, 64 * 1024, 10 << 20):
        header = series_api.read_header(store, record, first_read=first_read)
        assert header == dcmread(path, stop_before_pixels=True)
        assert "PixelData" not in header and header.Rows == 256


# --------------------------------------------------------------------- listing
def test_listing_helpers_by_id_uid_and_context(
    store: Store, store_url: tuple[str, str, str]
) -> None:
    ingest(test_file(CT5N), store=store, session_id="s-ct")
    ingest([test_file(MR700), test_file(CT2_GAP)], store=store, session_id="s-mr")
    ct = dcmread(files_in(test_file(CT5N))[0], stop_before_pixels=True)

    study = series_api.get_study(ct.StudyInstanceUID, store=store)
    assert series_api.get_study(study["_id"], store=store) == study
    patient = series_api.get_patient(platform_patient_uid("98890234"), store=store)
    assert series_api.get_patient(patient["_id"], store=store) == patient
    assert len(series_api.list_studies(patient_id=patient["_id"], store=store)) == 2
    mr_patients = series_api.list_patients(session_id="s-mr", store=store)
    assert sorted(p["PatientUID"] for p in mr_patients) == sorted(
        platform_patient_uid(pid) for pid in ("77654033", "98890234")
    )
    assert [p["PatientUID"] for p in series_api.list_patients(session_id="s-ct", store=store)] == [
        platform_patient_uid("98890234")
    ]
    assert [s["_id"] for s in series_api.list_series(study_id=study["_id"], store=store)] == study[
        "Series"
    ]
    assert (
        len(series_api.list_series(patient_id=platform_patient_uid("77654033"), store=store)) == 1
    )
    assert len(series_api.session_series("s-mr", store=store)) == 2

    records = series_api.list_instances(ct.SeriesInstanceUID, store=store)
    assert [r["Metadata"]["InstanceNumber"] for r in records] == [10, 9, 8, 7, 6]
    instance = series_api.get_instance(ct.SOPInstanceUID, store=store)
    assert series_api.get_instance(instance["_id"], store=store) == instance
    assert (
        series_api.get_instance_dicom(instance["_id"], store=store).SOPInstanceUID
        == ct.SOPInstanceUID
    )
    with pytest.raises(NotFoundError, match="nope"):
        series_api.get_study("nope", store=store)

    provider, url, name = store_url
    with use_context(db_provider=provider, db_url=url, db_name=name, session_id="s-ct"):
        (only,) = series_api.session_series()
        assert only["SeriesInstanceUID"] == ct.SeriesInstanceUID
        assert len(get_series_dicom(only["_id"])) == 5  # store from the context
    with pytest.raises(Exception, match="DCM-PROCESSOR-SERVICE-SESSION-ID"):
        series_api.session_series(store=store)


# ------------------------------------------------------------ session clean-up
def test_delete_session_instances_removes_records_and_bytes(store: Store) -> None:
    ct_report = ingest(test_file(CT5N), store=store, session_id="s1")
    mr_report = ingest(test_file(MR700), store=store, session_id="s2")
    ct_instance = store.get_instance(ct_report.stored[0].instance_id)
    ct_study = ct_instance["SeriesInstanceUID"]

    assert store.delete_session_instances("s1") == 5
    with pytest.raises(NotFoundError):
        store.get_series(ct_report.series_ids[0])
    with pytest.raises(NotFoundError):
        get_series_dicom(ct_study, store=store)
    with pytest.raises(NotFoundError):
        store.open_instance(ct_instance).read()
    assert store.list_series(session_id="s1") == []
    patient = store.get_patient(platform_patient_uid("98890234"))  # still has the MR study
    assert len(patient["Studies"]) == 1
    assert len(get_series_dicom(mr_report.series_ids[0], store=store)) == 7

    assert store.delete_session_instances("s2") == 7
    assert store.list_patients() == [] and store.list_studies() == [] and store.list_series() == []


# ---------------------------------------------------------------------- memory
def _peak_memory(folder: Path, store: Store) -> int:
    """Peak traced memory while ingesting ``folder`` without keeping a report."""
    tracemalloc.start()
    try:
        for outcome in iter_ingest(folder, store=store):
            assert isinstance(outcome, StoredInstance)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_files(
    store: Store, provider: str, tmp_path: Path
) -> None:
    if provider == "mongodb":
        pytest.skip("mongomock keeps every stored document and byte in process memory")
    write_ct_series(tmp_path / "few", 10, 64, 64)
    write_ct_series(tmp_path / "many", 60, 64, 64)
    _peak_memory(tmp_path / "few", store)  # warm-up: imports, connections, statement caches
    few, many = _peak_memory(tmp_path / "few", store), _peak_memory(tmp_path / "many", store)
    assert many < few * 1.5 + 256 * 1024, (few, many)


def test_large_file_is_streamed_not_loaded(store: Store, provider: str, tmp_path: Path) -> None:
    if provider == "mongodb":
        pytest.skip("mongomock keeps every stored byte in process memory")
    write_ct_series(tmp_path / "big", 1, 2048, 2048)  # one 8 MiB file
    _peak_memory(tmp_path / "big", store)
    assert _peak_memory(tmp_path / "big", store) < 4 * 1024 * 1024


# ------------------------------------------------------------------ patient key
def _ds(**values: str) -> Dataset:
    ds = Dataset()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"PatientID": " 123 ", "PatientName": "A^B"}, "123"),
        ({"PatientID": "123", "IssuerOfPatientID": "HOSP"}, "123::HOSP"),
        ({"PatientID": "a::b", "IssuerOfPatientID": " x "}, "a::b::x"),
        (
            {"PatientName": "Doe^John^^", "PatientBirthDate": "19700101", "PatientSex": "M"},
            "Doe^John^^::19700101::M",
        ),
        ({"PatientName": "Doe^John", "PatientBirthDate": "19700101"}, "Doe^John::19700101"),
        ({"PatientName": "Doe^John", "PatientSex": "F"}, "Doe^John::F"),
        ({"PatientName": "Doe^John", "StudyInstanceUID": "1.2.3"}, "Doe^John"),
        ({"PatientName": "", "StudyInstanceUID": "1.2.3"}, "1.2.3"),
        ({"PatientID": "", "StudyInstanceUID": "1.2.3"}, "1.2.3"),
    ],
)
def test_patient_key_rules(values: dict[str, str], key: str) -> None:
    """The platform's derivation: sha256 of the first key text that applies."""
    assert patient_key(_ds(**values)) == platform_patient_uid(key)


def test_patient_key_without_anything_raises() -> None:
    with pytest.raises(DicomInputError, match="cannot build a patient key"):
        patient_key(Dataset())


def test_iter_ingest_yields_each_outcome(store: Store, tmp_path: Path) -> None:
    folder = copy_series(CT5N, tmp_path / "in")
    (folder / "x.txt").write_text("hello")
    shutil.copy(DICOMDIR_TESTS / "DICOMDIR", folder / "DICOMDIR")
    kinds = [type(o) for o in iter_ingest(folder, store=store)]
    assert kinds.count(StoredInstance) == 5 and kinds.count(IngestFailure) == 1
    assert kinds.count(IngestSkip) == 1
