"""The platform's own code runs our services, with the same results as ``dcm-service run``.

The platform's job scheduler, worker, database provider and service installer run in
their own virtualenv (``support.platform_venv``; their pinned dependencies clash with ours)
with this package installed; ``support.platform_driver`` installs a service with the
platform's installer, schedules a patient through the scheduler's own registry-callback
check and ``dependsOn`` pruning, and runs every job through the worker's own launch
path (``write_main_file``, the module folder as ``service_module``) with the job
environment pointing at our SQLite store. The platform's database is mongomock (no
MongoDB server can run here). The same input then runs under our runner, and the
jobs, their keywords and their results are compared.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from dcm_processor_service.index.ingest import ingest
from dcm_processor_service.runner import Runner, load_manifest
from dcm_processor_service.runner.platform import HOOK_KEYWORDS, WORKER_KEYWORDS
from dcm_processor_service.store import Peer, open_store
from support.peers import run_storescp
from support.platform_service import write_platform_service
from support.platform_venv import REPO_ROOT, platform_python
from support.services import CONTEXT_VARIABLES, sample_series

pytestmark = [pytest.mark.network, pytest.mark.slow]

EXAMPLE = REPO_ROOT / "examples" / "threshold-service"
DRIVER = Path(__file__).parent / "support" / "platform_driver.py"


@pytest.fixture(scope="module")
def platform_py() -> Path:
    return platform_python()


def _run_on_platform(
    python: Path, service: Path, inputs: Path, work: Path, scp: Any
) -> tuple[list[dict[str, Any]], str]:
    """Ingest ``inputs`` into a fresh SQLite store as one session and run ``service``
    on it through the platform's code; returns the driver's job list and the store URL."""
    url = str(work / "platform-store") + os.sep
    session_id = uuid.uuid4().hex
    with open_store("sqlite", url) as store:
        peer = store.put_peer(Peer(name="scp", aet=scp.aet, host="127.0.0.1", port=scp.port))
        store.ensure_session(session_id, peer_id=peer.id)
        ingest(inputs, store=store, peer_id=peer.id, session_id=session_id)
        studies = [
            {**study, "series": store.list_series(study_id=study["_id"], session_id=session_id)}
            for study in store.list_studies(session_id=session_id)
        ]
        spec = {
            "service": str(service),
            "db_url": url,
            "db_name": "dcm-processor",
            "session_id": session_id,
            "peer_id": peer.id,
            "patient": store.list_patients(session_id=session_id)[0],
            "studies": studies,
        }
    (work / "spec.json").write_text(json.dumps(spec, default=str))
    env = {k: v for k, v in os.environ.items() if not k.replace("_", "-").startswith("DCM-")}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [str(python), str(DRIVER), str(work / "spec.json"), str(work / "out.json")],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((work / "out.json").read_text()), url


def _run_here(service: Path, inputs: Path, work: Path, scp: Any) -> list[Any]:
    manifest = load_manifest(service)
    runner = Runner(
        manifest,
        db_url=str(work / "our-store") + os.sep,
        peer=Peer(name="scp", aet=scp.aet, host="127.0.0.1", port=scp.port),
        work_dir=work / "runs",
    )
    report = runner.run([inputs])
    assert report.ok, report.to_dict()
    return report.jobs


def _check_launch(jobs: list[dict[str, Any]], url: str) -> None:
    """Every job succeeded on the platform, got the platform's keywords and an
    environment pointing at our store."""
    for job in jobs:
        assert "error" not in job["result"], (job["job_name"], job["result"])
        expected = (
            HOOK_KEYWORDS
            if job["function"] != "dcm_processor_worker.controller"
            else (WORKER_KEYWORDS)
        )
        assert job["kwargs"] == sorted(expected), job["job_name"]
        assert set(job["env"]) == CONTEXT_VARIABLES
        assert job["env"]["DCM-PROCESSOR-SERVICE-DB-PROVIDER"] == "sqlite"
        assert job["env"]["DCM-PROCESSOR-SERVICE-DB-URL"] == url
        assert job["env"]["DCM-PROCESSOR-SERVICE-JOB-ID"] == job["id"]
    with open_store("sqlite", url) as store:
        assert store.list_sessions() == []  # the post-services hook cleaned up our store


def test_the_platform_runs_the_example_service(tmp_path: Path, platform_py: Path) -> None:
    sample_series(tmp_path / "in", slices=20, size=32)
    with run_storescp(tmp_path / "received") as scp:
        platform_jobs, url = _run_on_platform(platform_py, EXAMPLE, tmp_path / "in", tmp_path, scp)
        our_jobs = _run_here(EXAMPLE, tmp_path / "in", tmp_path, scp)
    _check_launch(platform_jobs, url)
    assert [j["job_name"] for j in platform_jobs] == [
        "run_pre_services",
        "threshold",
        "deliver",
        "run_post_services",
    ]
    assert [j.job_name for j in our_jobs] == [
        "pre-services",
        "threshold",
        "deliver",
        "post-services",
    ]
    # the same results: what each job returned, and what the clean-up removed
    for platform_job, our_job in zip(platform_jobs[1:], our_jobs[1:], strict=True):
        assert platform_job["result"]["result"] == our_job.result, our_job.job_name
    threshold = platform_jobs[1]["result"]["result"]
    assert threshold["mask_voxels"] > 0 and threshold["outputs"] == [
        "segmentation.dcm",
        "report-pdf.dcm",
    ]
    assert platform_jobs[2]["result"]["result"]["sent"] == 2
    assert platform_jobs[-1]["result"]["result"]["instances"] == 20
    # the scheduler's registry callbacks ran: what they returned, by job name
    assert platform_jobs[1]["added_params"] == {
        "threshold": {"modality": "CT", "slices": 20},
        "deliver": {"modality": "CT", "slices": 20},
    }
    # both runs delivered a SEG and a PDF to the peer
    received = [dcmread(p) for p in (tmp_path / "received").rglob("*") if p.is_file()]
    assert sorted(ds.Modality for ds in received) == ["DOC", "DOC", "SEG", "SEG"]


def _normalised(name: str, result: Any) -> Any:
    """A job result without what differs between two runs (new UIDs)."""
    if name == "convert":
        return {k: v for k, v in result.items() if k != "sop_instance_uid"}
    if name == "send":
        return {k: v for k, v in result.items() if k != "sent"}
    return result


def test_the_platform_schedules_and_runs_the_fixture_as_we_do(
    tmp_path: Path, platform_py: Path
) -> None:
    service = write_platform_service(tmp_path / "platform-fixture")
    sample_series(tmp_path / "in" / "a1", study_uid="1.2.826.0.1.3680043.8.498.201")
    sample_series(tmp_path / "in" / "a2", study_uid="1.2.826.0.1.3680043.8.498.201", slices=3)
    sample_series(tmp_path / "in" / "b1", study_uid="1.2.826.0.1.3680043.8.498.202")
    with run_storescp(tmp_path / "received") as scp:
        platform_jobs, url = _run_on_platform(platform_py, service, tmp_path / "in", tmp_path, scp)
        our_jobs = _run_here(service, tmp_path / "in", tmp_path, scp)
    _check_launch(platform_jobs, url)
    # the same jobs, for the same objects, in the same order: the platform's own
    # scheduler pruned "pruned" and dropped "filtered-out" as our runner did
    ours = [(j.job_name, j.object_id) for j in our_jobs[1:-1]]
    theirs = [(j["job_name"], j["object"]) for j in platform_jobs[1:-1]]
    assert [n for n, _ in theirs] == [n for n, _ in ours]
    assert "pruned" not in {n for n, _ in theirs}
    # objects: ids of our store's records (the platform's run used its own store)
    assert len({o for _, o in theirs}) == len({o for _, o in ours}) == 6
    for platform_job, our_job in zip(platform_jobs[1:-1], our_jobs[1:-1], strict=True):
        assert _normalised(our_job.job_name, platform_job["result"]["result"]) == _normalised(
            our_job.job_name, our_job.result
        ), our_job.job_name
    assert len([p for p in (tmp_path / "received").rglob("*") if p.is_file()]) == 6
