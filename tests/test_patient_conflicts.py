"""Patient safety: no series (or study, or SOP instance) ever holds two patients.

Files that share a StudyInstanceUID / SeriesInstanceUID with an instance already filed
under another patient are refused, one per-file error each naming both patients and the
UID, while the first patient's instances stay untouched - on every provider, through the
CLI (non-zero exit, the conflict in the report), and when several processes ingest the
two patients' files at the same time (SQLite and PostgreSQL, real processes).

Real files: pydicom's bundled CT5N series and CT_small.dcm, re-tagged per test.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dcm_processor_service import ConflictError, PatientConflictError
from dcm_processor_service.cli import main
from dcm_processor_service.index.ingest import IngestConflict, ingest
from dcm_processor_service.store import Store, open_store
from support.dicomdata import files_in, platform_patient_uid, sha256_file, test_file
from support.services import write_service
from support.stores import requires_shared_server

CT5N = "dicomdirtests/98892001/CT5N"
DOE = platform_patient_uid("98890234")  # the PatientUID of CT5N's patient
OTHER = platform_patient_uid("OTHER-42")


def retag(path: Path, **tags: Any) -> None:
    """Rewrite tags of one file in place (``None`` deletes the tag)."""
    ds = dcmread(path)
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def ct5n(dst: Path) -> list[Path]:
    shutil.copytree(test_file(CT5N), dst)
    return files_in(dst)


def patient_ids_in_series(store: Store, series_id: str) -> list[str]:
    """PatientID of every stored instance of a series, read from the stored bytes."""
    out = []
    for record in store.list_instances(series_id):
        with store.open_instance(record) as fh:
            data = io.BytesIO(fh.read())
        out.append(str(dcmread(data, stop_before_pixels=True).PatientID))
    return out


# ------------------------------------------------------------------- the rule
def test_other_patient_in_a_series_is_refused_and_the_first_one_kept(
    store: Store, tmp_path: Path
) -> None:
    files = ct5n(tmp_path / "in")
    intruders = files[3:]
    for path in intruders:
        retag(path, PatientID="OTHER-42", PatientName="Roe^Rick")
    series_uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)

    report = ingest(tmp_path / "in", store=store)

    assert report.n_stored == 3 and report.n_failed == 2 and not report.ok
    assert {Path(p) for p, _ in report.conflicts} == set(intruders)
    assert all(isinstance(f, IngestConflict) for f in report.failed)
    for _, reason in report.conflicts:
        assert (
            f"PatientID '98890234', PatientName 'Doe^Peter', PatientSex 'M' (PatientUID {DOE})"
            in reason
        )
        assert (
            f"PatientID 'OTHER-42', PatientName 'Roe^Rick', PatientSex 'M' (PatientUID {OTHER})"
            in reason
        )
        assert f"series {series_uid}" in reason
    assert "2 patient conflict(s)" in report.summary()
    # one series, one patient: the records and the stored bytes agree
    (series,) = store.list_series()
    assert series["PatientUID"] == DOE
    assert series["Metadata"]["PatientID"] == "98890234"
    assert series["Metadata"]["PatientName"] == "Doe^Peter"
    assert patient_ids_in_series(store, series["_id"]) == ["98890234"] * 3
    # no empty record of the refused patient
    assert [p["PatientUID"] for p in store.list_patients()] == [DOE]
    assert [s["PatientUID"] for s in store.list_studies()] == [DOE]


def test_study_reused_for_another_patient_is_refused(store: Store, tmp_path: Path) -> None:
    files = ct5n(tmp_path / "in")
    ingest(files[:4], store=store)
    study_uid = str(dcmread(files[4], stop_before_pixels=True).StudyInstanceUID)
    retag(files[4], PatientID="OTHER-42", SeriesInstanceUID=generate_uid())

    report = ingest(files[4], store=store)

    ((path, reason),) = report.conflicts
    assert Path(path) == files[4]
    assert f"study {study_uid}" in reason
    assert "PatientID '98890234'" in reason and "PatientID 'OTHER-42'" in reason
    assert len(store.list_series()) == 1
    assert [p["PatientUID"] for p in store.list_patients()] == [DOE]


def test_reingest_that_would_move_an_instance_to_another_patient_is_refused(
    store: Store, tmp_path: Path
) -> None:
    files = ct5n(tmp_path / "in")
    ingest(files, store=store)
    original = sha256_file(files[0])
    sop_uid = str(dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    # same SOPInstanceUID, but another patient in a new study and series
    retag(
        files[0],
        PatientID="OTHER-42",
        StudyInstanceUID=generate_uid(),
        SeriesInstanceUID=generate_uid(),
    )

    report = ingest(files[0], store=store)

    ((_, reason),) = report.conflicts
    assert f"SOPInstanceUID {sop_uid}" in reason
    assert "PatientID '98890234'" in reason and "PatientID 'OTHER-42'" in reason
    # the instance already stored stays untouched: same bytes, same series
    record = store.get_instance(sop_uid)
    assert record["SHA256"] == original
    (series,) = store.list_series()
    assert len(series["Instances"]) == 5 and record["SeriesUID"] == series["_id"]
    assert len(store.list_patients()) == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"IssuerOfPatientID": "HOSP-A"}, {"IssuerOfPatientID": "HOSP-B"}),
        ({"IssuerOfPatientID": None}, {"IssuerOfPatientID": "HOSP-B"}),
        (
            {"PatientID": None, "PatientBirthDate": "19600101"},
            {"PatientID": None, "PatientBirthDate": "19610101"},
        ),
        (
            {"PatientID": None, "PatientBirthDate": "19600101", "PatientSex": "M"},
            {"PatientID": None, "PatientBirthDate": "19600101", "PatientSex": "F"},
        ),
        (
            {"PatientID": None, "PatientBirthDate": "19600101"},
            {"PatientID": None, "PatientBirthDate": "19600101", "PatientName": "Doe^Paul"},
        ),
    ],
    ids=["issuer", "issuer-added", "birth-date", "sex", "name"],
)
def test_every_part_of_the_patient_identity_counts(
    store: Store, tmp_path: Path, first: dict[str, Any], second: dict[str, Any]
) -> None:
    files = ct5n(tmp_path / "in")
    for path in files[:3]:
        retag(path, **first)
    for path in files[3:]:
        retag(path, **second)
    report = ingest(files, store=store)
    assert report.n_stored == 3
    assert {Path(p) for p, _ in report.conflicts} == set(files[3:])
    assert len(store.list_patients()) == 1


def test_same_patient_id_with_other_demographics_is_not_a_conflict(
    store: Store, tmp_path: Path
) -> None:
    # the PatientID is the key when it is set: a corrected name or birth date in a
    # resend is the same patient
    files = ct5n(tmp_path / "in")
    retag(files[4], PatientName="Doe^Peter^Jr", PatientBirthDate="19600101")
    report = ingest(files, store=store)
    assert report.ok and report.n_stored == 5
    assert [p["PatientUID"] for p in store.list_patients()] == [DOE]


def test_store_raises_the_conflict_error_naming_both_patients(store: Store) -> None:
    from support.stores import instance_input

    store.put_instance(instance_input("1.2.3.1.1", patient="A"), _source())
    with pytest.raises(PatientConflictError) as caught:
        store.put_instance(instance_input("1.2.3.1.2", patient="B"), _source())
    error = caught.value
    assert isinstance(error, ConflictError)
    assert (error.level, error.uid) in {("series", "1.2.3.1"), ("study", "1.2.3")}
    assert (error.stored_patient, error.new_patient) == ("A", "B")
    assert error.stored_identity == "PatientID 'A', PatientName 'Doe^J'"
    assert error.new_identity == "PatientID 'B', PatientName 'Doe^J'"
    assert "PatientID 'A', PatientName 'Doe^J' (PatientUID A)" in str(error)
    assert [i["SOPInstanceUID"] for i in store.list_instances("1.2.3.1")] == ["1.2.3.1.1"]


def _source() -> io.BytesIO:
    return io.BytesIO(b"DICM bytes")


# ------------------------------------------------------------------- the CLI
def test_cli_ingest_reports_the_conflict_and_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = ct5n(tmp_path / "in")
    retag(files[4], PatientID="OTHER-42")
    store_args = ["--store", str(tmp_path / "store")]

    capsys.readouterr()
    code = main(["ingest", str(tmp_path / "in"), *store_args, "--json"])
    result = json.loads(capsys.readouterr().out)

    assert code == 1
    assert result["stored"] == 4
    ((conflict),) = result["conflicts"]
    assert conflict["path"] == str(files[4]) and "PatientID 'OTHER-42'" in conflict["reason"]
    assert [f["path"] for f in result["failed"]] == [str(files[4])]

    assert main(["ingest", str(files[4]), *store_args]) == 2  # nothing stored at all
    err = capsys.readouterr().err
    assert "patient conflict" in err and OTHER in err and DOE in err


def test_run_with_a_patient_conflict_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = ct5n(tmp_path / "in")
    retag(files[4], PatientID="OTHER-42")
    service = write_service(
        tmp_path / "svc", [{"jobName": "a", "workerEntry": "svc_workers.record"}]
    )

    capsys.readouterr()
    code = main(
        ["run", str(service), str(tmp_path / "in"), "--store", str(tmp_path / "store"), "--json"]
    )
    report = json.loads(capsys.readouterr().out)

    assert code == 1 and report["exit_code"] == 1 and not report["ok"]
    ((conflict),) = report["patient_conflicts"]
    assert conflict["path"] == str(files[4]) and "PatientID '98890234'" in conflict["reason"]
    # the good files still ran: one session of the first patient, its jobs succeeded
    assert report["stored"] == 4
    (ran,) = [s for s in report["sessions"] if s["stored"]]
    assert ran["stored"] == 4 and ran["jobs"]
    assert {j["status"] for j in ran["jobs"]} == {"succeeded"}


# ---------------------------------------------------------------- concurrency
PAIRS = 12
PER_SERIES = 3


def _write_patient(folder: Path, patient_id: str, uids: list[tuple[str, str]]) -> None:
    """PER_SERIES files per (study, series), named so that ingest meets them in order."""
    template = dcmread(test_file("CT_small.dcm"))
    folder.mkdir(parents=True)
    for i, (study, series) in enumerate(uids):
        for k in range(PER_SERIES):
            template.PatientID = patient_id
            template.PatientName = f"Patient^{patient_id}"
            template.StudyInstanceUID = study
            template.SeriesInstanceUID = series
            template.SOPInstanceUID = generate_uid()
            template.InstanceNumber = k + 1
            template.save_as(folder / f"{i:03d}-{k}.dcm")


def _ingest_after(
    store_url: tuple[str, str, str], folder: str, start: Any, out: mp.Queue
) -> None:  # runs in a child process
    store = open_store(*store_url)
    try:
        start.wait(60)
        report = ingest(folder, store=store)
        out.put((report.n_stored, len(report.conflicts), report.n_failed))
    finally:
        store.close()


@pytest.mark.slow
def test_two_processes_racing_two_patients_never_share_a_series(
    store_url: tuple[str, str, str], tmp_path: Path
) -> None:
    requires_shared_server(store_url[0])
    uids = [(generate_uid(), generate_uid()) for _ in range(PAIRS)]
    # A files the series first to last, B last to first: they meet (and race) in the
    # middle, so each process stores some series and is refused on the others
    _write_patient(tmp_path / "A", "PAT-A", uids)
    _write_patient(tmp_path / "B", "PAT-B", uids[::-1])
    open_store(*store_url).close()  # schema in place before the race

    spawn = mp.get_context("spawn")
    start, out = spawn.Event(), spawn.Queue()
    procs = [
        spawn.Process(target=_ingest_after, args=(store_url, str(tmp_path / p), start, out))
        for p in ("A", "B")
    ]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=240)
    assert [p.exitcode for p in procs] == [0, 0]
    results = [out.get(timeout=5) for _ in procs]

    stored = sum(r[0] for r in results)
    conflicts = sum(r[1] for r in results)
    assert stored == PAIRS * PER_SERIES and conflicts == PAIRS * PER_SERIES
    assert all(n_failed == n_conflicts for _, n_conflicts, n_failed in results)
    store = open_store(*store_url)
    try:
        all_series = store.list_series()
        assert len(all_series) == PAIRS
        owners: Counter[str] = Counter()
        for series in all_series:
            in_bytes = patient_ids_in_series(store, series["_id"])
            assert len(in_bytes) == PER_SERIES
            assert set(in_bytes) == {series["Metadata"]["PatientID"]}, series["SeriesInstanceUID"]
            assert series["PatientUID"] == platform_patient_uid(in_bytes[0])
            assert store.get_study(series["StudyInstanceUID"])["PatientUID"] == series["PatientUID"]
            owners[in_bytes[0]] += 1
        # every patient record has studies (no empty record left by a refused file)
        patients = store.list_patients()
        assert all(p["Studies"] for p in patients)
        assert {p["PatientUID"] for p in patients} == {platform_patient_uid(o) for o in owners}
    finally:
        store.close()
