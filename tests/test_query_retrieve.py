"""Query/retrieve for a job: the same Orthanc as a DIMSE peer (C-FIND, C-GET, C-MOVE)
and as a DICOMweb peer (QIDO-RS, WADO-RS); retrieved priors land as normal series
records that ``get_series_dicom`` reads, identical through both paths.

Orthanc (with ``orthanc-dicomweb``) is started by the tests on loopback; nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

import dcm_processor_service as dps
from dcm_processor_service._errors import InvalidInputError, NotFoundError
from dcm_processor_service.net.dicomweb.stow import StowSender
from dcm_processor_service.store import DicomWebEndpoint, open_store
from support.dicomdata import write_ct_series
from support.dicomweb import PASSWORD, USER, dicomweb_url, run_orthanc_dicomweb
from support.peers import OrthancPeer, free_port

pytestmark = pytest.mark.network

SECRET_ENV = "DCMPS_TEST_QR_PASSWORD"
MOVE_PORT = free_port()
PATIENT = "QR-PAT-1"


def _set_dates(files: list[Path], date: str, time: str = "100000") -> None:
    for f in files:
        ds = dcmread(f)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.StudyTime = time
        ds.save_as(f, enforce_file_format=True)


def _series(
    folder: Path, *, patient: str, date: str, modality: str = "CT", n: int = 4, seed: int = 0
):
    files = write_ct_series(folder, n_slices=n, rows=16, columns=16, patient_id=patient, seed=seed)
    _set_dates(files, date)
    if modality != "CT":
        for f in files:
            ds = dcmread(f)
            ds.Modality = modality
            ds.save_as(f, enforce_file_format=True)
    first = dcmread(files[0])
    return files, str(first.StudyInstanceUID), str(first.SeriesInstanceUID)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrthancPeer, dict]]:
    """Orthanc holding: patient QR-PAT-1's CT of 2022 and 2023, an MR of 2023-06, the
    current CT of 2024; another patient's CT of 2023."""
    work = tmp_path_factory.mktemp("qr")
    modalities = {"DCMPS": ["DCMPROCESSOR", "127.0.0.1", MOVE_PORT]}
    with run_orthanc_dicomweb(work / "orthanc", modalities=modalities) as orthanc:
        data = {
            "old": _series(work / "old", patient=PATIENT, date="20220105", seed=1),
            "prior": _series(work / "prior", patient=PATIENT, date="20230310", seed=2),
            "mr": _series(work / "mr", patient=PATIENT, date="20230601", modality="MR", seed=3),
            "current": _series(work / "current", patient=PATIENT, date="20240202", seed=4),
            "other": _series(work / "other", patient="QR-PAT-2", date="20230901", seed=5),
        }
        sender = StowSender(
            DicomWebEndpoint(dicomweb_url(orthanc), "basic", USER, "env:DCMPS_QR_SEED_PW")
        )
        import os

        os.environ["DCMPS_QR_SEED_PW"] = PASSWORD
        try:
            for files, _, _ in data.values():
                assert sender.send(files).ok
        finally:
            del os.environ["DCMPS_QR_SEED_PW"]
        yield orthanc, data


@pytest.fixture
def store(tmp_path: Path, pacs, monkeypatch: pytest.MonkeyPatch) -> Iterator[dps.Store]:
    orthanc, _ = pacs
    monkeypatch.setenv(SECRET_ENV, PASSWORD)
    s = open_store("sqlite", str(tmp_path / "store"), "t")
    dps.add_peer(
        "pacs",
        orthanc.aet,
        "127.0.0.1",
        orthanc.dicom_port,
        dicomweb=DicomWebEndpoint(dicomweb_url(orthanc), "basic", USER, f"env:{SECRET_ENV}"),
        store=s,
    )
    yield s
    s.close()


PROTOCOLS = ["dicomweb", "dimse"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_find_studies_by_patient(store: dps.Store, pacs, protocol: str) -> None:
    _, data = pacs
    found = dps.find_studies("pacs", patient_id=PATIENT, protocol=protocol, store=store)
    assert [m.study_instance_uid for m in found] == [
        data[k][1] for k in ("old", "prior", "mr", "current")
    ]
    assert [m.study_date for m in found] == ["20220105", "20230310", "20230601", "20240202"]
    assert {m.patient_id for m in found} == {PATIENT}
    ct_2023 = dps.find_studies(
        "pacs",
        patient_id=PATIENT,
        modality="CT",
        date_from="2023-01-01",
        date_to="20231231",
        protocol=protocol,
        store=store,
    )
    assert [m.study_instance_uid for m in ct_2023] == [data["prior"][1]]
    series = dps.find_series(data["prior"][1], "pacs", protocol=protocol, store=store)
    assert [(s.series_instance_uid, s.modality) for s in series] == [(data["prior"][2], "CT")]
    assert series[0].number_of_instances == 4


def test_query_input_errors(store: dps.Store) -> None:
    with pytest.raises(InvalidInputError, match="at least one filter"):
        dps.find_studies("pacs", store=store)
    with pytest.raises(InvalidInputError, match="date_from"):
        dps.find_studies("pacs", date_from="31.12.2023", store=store)
    with pytest.raises(InvalidInputError, match="after"):
        dps.find_studies("pacs", date_from="20240101", date_to="20230101", store=store)
    with pytest.raises(InvalidInputError, match="protocol"):
        dps.find_studies("pacs", patient_id="x", protocol="http", store=store)
    with pytest.raises(NotFoundError, match="pacs"):
        dps.find_studies("nobody", patient_id="x", store=store)
    with pytest.raises(NotFoundError, match="PEER-ID"):
        dps.find_studies(patient_id="x", store=store)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_find_priors_picks_the_most_recent_earlier_comparable_study(
    store: dps.Store, pacs, protocol: str
) -> None:
    _, data = pacs
    current = dcmread(data["current"][0][0])
    headers = {
        "Metadata": {
            k: str(current.get(k))
            for k in (
                "PatientID",
                "StudyInstanceUID",
                "StudyDate",
                "StudyTime",
                "Modality",
                "PatientBirthDate",
            )
        }
    }
    priors = dps.find_priors(headers, "pacs", protocol=protocol, store=store)
    assert [p.study_instance_uid for p in priors] == [data["prior"][1]]
    every = dps.find_priors(current, "pacs", limit=None, protocol=protocol, store=store)
    assert [p.study_instance_uid for p in every] == [data["prior"][1], data["old"][1]]
    mr = dps.find_priors(current, "pacs", modality="MR", protocol=protocol, store=store)
    assert [p.study_instance_uid for p in mr] == [data["mr"][1]]
    # a study of the same ID but another birth date is left out (patient safety)
    other_birth = {**headers["Metadata"], "PatientBirthDate": "19991231"}
    assert dps.find_priors(other_birth, "pacs", protocol=protocol, store=store) == []
    with pytest.raises(InvalidInputError, match="StudyDate"):
        dps.find_priors({"PatientID": PATIENT, "StudyInstanceUID": "1.2"}, "pacs", store=store)


def _retrieve(store: dps.Store, data: dict, protocol: str, method: str = "get") -> list:
    _, study, series = data["prior"]
    report = dps.retrieve_series(
        study,
        series,
        "pacs",
        protocol=protocol,
        method=method,
        move_port=MOVE_PORT,
        session_id=None,
        store=store,
    )
    assert report.ok and report.n_stored == 4, report.summary()
    assert len(report.series_ids) == 1
    record = dps.get_series(report.series_ids[0], store=store)
    assert record["SeriesInstanceUID"] == series
    assert record["PeerUID"] == store.get_peer("pacs").id
    return dps.get_series_dicom(report.series_ids[0], store=store)


def test_retrieved_prior_is_identical_through_both_paths(tmp_path: Path, pacs, store) -> None:
    """WADO-RS into one store, C-GET into another: same UIDs, same pixels, and the same
    as what was put on the PACS."""
    _, data = pacs
    web = _retrieve(store, data, "dicomweb")
    other = open_store("sqlite", str(tmp_path / "store2"), "t")
    other.put_peer(store.get_peer("pacs"))
    dimse = _retrieve(other, data, "dimse")
    other.close()
    originals = sorted((dcmread(f) for f in data["prior"][0]), key=lambda d: int(d.InstanceNumber))
    for a, b, original in zip(web, dimse, originals, strict=True):
        assert a.SOPInstanceUID == b.SOPInstanceUID == original.SOPInstanceUID
        assert a.SeriesInstanceUID == b.SeriesInstanceUID == original.SeriesInstanceUID
        assert a.StudyInstanceUID == b.StudyInstanceUID == original.StudyInstanceUID
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
        np.testing.assert_array_equal(a.pixel_array, original.pixel_array)


def test_retrieve_by_c_move_to_ourselves(pacs, store) -> None:
    _, data = pacs
    datasets = _retrieve(store, data, "dimse", method="move")
    assert [str(d.SOPInstanceUID) for d in datasets] == [
        str(dcmread(f).SOPInstanceUID)
        for f in sorted(data["prior"][0], key=lambda f: int(dcmread(f).InstanceNumber))
    ]
    with pytest.raises(InvalidInputError, match="move_port"):
        dps.retrieve_study(data["prior"][1], "pacs", protocol="dimse", method="move", store=store)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retrieve_study_into_the_job_session(pacs, store, protocol: str) -> None:
    """Inside a job: the peer is the session's, the instances belong to the session
    (``session_series``), and ``get_series_dicom`` reads them."""
    _, data = pacs
    session = store.ensure_session(peer_id=store.get_peer("pacs").id)
    ctx = dps.RuntimeContext(session_id=session.id, peer_id=store.get_peer("pacs").id)
    with dps.use_context(ctx):
        report = dps.retrieve_study(data["old"][1], protocol=protocol, store=store)
    assert report.n_stored == 4
    series = dps.session_series(session.id, store=store)
    assert [s["SeriesInstanceUID"] for s in series] == [data["old"][2]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_retrieve_of_an_unknown_study_says_so(store, protocol: str) -> None:
    uid = generate_uid()
    with pytest.raises(NotFoundError, match=f"pacs has no study {uid}"):
        dps.retrieve_study(uid, "pacs", protocol=protocol, store=store)
    assert store.list_series() == []


def test_a_retrieved_prior_never_merges_two_patients(tmp_path: Path, pacs, store) -> None:
    """The store already files the prior's study under another patient: the retrieved
    instances are refused as patient conflicts (the ingest's rule), nothing is merged."""
    _, data = pacs
    _, study, series = data["prior"]
    impostor = dcmread(data["prior"][0][0])
    impostor.PatientID = "SOMEONE-ELSE"
    impostor.PatientName = "Else^Someone"
    impostor.SeriesInstanceUID = generate_uid()
    impostor.SOPInstanceUID = impostor.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    assert dps.ingest(impostor, store=store).n_stored == 1
    report = dps.retrieve_series(study, series, "pacs", store=store)
    assert report.n_stored == 0
    assert len(report.conflicts) == 4
    assert all("SOMEONE-ELSE" in reason or "patient" in reason for _, reason in report.conflicts)
    assert [s["SeriesInstanceUID"] for s in store.list_series()] == [impostor.SeriesInstanceUID]
