"""Running services on a real Dask cluster of simulated hosts, PostgreSQL as the store.

One cluster serves the module (``support.dask_hosts``): a ``dask scheduler`` and
PostgreSQL on a bridge in the test's namespace, and two ``dask worker`` processes, each
in its own network namespace with its own temporary directory as HOME, TMPDIR and
local directory. ``host0`` advertises ``GPU=1``, ``host1`` nothing. The service's code
reaches the workers only through Dask (the jobs check they run from the worker's own
copy); inputs and outputs only through the store.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread

from dcm_processor_service._errors import ServiceError
from dcm_processor_service.runner import Runner, RunReport, load_manifest
from dcm_processor_service.runner.executors.dask_cluster import connect_cluster
from dcm_processor_service.runner.executors.dask_executor import DaskExecutor, unmet_resources
from dcm_processor_service.runner.processes import pid_alive
from dcm_processor_service.runner.sample_data import make_sample_ct
from dcm_processor_service.store.records import JobStatus
from dcm_processor_service.store.registry import open_store
from support.dask_hosts import DaskCluster, cluster_with_store, require_netns
from support.peers import run_storescp
from support.platform_service import write_platform_service
from support.postgres import PostgresServer, require_pg_bin, sanitize_db_name
from support.services import sample_series, write_service

pytestmark = [pytest.mark.postgresql, pytest.mark.network]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "threshold-service"

WORKERS = textwrap.dedent(
    """
    import json, os, sys, time, uuid
    import dcm_processor_service as dps

    def _where():
        return {"pid": os.getpid(), "ppid": os.getppid(), "home": os.environ.get("HOME"),
                "code": os.path.abspath(__file__), "cwd": os.getcwd()}

    def slow(session_id, job_name, headers, params, added_params, **kwargs):
        where = _where()
        dps.set_session_data(f"start-{where['pid']}", where)
        dps.upload_session_file(json.dumps(where).encode(), "out.txt")
        time.sleep(float(params.get("seconds", 1)))
        dps.set_session_data("result", headers["SeriesInstanceUID"])
        return where

    def step(session_id, job_name, headers, params, added_params, **kwargs):
        dps.set_session_data(f"exec-{uuid.uuid4().hex}", {"job_id": kwargs["job_id"], "t": time.time()})
        time.sleep(float(params.get("seconds", 1)))
        dps.set_session_data("done", headers["SeriesInstanceUID"])
        return "done"

    def where(session_id, job_name, headers, params, added_params, **kwargs):
        return _where()
    """
)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[DaskCluster, PostgresServer]]:
    require_netns()
    require_pg_bin()
    with cluster_with_store([{"GPU": 1}, {}]) as pair:
        yield pair


@pytest.fixture
def pg(cluster: tuple[DaskCluster, PostgresServer], request: pytest.FixtureRequest) -> Any:
    """A factory of fresh databases on the cluster's PostgreSQL: ``(url, name)``."""
    server = cluster[1]
    made: list[str] = []

    def new() -> tuple[str, str]:
        name = server.create_database(sanitize_db_name(request.node.name))
        made.append(name)
        return server.url(name), name

    yield new
    for name in made:
        server.drop_database(name)


def _run(
    service: Path,
    inputs: Path,
    store: tuple[str, str],
    *,
    executor: Any = None,
    **options: Any,
) -> RunReport:
    url, name = store
    return Runner(
        load_manifest(service),
        db_provider="postgresql",
        db_url=url,
        db_name=name,
        executor=executor,
        handle_signals=False,
        **options,
    ).run([inputs])


@contextlib.contextmanager
def _executor(cluster: DaskCluster, service: Path) -> Iterator[DaskExecutor]:
    client = connect_cluster(cluster.address)
    try:
        yield DaskExecutor(client, service_root=service, poll_interval=0.2)
    finally:
        client.close()


def _cli(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dcm_processor_service.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("DCM")},
        **kwargs,
    )


def _one_job_service(tmp_path: Path, worker: str, params: dict[str, Any]) -> Path:
    """A service of one series job running ``WORKERS``' ``worker`` with ``params``."""
    job = {"jobName": worker, "workerEntry": f"svc_workers.{worker}", "params": params}
    return write_service(tmp_path / "svc", [job], workers=WORKERS)


# --------------------------------------------------------------------- tests
def test_example_service_on_the_cluster_equals_the_local_runner(
    cluster: tuple[DaskCluster, PostgresServer], pg: Any, tmp_path: Path
) -> None:
    dask, _ = cluster
    for i in (1, 2):
        make_sample_ct(tmp_path / "in" / f"p{i}", slices=16, size=32, patient_id=f"P{i}", seed=i)
    local = _run(EXAMPLE, tmp_path / "in", pg(), output_dir=tmp_path / "local")
    with _executor(dask, EXAMPLE) as executor:
        remote = _run(
            EXAMPLE, tmp_path / "in", pg(), output_dir=tmp_path / "remote", executor=executor
        )
    assert local.ok and remote.ok, (local.counts(), remote.counts())
    assert remote.counts() == local.counts() == {JobStatus.SUCCEEDED: 8}
    addresses = {w.dask_address for w in dask.workers}
    assert {j.worker for j in remote.jobs if j.object_kind == "series"} <= addresses
    assert all(j.worker is None for j in local.jobs)
    # the two patients' sessions were open at once: their first jobs ran side by side
    first = [next(j for j in s.jobs if j.job_name == "threshold") for s in remote.sessions]
    assert max(j.started_at for j in first) < min(j.finished_at for j in first)
    assert {j.worker for j in first} == addresses

    def results(report: RunReport) -> dict[tuple[str, str], Any]:
        return {
            (j.object_label, j.job_name): j.result
            for j in report.jobs
            if j.object_kind != "session"
        }

    assert results(remote) == results(local)
    for patient in ("P1", "P2"):
        a, b = tmp_path / "local" / patient, tmp_path / "remote" / patient
        files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
        assert "threshold/segmentation.dcm" in files and "threshold/mask.nii.gz" in files
        values = [
            sorted(
                (d["job_name"], d["event"], d["name"], json.dumps(d["value"]))
                for d in json.loads((p / "session-data.json").read_text())
            )
            for p in (a, b)
        ]
        assert values[0] == values[1] and len(values[0]) >= 3
        mask_a, mask_b = (nib.load(p / "threshold" / "mask.nii.gz") for p in (a, b))
        assert np.array_equal(mask_a.get_fdata(), mask_b.get_fdata())
        assert np.allclose(mask_a.affine, mask_b.affine)
        seg_a, seg_b = (dcmread(p / "threshold" / "segmentation.dcm") for p in (a, b))
        assert np.array_equal(seg_a.pixel_array, seg_b.pixel_array)
        assert [s.SegmentLabel for s in seg_a.SegmentSequence] == [
            s.SegmentLabel for s in seg_b.SegmentSequence
        ]
        assert seg_a.SOPInstanceUID != seg_b.SOPInstanceUID  # two runs: new objects each


def test_platform_service_on_the_cluster_equals_the_local_runner(
    cluster: tuple[DaskCluster, PostgresServer], pg: Any, tmp_path: Path
) -> None:
    dask, _ = cluster
    service = write_platform_service(tmp_path / "platform-fixture")
    for patient in ("PAT-1", "PAT-2"):
        study = f"1.2.826.0.1.3680043.8.498.{300 + int(patient[-1])}"
        sample_series(
            tmp_path / "in" / patient, patient_id=patient, study_uid=study, description=patient
        )
    reports, received = [], []
    for label, executor_on in (("local", False), ("remote", True)):
        with run_storescp(tmp_path / f"received-{label}") as scp:
            # the peer listens on the bridge too: the workers send to it from their hosts
            peer = f"{scp.aet}@{dask.hosts.gateway}:{scp.port}"
            url, name = pg()
            manifest = load_manifest(service)
            options: dict[str, Any] = {"handle_signals": False}
            with contextlib.ExitStack() as stack:
                if executor_on:
                    options["executor"] = stack.enter_context(_executor(dask, service))
                from dcm_processor_service.store.records import Peer

                aet, rest = peer.split("@")
                host, port = rest.rsplit(":", 1)
                reports.append(
                    Runner(
                        manifest,
                        db_provider="postgresql",
                        db_url=url,
                        db_name=name,
                        peer=Peer(name="pacs", aet=aet, host=host, port=int(port)),
                        **options,
                    ).run([tmp_path / "in"])
                )
            received.append(scp.datasets())
    local, remote = reports
    assert local.ok and remote.ok
    assert remote.counts() == local.counts()
    assert local.counts()[JobStatus.SUCCEEDED] == 2 * (1 + 1 + 1 + 1 + 2)  # + the hooks

    def normalised(report: RunReport) -> list[tuple[str, str, str, Any]]:
        out = []
        for job in report.jobs:
            if job.object_kind == "session":
                continue  # the hooks' results name the session
            result = json.loads(json.dumps(job.result))
            if isinstance(result, dict):
                for key in ("sop_instance_uid", "sent"):
                    if key in result:
                        result[key] = "<uid>"
                if "peer" in result:
                    result["peer"][2] = "<port>"
            out.append((job.object_label, job.job_name, str(job.status), result))
        return sorted(out, key=lambda t: json.dumps(t, default=str))

    assert normalised(remote) == normalised(local)
    assert len(received[0]) == len(received[1]) == 2
    docs = [sorted(bytes(d.EncapsulatedDocument) for d in r.values()) for r in received]
    assert docs[0] == docs[1]
    titles = [sorted(str(d.SeriesDescription) for d in r.values()) for r in received]
    assert titles[0] == titles[1]


def test_a_worker_killed_mid_job_is_retried_on_the_other_and_nothing_is_doubled(
    cluster: tuple[DaskCluster, PostgresServer], pg: Any, tmp_path: Path
) -> None:
    dask, _ = cluster
    service = _one_job_service(tmp_path, "slow", {"seconds": 4})
    for n in (1, 2):
        sample_series(tmp_path / "in" / f"s{n}", description=f"series {n}")
    store = pg()
    box: dict[str, Any] = {}
    with _executor(dask, service) as executor:
        thread = threading.Thread(
            target=lambda: box.update(
                report=_run(service, tmp_path / "in", store, executor=executor, keep_session=True)
            )
        )
        thread.start()
        with open_store("postgresql", store[0], store[1]) as db:
            deadline = time.monotonic() + 90
            starts: list[dict[str, Any]] = []
            while len(starts) < 1 and time.monotonic() < deadline:
                sessions = db.list_sessions()
                rows = db.list_data(sessions[0].id) if sessions else []
                starts = [
                    json.loads(r["value_json"]) for r in rows if r["name"].startswith("start-")
                ]
                time.sleep(0.1)
            assert starts, "no job started"
            victim = starts[0]
            index = next(i for i, w in enumerate(dask.workers) if w.process.pid == victim["ppid"])
            # the job runs from the worker's own copy of the service, in its own home
            assert victim["code"].startswith(str(dask.workers[index].home))
            assert victim["home"] == str(dask.workers[index].home)
            dask.kill_worker(index)
            thread.join(120)
            # the job process died with its worker (it did not run on beside the retry)
            deadline = time.monotonic() + 10
            while pid_alive(victim["pid"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not pid_alive(victim["pid"])
            report: RunReport = box["report"]
            session_id = report.sessions[0].session_id
            files = db.list_files(session_id)
            data = db.list_data(session_id)
            jobs = db.list_jobs(session_id)
    dask.start_worker(index)
    assert report.ok, [(j.job_name, j.status, j.error) for j in report.jobs]
    slow = [j for j in report.jobs if j.job_name == "slow"]
    assert len(slow) == 2 and all(j.status == JobStatus.SUCCEEDED for j in slow)
    retried = [j for j in slow if j.attempts == 2]
    assert len(retried) == 1, [(j.attempts, j.worker) for j in slow]
    assert retried[0].worker == dask.workers[1 - index].dask_address
    assert retried[0].result["ppid"] == dask.workers[1 - index].process.pid
    # one output per job, none lost, none doubled; the file is the last attempt's
    assert sorted((f.name, f.job_id) for f in files) == sorted(("out.txt", j.job_id) for j in slow)
    results = [r for r in data if r["name"] == "result"]
    assert sorted(r["job_id"] for r in results) == sorted(j.job_id for j in slow)
    assert len({json.loads(r["value_json"]) for r in results}) == 2
    retried_file = next(f for f in files if f.job_id == retried[0].job_id)
    assert retried_file.sha256 == _sha(json.dumps(retried[0].result).encode())
    assert [j.status for j in jobs if j.name == "slow"] == [JobStatus.SUCCEEDED] * 2


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_a_killed_runner_resumes_and_every_job_succeeds_exactly_once_after(
    cluster: tuple[DaskCluster, PostgresServer], pg: Any, tmp_path: Path
) -> None:
    dask, _ = cluster
    service = _one_job_service(tmp_path, "step", {"seconds": 1.5})
    for n in range(6):
        sample_series(tmp_path / "in" / f"s{n}", description=f"series {n}")
    url, name = pg()
    store_args = ["--db-provider", "postgresql", "--db-url", url, "--db-name", name]
    first = _cli(
        *store_args, "run", str(service), str(tmp_path / "in"), "--cluster", dask.address,
        "--keep-session",
    )  # fmt: skip
    with open_store("postgresql", url, name) as db:
        deadline = time.monotonic() + 120
        succeeded = 0
        while succeeded < 2 and time.monotonic() < deadline and first.poll() is None:
            sessions = db.list_sessions()
            jobs = db.list_jobs(sessions[0].id) if sessions else []
            succeeded = sum(1 for j in jobs if j.name == "step" and j.status == "succeeded")
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=30)
        dask.wait_idle()  # what the dead runner's tasks still did is done
        (session,) = db.list_sessions()
        before = {j.id: j for j in db.list_jobs(session.id)}
        done_before = {k for k, j in before.items() if j.status == JobStatus.SUCCEEDED}
        steps = {k for k, j in before.items() if j.name == "step"}
        assert len(steps) == 6 and 2 <= len(done_before & steps) < 6
        run_id = session.meta["run"]
        resumed_at = time.time()
        second = _cli(
            *store_args, "--json", "run", str(service), "--resume", run_id, "--cluster",
            dask.address, "--keep-session",
        )  # fmt: skip
        out, err = second.communicate(timeout=180)
        assert second.returncode == 0, err
        report = json.loads(out)
        after = {j.id: j for j in db.list_jobs(session.id)}
        executions = [
            json.loads(r["value_json"])
            for r in db.list_data(session.id)
            if r["name"].startswith("exec-")
        ]
    assert report["run_id"] == run_id and report["resumed_done"] == len(done_before & steps)
    assert report["cluster"]["scheduler"] == dask.address
    assert set(after) == set(before)  # no job record added: every job reused its record
    assert all(j.status == JobStatus.SUCCEEDED for j in after.values())
    for key in done_before:  # not run again: the record is untouched
        assert after[key].started_at == before[key].started_at
        assert after[key].finished_at == before[key].finished_at
    for key in steps:
        runs_after = [e for e in executions if e["job_id"] == key and e["t"] >= resumed_at]
        assert len(runs_after) == (0 if key in done_before else 1), key
        if key not in done_before:
            assert after[key].started_at > before[key].created_at


def test_gpu_jobs_land_on_the_gpu_worker_and_a_missing_resource_fails_at_once(
    cluster: tuple[DaskCluster, PostgresServer], pg: Any, tmp_path: Path
) -> None:
    dask, _ = cluster
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "gpu", "workerEntry": "svc_workers.where", "resources": {"GPU": 1}},
            {"jobName": "cpu", "workerEntry": "svc_workers.where"},
            {"jobName": "tpu", "workerEntry": "svc_workers.where", "resources": {"TPU": 1}},
            {"jobName": "after-tpu", "workerEntry": "svc_workers.where", "dependsOn": "tpu"},
        ],
        workers=WORKERS,
    )
    for n in range(3):
        sample_series(tmp_path / "in" / f"s{n}", description=f"series {n}")
    url, name = pg()
    started = time.monotonic()
    proc = _cli(
        "--db-provider", "postgresql", "--db-url", url, "--db-name", name, "--json",
        "run", str(service), str(tmp_path / "in"), "--cluster", dask.address,
    )  # fmt: skip
    out, err = proc.communicate(timeout=180)
    elapsed = time.monotonic() - started
    assert proc.returncode == 1, err
    report = json.loads(out)
    jobs = [j for s in report["sessions"] for j in s["jobs"]]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for job in jobs:
        by_name.setdefault(job["job_name"], []).append(job)
    gpu_worker = dask.workers[0]
    assert len(by_name["gpu"]) == 3
    for job in by_name["gpu"]:
        assert job["status"] == "succeeded"
        assert job["worker"] == gpu_worker.dask_address
        assert job["result"]["ppid"] == gpu_worker.process.pid
    assert all(j["status"] == "succeeded" for j in by_name["cpu"])
    for job in by_name["tpu"]:
        assert job["status"] == "failed"
        assert "no worker of the cluster advertises TPU=1" in job["error"]
        assert "--resources" in job["error"]
    assert all(j["status"] == "skipped" for j in by_name["after-tpu"])
    assert "dashboard" in report["cluster"]
    assert elapsed < 120  # it did not wait for a worker that will never come


def test_cluster_needs_a_store_every_worker_reaches(tmp_path: Path) -> None:
    service = write_service(tmp_path / "svc", [{"jobName": "j"}])
    sample_series(tmp_path / "in")
    proc = _cli(
        "--store", str(tmp_path / "store"), "run", str(service), str(tmp_path / "in"),
        "--cluster", "tcp://127.0.0.1:1",
    )  # fmt: skip
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "--cluster needs a store every worker reaches" in err
    assert "postgresql" in err


def test_local_workers_mode_runs_the_jobs_on_an_in_process_cluster(tmp_path: Path) -> None:
    service = write_service(
        tmp_path / "svc",
        [{"jobName": "where", "workerEntry": "svc_workers.where"}],
        workers=WORKERS,
    )
    for n in (1, 2):
        sample_series(tmp_path / "in" / f"s{n}", description=f"series {n}")
    proc = _cli(
        "--store", str(tmp_path / "store"), "--json", "run", str(service), str(tmp_path / "in"),
        "--workers", "2",
    )  # fmt: skip
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    report = json.loads(out)
    jobs = [j for s in report["sessions"] for j in s["jobs"] if j["job_name"] == "where"]
    assert len(jobs) == 2 and all(j["status"] == "succeeded" for j in jobs)
    assert all(j["worker"].startswith("tcp://127.0.0.1:") and j["attempts"] == 1 for j in jobs)
    # each job ran from the worker's unpacked copy of the service, not from its folder
    assert all("dcm-service-services" in j["result"]["code"] for j in jobs)
    assert not any(j["result"]["code"].startswith(str(service)) for j in jobs)
    assert report["cluster"]["dashboard"].startswith("http://127.0.0.1:")


def test_resume_refuses_an_unknown_run_and_input_with_it(tmp_path: Path) -> None:
    service = write_service(tmp_path / "svc", [{"jobName": "j"}])
    sample_series(tmp_path / "in")
    store = ["--store", str(tmp_path / "store")]
    first = _cli(*store, "--json", "run", str(service), str(tmp_path / "in"), "--keep-session")
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    run_id = json.loads(out)["run_id"]
    both = _cli(*store, "run", str(service), str(tmp_path / "in"), "--resume", run_id)
    _, err = both.communicate(timeout=60)
    assert both.returncode == 2 and "not both" in err
    unknown = _cli(*store, "run", str(service), "--resume", "nosuchrun")
    _, err = unknown.communicate(timeout=60)
    assert unknown.returncode != 0
    assert "--resume 'nosuchrun': no unfinished session of that run" in err
    assert run_id in err  # the kept session's run is listed
    # the kept session's run resumes: its one job succeeded, so nothing runs again
    again = _cli(*store, "--json", "run", str(service), "--resume", run_id)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    report = json.loads(out)
    assert report["resumed_done"] == 1
    assert [j["job_name"] for j in report["sessions"][0]["jobs"]] == ["j", "post-services"]


def test_manifest_resources_and_worker_become_placement(tmp_path: Path) -> None:
    service = write_service(
        tmp_path / "ok",
        [{"jobName": "seg", "resources": {"GPU": 1, "MEM": 2.5}, "worker": "gpu-env"}],
    )
    (job,) = load_manifest(service).jobs
    assert job.placement == {"GPU": 1.0, "MEM": 2.5, "gpu-env": 1.0}
    bad = write_service(tmp_path / "bad", [{"jobName": "seg", "resources": {"GPU": -1}}])
    with pytest.raises(ServiceError, match=r"resources.*'GPU': -1 - write a resource name"):
        load_manifest(bad)
    assert unmet_resources({"GPU": 1}, {"a": {"GPU": 1}}) is None
    why = unmet_resources({"GPU": 2}, {"tcp://a:1": {"GPU": 1}, "tcp://b:1": {}})
    assert why is not None and "GPU=2" in why and "tcp://b:1: no resources" in why


def test_heartbeat_keeps_beating_for_the_jobs_of_sessions_still_open(tmp_path: Path) -> None:
    # several sessions are open at once on a cluster: closing one must not stop the
    # heartbeat of another one's running jobs (their records would look abandoned)
    from dcm_processor_service.runner.ownership import Heartbeat

    url = str(tmp_path / "store")
    with open_store("sqlite", url) as db:
        first, second = db.ensure_session(), db.ensure_session()
        job_a = db.create_job(first.id, "a", "stable-series")
        job_b = db.create_job(second.id, "b", "stable-series")
        with Heartbeat(lambda: open_store("sqlite", url), interval=0.05) as beat:
            beat.watch(first.id, job_a.id)
            beat.watch(second.id, job_b.id)
            beat.release(second.id)  # the second session closes first
            time.sleep(0.2)
            seen = db.get_job(job_a.id).heartbeat_at
            time.sleep(0.3)
            assert seen is not None and db.get_job(job_a.id).heartbeat_at > seen
