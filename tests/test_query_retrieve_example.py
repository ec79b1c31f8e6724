"""The "compare with the prior" example service end to end: ``dcm-service run`` against
Orthanc, once with the peer as a DICOMweb endpoint (QIDO-RS, WADO-RS, STOW-RS) and once
as a DIMSE node (C-FIND, C-GET, C-STORE). Nothing is mocked: Orthanc and the runner's
job processes are real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dcm_processor_service.net.dicomweb.stow import StowSender
from dcm_processor_service.store import DicomWebEndpoint
from support.dicomdata import write_ct_series
from support.dicomweb import PASSWORD, USER, dicomweb_url, run_orthanc_dicomweb
from support.peers import OrthancPeer

pytestmark = pytest.mark.network

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "compare-prior"
PATIENT = "CMP-1"
THRESHOLD = 150.0


def _dated_series(folder: Path, date: str, study_uid: str | None, seed: int) -> list[Path]:
    files = write_ct_series(
        folder, n_slices=6, rows=24, columns=24, patient_id=PATIENT, study_uid=study_uid, seed=seed
    )
    for f in files:
        ds = dcmread(f)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
        ds.save_as(f, enforce_file_format=True)
    return files


def _volume_ml(files: list[Path]) -> float:
    """The volume above THRESHOLD, computed here from the files (not by the example)."""
    voxels = 0
    for f in files:
        ds = dcmread(f)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        voxels += int((hu > THRESHOLD).sum())
    ds = dcmread(files[0])
    spacing = float(ds.PixelSpacing[0]) * float(ds.PixelSpacing[1]) * float(ds.SliceThickness)
    return round(voxels * spacing / 1000.0, 3)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OrthancPeer, list[Path]]]:
    work = tmp_path_factory.mktemp("compare")
    with run_orthanc_dicomweb(
        work / "orthanc", modalities={"US": ["DCMPROCESSOR", "127.0.0.1", 104]}
    ) as orthanc:
        prior = _dated_series(work / "prior", "20230301", None, seed=11)
        os.environ["DCMPS_CMP_SEED"] = PASSWORD
        try:
            endpoint = DicomWebEndpoint(dicomweb_url(orthanc), "basic", USER, "env:DCMPS_CMP_SEED")
            assert StowSender(endpoint).send(prior).ok
        finally:
            del os.environ["DCMPS_CMP_SEED"]
        yield orthanc, prior


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dcm_processor_service.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("kind", ["dicomweb", "dimse"])
def test_compare_prior_runs_end_to_end(tmp_path: Path, pacs, kind: str) -> None:
    orthanc, prior = pacs
    current = _dated_series(tmp_path / "current", "20240401", None, seed=12)
    env = {**os.environ, "PACS_PASSWORD": PASSWORD}
    store = ["--store", str(tmp_path / "store")]
    add = ["peers", "add", "pacs", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port)]
    if kind == "dicomweb":
        add += ["--dicomweb", dicomweb_url(orthanc), "--username", USER]
        add += ["--secret", "env:PACS_PASSWORD"]
    added = _cli(*add, *store, env=env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    before = set(orthanc.instances())

    proc = _cli(
        "run",
        str(EXAMPLE),
        str(tmp_path / "current"),
        "--peer",
        "pacs",
        *store,
        "--json",
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    jobs = {j["job_name"]: j for j in json.loads(proc.stdout)["sessions"][0]["jobs"]}
    result = jobs["compare"]["result"]
    assert jobs["compare"]["status"] == "succeeded"
    prior_ds = dcmread(prior[0])
    assert result["prior"] == {
        "study_instance_uid": prior_ds.StudyInstanceUID,
        "study_date": "20230301",
        "series_instance_uid": prior_ds.SeriesInstanceUID,
        "instances": 6,
    }
    assert result["current"]["volume_ml"] == _volume_ml(current)
    assert result["before"]["volume_ml"] == _volume_ml(prior)
    assert np.isclose(result["change_ml"], _volume_ml(current) - _volume_ml(prior))
    assert result["sent"] == 1
    new = set(orthanc.instances()) - before
    sr_uids = [orthanc.get_json(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in new]
    assert result["report_sop_instance_uid"] in sr_uids
    sr = orthanc.dataset(result["report_sop_instance_uid"])
    assert sr.Modality == "SR" and sr.PatientID == PATIENT
    assert sr.StudyInstanceUID == dcmread(current[0]).StudyInstanceUID
