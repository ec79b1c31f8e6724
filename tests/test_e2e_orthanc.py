"""End to end: ``dcm-service run`` of the example service with a real Orthanc as the
session's peer; the SEG and the PDF must arrive in Orthanc (checked through its REST
API). Also ``peers echo`` and ``send`` against the same Orthanc.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dcm_processor_service.cli import main
from dcm_processor_service.runner.sample_data import make_sample_ct
from support.peers import OrthancPeer, run_orthanc

pytestmark = pytest.mark.network

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "threshold-service"


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancPeer]:
    with run_orthanc(tmp_path_factory.mktemp("orthanc")) as peer:
        yield peer


@pytest.fixture
def clean_orthanc(orthanc: OrthancPeer) -> OrthancPeer:
    orthanc.delete_all()
    return orthanc


def _series_by_modality(orthanc: OrthancPeer) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for series in orthanc.get_json("/series?expand"):
        out.setdefault(series["MainDicomTags"].get("Modality", ""), []).append(series)
    return out


def test_run_sends_seg_and_pdf_to_orthanc(tmp_path: Path, clean_orthanc: OrthancPeer) -> None:
    orthanc = clean_orthanc
    make_sample_ct(tmp_path / "input", slices=16, size=64, patient_id="E2E-1")
    source = dcmread(next((tmp_path / "input").glob("*.dcm")), stop_before_pixels=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcm_processor_service.cli",
            "run",
            str(EXAMPLE),
            str(tmp_path / "input"),
            "--peer-address",
            f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}",
            "--output",
            str(tmp_path / "results"),
            "--param",
            "min_slices=8",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    report = json.loads(proc.stdout)
    jobs = {j["job_name"]: j for j in report["sessions"][0]["jobs"]}
    assert jobs["threshold"]["status"] == "succeeded" and jobs["deliver"]["status"] == "succeeded"
    assert jobs["deliver"]["result"]["sent"] == 2
    assert jobs["threshold"]["result"]["mask_voxels"] > 0

    by_modality = _series_by_modality(orthanc)
    assert set(by_modality) == {"SEG", "DOC"}, by_modality.keys()
    seg_instance = by_modality["SEG"][0]["Instances"][0]
    seg = dcmread(io.BytesIO(orthanc.instance_file(seg_instance)))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.PatientID == "E2E-1" and seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    doc_instance = by_modality["DOC"][0]["Instances"][0]
    doc = dcmread(io.BytesIO(orthanc.instance_file(doc_instance)))
    assert doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert bytes(doc.EncapsulatedDocument).startswith(b"%PDF")
    assert doc.StudyInstanceUID == source.StudyInstanceUID
    # what was sent is what was exported
    exported = tmp_path / "results" / "E2E-1" / "threshold"
    assert dcmread(exported / "segmentation.dcm").SOPInstanceUID == seg.SOPInstanceUID
    assert (exported / "report.pdf").read_bytes() == bytes(doc.EncapsulatedDocument).rstrip(b"\0")


def test_echo_and_send_commands(tmp_path: Path, clean_orthanc: OrthancPeer, capsys) -> None:
    orthanc = clean_orthanc
    store = ["--store", str(tmp_path / "store")]
    assert (
        main(["peers", "add", "orthanc", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port), *store])
        == 0
    )
    capsys.readouterr()
    assert main(["peers", "echo", "orthanc", "--json", *store]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    make_sample_ct(tmp_path / "ct", slices=3, size=16, patient_id="SEND-1")
    assert main(["send", "orthanc", str(tmp_path / "ct"), "--json", *store]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {
        "peer": "orthanc",
        "sent": 3,
        "failed": 0,
        "instances": 3,
        "refused": 0,
        "in_doubt": 0,
        "not_sent": 0,
        "not_stored": [],
        "error": None,
    }
    assert len(orthanc.instances()) == 3
    # a stored series, by its record id
    assert main(["ingest", str(tmp_path / "ct"), "--json", *store]) == 0
    series_id = json.loads(capsys.readouterr().out)["series_ids"][0]
    orthanc.delete_all()
    assert main(["send", "orthanc", "--series", series_id, *store]) == 0
    assert "sent 3 of 3 instance(s) to orthanc" in capsys.readouterr().out
    assert len(orthanc.instances()) == 3


def test_echo_of_a_peer_that_is_down(tmp_path: Path, capsys) -> None:
    from support.peers import free_port

    store = ["--store", str(tmp_path / "store")]
    assert main(["peers", "add", "down", "NOBODY", "127.0.0.1", str(free_port()), *store]) == 0
    capsys.readouterr()
    code = main(["peers", "echo", "down", *store])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err
