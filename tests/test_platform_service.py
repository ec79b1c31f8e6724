"""A service written for the platform runs unchanged under ``dcm-service run``.

The service (``support.platform_service``) is written the way the platform's template
writes one and imports only the original package's module paths. It runs through the
real CLI in a subprocess, every job in its own process, and sends what it makes to a
real dcmtk ``storescp`` on a loopback port; the test reads back what arrived.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread

from dcm_processor_service.runner.check import check_service
from dcm_processor_service.runner.platform import REGISTRY_KEYWORDS
from support.peers import run_storescp
from support.platform_service import write_platform_service
from support.services import sample_series

pytestmark = pytest.mark.network

STUDY_A = "1.2.826.0.1.3680043.8.498.101"
STUDY_B = "1.2.826.0.1.3680043.8.498.102"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dcm_processor_service.cli", *args],
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("DCM")},
    )


def test_platform_service_runs_unchanged_and_delivers(tmp_path: Path) -> None:
    service = write_platform_service(tmp_path / "platform-fixture")
    assert check_service(service).ok, check_service(service).problems
    sample_series(tmp_path / "in" / "a1", study_uid=STUDY_A, description="first")
    sample_series(tmp_path / "in" / "a2", study_uid=STUDY_A, description="second")
    sample_series(tmp_path / "in" / "b1", study_uid=STUDY_B, description="third")
    with run_storescp(tmp_path / "received") as scp:
        proc = _cli(
            "run",
            str(service),
            str(tmp_path / "in"),
            "--store",
            str(tmp_path / "store"),
            "--peer-address",
            f"{scp.aet}@127.0.0.1:{scp.port}",
            "--json",
        )
    assert proc.returncode == 0, proc.stderr
    assert "the platform would refuse" not in proc.stderr  # no platform finding
    report = json.loads(proc.stdout)
    session = report["sessions"][0]
    jobs = session["jobs"]

    # the platform's graph: per study its series' jobs (convert before send), the study
    # job after them; the patient job after every study job
    names = [(j["job_name"], j["status"]) for j in jobs]
    assert [n for n, _ in names] == [
        "pre-services",
        "convert",
        "send",
        "convert",
        "send",
        "study-summary",
        "convert",
        "send",
        "study-summary",
        "patient-summary",
        "post-services",
    ]
    assert all(status == "succeeded" for _, status in names)

    converts = [j["result"] for j in jobs if j["job_name"] == "convert"]
    sends = [j["result"] for j in jobs if j["job_name"] == "send"]
    # a registry callback with its parameters in another order, and its added_params
    assert [c["filter"]["seen"] for c in converts] == [[], [], []]
    # the worker got exactly the platform's other keywords
    assert converts[0]["kwargs"] == [
        "db_name",
        "db_provider",
        "db_url",
        "event",
        "job_id",
        "service_id",
        "worker_id",
        "worker_type",
    ]
    # the keywords-only worker, after its string dependsOn, with the peer as a mapping
    assert [s["sent"] for s in sends] == [c["sop_instance_uid"] for c in converts]
    assert all(s["statuses"] == [0] and s["event"] == "stable-series" for s in sends)
    assert sends[0]["peer"] == [scp.aet, "127.0.0.1", scp.port]

    studies = [j["result"] for j in jobs if j["job_name"] == "study-summary"]
    assert sorted((s["study"], s["series"]) for s in studies) == [(STUDY_A, 2), (STUDY_B, 1)]
    assert sorted(s["filter"]["series_in_study"] for s in studies) == [1, 2]
    # the registry callback got exactly the scheduler's keywords
    assert studies[0]["filter"]["keywords"] == sorted(REGISTRY_KEYWORDS)
    patient = next(j["result"] for j in jobs if j["job_name"] == "patient-summary")
    assert patient == {"patient": "PAT-1", "studies": 2}

    # not scheduled, with the reason: a false registry callback, a dependency that did
    # not pass
    reasons = {(n["job_name"], n["reason"]) for n in session["not_scheduled"]}
    assert reasons == {
        ("filtered-out", "registry callback returned false"),
        (
            "pruned",
            "dependsOn 'filtered-out', which was not scheduled for this series "
            "(its registry callback returned false)",
        ),
    }
    assert len(session["not_scheduled"]) == 6  # both, for each of the 3 series
    assert session["cleaned_up"]

    # what arrived at storescp: one Encapsulated PDF per series, in the series' study
    received = [dcmread(p) for p in sorted((tmp_path / "received").rglob("*")) if p.is_file()]
    assert sorted(ds.SOPInstanceUID for ds in received) == sorted(
        c["sop_instance_uid"] for c in converts
    )
    assert {ds.SOPClassUID for ds in received} == {ENCAPSULATED_PDF}
    assert sorted(ds.StudyInstanceUID for ds in received) == sorted([STUDY_A, STUDY_A, STUDY_B])
    assert {ds.PatientID for ds in received} == {"PAT-1"}
    assert all(ds.EncapsulatedDocument.startswith(b"%PDF-1.4") for ds in received)
