"""The local runner: manifests, scheduling, job processes, context, progress, clean-up.

Every job runs in a real child process with the platform's environment; services are
small Python files written into ``tmp_path`` (``support.services``).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from dcm_processor_service import DicomInputError, InvalidInputError, ServiceError, use_context
from dcm_processor_service.index.ingest import ingest
from dcm_processor_service.progress import heartbeat, report_progress
from dcm_processor_service.runner import Runner, RunObserver, load_manifest
from dcm_processor_service.runner.manifest import manifest_for_function
from dcm_processor_service.store import Peer, open_store
from support.services import (
    CONTEXT_VARIABLES,
    FIRST_STUDY,
    SECOND_STUDY,
    sample_series,
    sample_two_studies,
    write_service,
)


class Recorder(RunObserver):
    """Keeps every event the runner reports."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.progress: list[dict[str, Any]] = []

    def job_started(self, job: Any) -> None:
        self.events.append(("started", job.job_name))

    def job_progress(self, job: Any, progress: dict[str, Any], elapsed: float) -> None:
        self.progress.append(dict(progress))

    def job_output(self, job: Any, line: str) -> None:
        self.events.append(("output", line))

    def job_finished(self, job: Any) -> None:
        self.events.append(("finished", job.job_name, job.status))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "input"
    sample_series(folder)
    return folder


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


def run(service: Path, inputs: list[Path], store_dir: Path, **options: Any):
    manifest = load_manifest(service)
    observer = options.pop("observer", Recorder())
    options.setdefault("work_dir", store_dir.parent / "work")
    runner = Runner(manifest, db_url=str(store_dir) + os.sep, observer=observer, **options)
    return runner.run(inputs)


def statuses(report) -> dict[str, str]:
    return {j.job_name: j.status for j in report.jobs}


# ----------------------------------------------------------------------- runs
def test_filters_added_params_and_dependency_chain(
    tmp_path: Path, data: Path, store_dir: Path
) -> None:
    order_file = tmp_path / "order.txt"
    service = write_service(
        tmp_path / "svc",
        [
            {
                "jobName": "third",
                "registryEntry": "svc_filters.yes",
                "workerEntry": "svc_workers.append_order",
                "dependsOn": ["second"],
                "params": {"order_file": str(order_file)},
            },
            {
                "jobName": "first",
                "registryEntry": "svc_filters.with_params",
                "workerEntry": "svc_workers.append_order",
                "params": {"order_file": str(order_file)},
                "sortPosition": 5,
            },
            {
                "jobName": "second",
                "registryEntry": "svc_filters.as_list",
                "workerEntry": "svc_workers.append_order",
                "dependsOn": "first",
                "params": {"order_file": str(order_file)},
            },
            {"jobName": "filtered", "registryEntry": "svc_filters.no"},
            {"jobName": "inspect", "registryEntry": "svc_filters.with_params", "sortPosition": 9},
        ],
    )
    report = run(service, [data], store_dir, keep_session=True)
    assert report.ok, report.to_dict()
    assert order_file.read_text().split() == ["first", "second", "third"]
    assert [j.job_name for j in report.jobs if j.event == "stable-series"] == [
        "first",
        "second",
        "third",
        "inspect",
    ]
    seen = next(j for j in report.jobs if j.job_name == "inspect").result
    # added_params: what the registry callbacks of this event returned, by job name; the
    # callbacks run in sortPosition order (first has 5: third and second ran before it)
    assert seen["added_params"]["first"] == {
        "from_filter": "first",
        "instances": 4,
        "seen_before": ["second", "third"],
    }
    assert seen["added_params"]["second"] == {"as": "list"}
    assert seen["added_params"]["third"] == {}
    assert "filtered" not in seen["added_params"]
    assert report.sessions[0].not_scheduled == [
        {
            "job_name": "filtered",
            "event": "stable-series",
            "object": report.jobs[1].object_label,
            "reason": "registry callback returned false",
        }
    ]
    with open_store("sqlite", str(store_dir) + os.sep) as store:
        jobs = store.list_jobs(report.sessions[0].session_id)
        assert {j.name: j.status for j in jobs} == {
            "pre-services": "succeeded",
            "first": "succeeded",
            "second": "succeeded",
            "third": "succeeded",
            "inspect": "succeeded",
        }
        assert all(j.started_at and j.finished_at and j.finished_at >= j.started_at for j in jobs)


def test_worker_arguments_and_environment(
    tmp_path: Path, data: Path, store_dir: Path, monkeypatch
) -> None:
    # a stale context of the parent must not leak into the job (either spelling)
    monkeypatch.setenv("DCM_PROCESSOR_SERVICE_SESSION_ID", "stale")
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "rec", "registryEntry": "svc_filters.with_params", "params": {"alpha": 1}},
        ],
        name="env-service",
    )
    with open_store("sqlite", str(store_dir) + os.sep) as store:
        peer = store.put_peer(Peer(name="pacs", aet="PACS", host="127.0.0.1", port=11112))
    report = run(service, [data], store_dir, peer="pacs", keep_session=True)
    assert report.ok, report.to_dict()
    job = next(j for j in report.jobs if j.job_name == "rec")
    seen = job.result
    session_id = report.sessions[0].session_id
    env = seen["env"]
    assert set(env) == CONTEXT_VARIABLES  # all 9, hyphenated, nothing else
    assert env["DCM-PROCESSOR-SERVICE-SESSION-ID"] == session_id
    assert env["DCM-PROCESSOR-SERVICE-JOB-ID"] == job.job_id
    assert env["DCM-PROCESSOR-SERVICE-JOB-EVENT"] == "stable-series"
    assert env["DCM-PROCESSOR-SERVICE-JOB-NAME"] == "rec"
    assert env["DCM-PROCESSOR-SERVICE-JOB-SERVICE-NAME"] == "env-service"
    assert env["DCM-PROCESSOR-SERVICE-PEER-ID"] == peer.id
    assert env["DCM-PROCESSOR-SERVICE-DB-PROVIDER"] == "sqlite"
    assert env["DCM-PROCESSOR-SERVICE-DB-URL"] == str(store_dir.resolve()) + os.sep
    assert env["DCM-PROCESSOR-SERVICE-DB-NAME"] == "dcm-processor"
    # the callback arguments of SPEC 2.2
    assert seen["session_id"] == session_id and seen["job_name"] == "rec"
    assert seen["params"] == {"alpha": 1}
    assert seen["added_params"]["rec"]["from_filter"] == "rec"
    # the rest of the platform's worker keywords (no worker record: the default worker)
    assert seen["kwargs"] == {
        "worker_id": None,
        "worker_type": None,
        "service_id": "env-service",
        "event": "stable-series",
        "db_provider": "sqlite",
        "db_name": "dcm-processor",
        "db_url": str(store_dir.resolve()) + os.sep,
        "job_id": job.job_id,
    }
    headers = seen["headers"]
    for key in (
        "_id",
        "PatientUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "PeerUID",
        "Instances",
        "Metadata",
        "CreatedAt",
        "UpdatedAt",
    ):
        assert key in headers
    assert headers["PeerUID"] == peer.id and len(headers["Instances"]) == 4
    assert headers["Metadata"]["Modality"] == "CT" and headers["Metadata"]["PatientID"] == "PAT-1"
    assert Path(seen["cwd"]).is_dir()  # a scratch folder per job


def test_headers_per_event_in_platform_order(tmp_path: Path, store_dir: Path) -> None:
    study = "1.2.826.0.1.3680043.8.498.1"
    sample_series(tmp_path / "in" / "a", study_uid=study, description="first")
    sample_series(tmp_path / "in" / "b", study_uid=study, description="second", slices=2)
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "patient-job", "events": ["stable-patient"]},
            {"jobName": "study-job", "events": ["stable-study"]},
            {
                "jobName": "series-job",
                "events": ["stable-series"],
                "registryEntry": "svc_filters.min_slices",
                "params": {"min_slices": 3},
            },
        ],
    )
    report = run(service, [tmp_path / "in"], store_dir)
    assert report.ok
    names = [(j.job_name, j.event) for j in report.jobs]
    assert names == [
        ("pre-services", "session"),
        ("series-job", "stable-series"),
        ("study-job", "stable-study"),
        ("patient-job", "stable-patient"),
        ("post-services", "session"),
    ]
    assert len(report.sessions[0].not_scheduled) == 1  # the 2-slice series
    by_name = {
        j.job_name: j.result["headers"] for j in report.jobs if j.result and "headers" in j.result
    }
    assert len(by_name["study-job"]["Series"]) == 2
    assert by_name["study-job"]["Metadata"]["ModalitiesInStudy"] == ["CT"]
    assert len(by_name["patient-job"]["Studies"]) == 1
    assert by_name["patient-job"]["Metadata"]["ModalitiesInPatient"] == ["CT"]


def test_the_platforms_job_graph_for_a_patient_with_two_studies(
    tmp_path: Path, store_dir: Path
) -> None:
    sample_two_studies(tmp_path / "in")
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "patient-job", "events": ["stable-patient"]},
            {"jobName": "study-job", "events": ["stable-study"]},
            {"jobName": "series-job", "events": ["stable-series"]},
        ],
    )
    report = run(service, [tmp_path / "in"], store_dir)
    assert report.ok, report.to_dict()
    assert [j.job_name for j in report.jobs] == [
        "pre-services",
        "series-job",
        "series-job",
        "study-job",
        "series-job",
        "study-job",
        "patient-job",
        "post-services",
    ]
    # per study: the jobs of its series, then its study job; the patient's after all
    study_of = [j.result["headers"]["StudyInstanceUID"] for j in report.jobs[1:6]]
    assert study_of[0] == study_of[1] == study_of[2] != study_of[3] == study_of[4]
    assert {study_of[0], study_of[3]} == {FIRST_STUDY, SECOND_STUDY}
    assert len(report.jobs[3].result["headers"]["Series"]) == 2
    assert len(report.jobs[6].result["headers"]["Studies"]) == 2
    assert report.sessions[0].series == 3


def test_text_the_platforms_main_file_cannot_carry_is_warned_about(
    tmp_path: Path, store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sample_series(tmp_path / "in", description='T1 "post contrast"')
    service = write_service(tmp_path / "svc", [{"jobName": "j"}])
    report = run(service, [tmp_path / "in"], store_dir)
    assert report.ok  # it runs here
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "headers['Metadata']['SeriesDescription'] contains a double quote - it runs here, but "
        "on the platform the worker's generated main file cannot carry that text" in w
        for w in warnings
    ), warnings


def test_one_session_per_patient_and_cleanup(tmp_path: Path, store_dir: Path) -> None:
    sample_series(tmp_path / "in" / "p1", patient_id="P1")
    sample_series(tmp_path / "in" / "p2", patient_id="P2")
    service = write_service(
        tmp_path / "svc", [{"jobName": "value", "workerEntry": "svc_workers.store_value"}]
    )
    report = run(service, [tmp_path / "in"], store_dir, output_dir=tmp_path / "out")
    assert report.ok and len(report.sessions) == 2
    assert sorted(s.patient_label for s in report.sessions) == ["P1", "P2"]
    assert all(s.cleaned_up for s in report.sessions)
    with open_store("sqlite", str(store_dir) + os.sep) as store:
        assert store.list_sessions() == []
        assert store.list_series() == []  # the post-services hook removed the images
    for label in ("P1", "P2"):
        assert (
            tmp_path / "out" / label / "value" / "hello.txt"
        ).read_bytes() == b"hello from value"
        values = json.loads((tmp_path / "out" / label / "session-data.json").read_text())
        assert values[0]["name"] == "value" and values[0]["value"] == 42


def test_keep_session_keeps_everything(tmp_path: Path, data: Path, store_dir: Path) -> None:
    service = write_service(
        tmp_path / "svc",
        [
            {
                "jobName": "producer",
                "workerEntry": "svc_workers.store_value",
                "params": {"value": {"n": 7}},
            },
            {
                "jobName": "consumer",
                "workerEntry": "svc_workers.read_value",
                "dependsOn": ["producer"],
                "params": {"from_job": "producer"},
            },
        ],
    )
    report = run(service, [data], store_dir, keep_session=True)
    assert report.ok
    assert next(j for j in report.jobs if j.job_name == "consumer").result == {"n": 7}
    session = report.sessions[0]
    assert not session.cleaned_up and session.kept_reason == "--keep-session"
    with open_store("sqlite", str(store_dir) + os.sep) as store:
        assert [s.id for s in store.list_sessions()] == [session.session_id]
        assert [f.name for f in store.list_files(session.session_id)] == ["hello.txt"]
        assert len(store.list_series(session_id=session.session_id)) == 1


def test_failing_job_traceback_and_dependents_skipped(
    tmp_path: Path, data: Path, store_dir: Path
) -> None:
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "boom", "workerEntry": "svc_workers.fail"},
            {"jobName": "after", "dependsOn": ["boom"]},
            {"jobName": "after-after", "dependsOn": ["after"]},
            {"jobName": "independent"},
            {"jobName": "study-after", "events": ["stable-study"]},
            {"jobName": "patient-after", "events": ["stable-patient"]},
        ],
    )
    report = run(service, [data], store_dir)
    assert not report.ok and report.exit_code == 1
    assert statuses(report) == {
        "pre-services": "succeeded",
        "boom": "failed",
        "after": "skipped",
        "after-after": "skipped",
        "independent": "succeeded",
        "study-after": "skipped",
        "patient-after": "skipped",
    }
    boom = next(j for j in report.jobs if j.job_name == "boom")
    assert boom.error == "RuntimeError: worker exploded on purpose"
    assert 'svc_workers.py", line' in boom.traceback and "in fail" in boom.traceback
    assert "job_process.py" not in boom.traceback  # starts at the service's code
    reasons = {j.job_name: j.reason for j in report.jobs}
    assert reasons["after"] == "dependency 'boom' failed"
    assert reasons["after-after"] == "dependency 'after' skipped"
    series = boom.object_label
    # the platform's graph: a study's jobs wait for every series job of the study, the
    # patient's jobs for every study job
    assert reasons["study-after"] == f"waits for series job 'boom' ({series}), which failed"
    study_after = next(j for j in report.jobs if j.job_name == "study-after")
    assert reasons["patient-after"] == (
        f"waits for study job 'study-after' ({study_after.object_label}), which skipped"
    )
    session = report.sessions[0]
    assert not session.cleaned_up and "failed" in session.kept_reason
    with open_store("sqlite", str(store_dir) + os.sep) as store:
        records = {j.name: j for j in store.list_jobs(session.session_id)}
        assert records["boom"].status == "failed"
        assert "RuntimeError: worker exploded on purpose" in records["boom"].error
        assert "Traceback" in records["boom"].error
        assert (
            records["after"].status == "skipped"
            and records["after"].error == "dependency 'boom' failed"
        )
        assert records["after"].started_at is None and records["after"].finished_at is not None


def test_cleanup_on_failure(tmp_path: Path, data: Path, store_dir: Path) -> None:
    service = write_service(
        tmp_path / "svc", [{"jobName": "boom", "workerEntry": "svc_workers.fail"}]
    )
    report = run(service, [data], store_dir, cleanup_on_failure=True)
    assert report.exit_code == 1 and report.sessions[0].cleaned_up


@pytest.mark.parametrize(
    ("worker", "error"),
    [
        ("svc_workers.exit_nonzero", "the job called sys.exit(3)"),
        ("svc_workers.crash", "exited with code 7 without a result - last output: about to crash"),
        ("svc_workers.not_there", "has no attribute 'not_there'"),
        (
            "svc_workers.plain",
            "workerEntry of job 'bad' 'svc_workers.plain' cannot be called the way the platform "
            "calls it (got an unexpected keyword argument 'worker_id') - it passes the keywords "
            "job_name, worker_id, worker_type, service_id, event, session_id, headers, "
            "added_params, params, db_provider, db_name, db_url, job_id",
        ),
        (
            "svc_workers.unstorable",
            "the worker returned a value the platform cannot store (Object of type set is not "
            "JSON serializable) - it writes the result with json.dump",
        ),
    ],
)
def test_job_process_failures_are_reported(
    tmp_path: Path, data: Path, store_dir: Path, worker: str, error: str
) -> None:
    service = write_service(tmp_path / "svc", [{"jobName": "bad", "workerEntry": worker}])
    report = run(service, [data], store_dir)
    bad = next(j for j in report.jobs if j.job_name == "bad")
    assert bad.status == "failed"
    assert error in bad.error
    assert report.exit_code == 1


def test_timeout_kills_the_job_and_its_children(
    tmp_path: Path, data: Path, store_dir: Path
) -> None:
    pid_file = tmp_path / "pids.json"
    service = write_service(
        tmp_path / "svc",
        [
            {
                "jobName": "slow",
                "workerEntry": "svc_workers.sleep",
                "timeout": "2s",
                "params": {"pid_file": str(pid_file)},
            },
            {"jobName": "after", "dependsOn": ["slow"]},
        ],
    )
    start = time.monotonic()
    report = run(service, [data], store_dir)
    assert time.monotonic() - start < 20
    slow = next(j for j in report.jobs if j.job_name == "slow")
    assert slow.status == "timed-out"
    assert slow.error == "timed out after 2s - the job process was killed"
    assert 1.5 < slow.duration < 10
    assert statuses(report)["after"] == "skipped"
    assert report.exit_code == 1
    pids = json.loads(pid_file.read_text())
    for pid in pids.values():
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), f"process {pid} survived the timeout"
    with open_store("sqlite", str(store_dir) + os.sep) as store:
        record = store.get_job(slow.job_id)
        assert record.status == "timed-out" and record.finished_at is not None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped) counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_progress_reported_by_a_job_is_live_and_stored(
    tmp_path: Path, data: Path, store_dir: Path
) -> None:
    service = write_service(
        tmp_path / "svc", [{"jobName": "steps", "workerEntry": "svc_workers.progress"}]
    )
    recorder = Recorder()
    report = run(
        service, [data], store_dir, keep_session=True, observer=recorder, poll_interval=0.05
    )
    assert report.ok
    percents = [p.get("percent") for p in recorder.progress if p.get("percent") is not None]
    assert percents, "the runner showed no progress while the job ran"
    assert percents == sorted(percents) and len(set(percents)) >= 2
    job = next(j for j in report.jobs if j.job_name == "steps")
    with open_store("sqlite", str(store_dir) + os.sep) as store:
        progress = store.get_job(job.job_id).progress
    assert (
        progress["percent"] == 100
        and progress["stage"] == "step-4"
        and progress["message"] == "4 of 4"
    )
    assert "heartbeat" in progress and "updated_at" in progress


def test_report_progress_api(tmp_path: Path, store_dir: Path) -> None:
    assert report_progress(50, stage="x") is None  # outside a job: nothing, no error
    assert heartbeat() is None
    url = str(store_dir) + os.sep
    with open_store("sqlite", url) as store:
        store.ensure_session("s1")
        job = store.create_job("s1", "j", "stable-series")
    with use_context(
        db_provider="sqlite",
        db_url=url,
        session_id="s1",
        job_id=job.id,
        job_name="j",
        job_event="stable-series",
    ):
        assert report_progress(150, stage="a", message="m")["percent"] == 100
        assert report_progress(-5, stage="b")["percent"] == 0
        assert report_progress(10) is None  # throttled: only the percentage moved, just now
        assert heartbeat() is not None
        with pytest.raises(InvalidInputError, match="percent"):
            report_progress("half")
    with open_store("sqlite", url) as store:
        progress = store.get_job(job.id).progress
    assert progress["stage"] == "b" and progress["message"] == "m" and progress["percent"] == 0


def test_job_output_is_captured(tmp_path: Path, data: Path, store_dir: Path) -> None:
    service = write_service(
        tmp_path / "svc", [{"jobName": "noisy", "workerEntry": "svc_workers.noisy"}]
    )
    recorder = Recorder()
    report = run(service, [data], store_dir, observer=recorder, work_dir=tmp_path / "work")
    lines = [e[1] for e in recorder.events if e[0] == "output"]
    assert "a printed line from the job" in lines
    assert any("a log line from the job" in ln for ln in lines)
    log = Path(next(j for j in report.jobs if j.job_name == "noisy").log_path)
    assert log.parent.parent == tmp_path / "work"
    assert "a printed line from the job" in log.read_text()


def test_registry_callback_that_raises_counts_as_false(
    tmp_path: Path, data: Path, store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "guarded", "registryEntry": "svc_filters.raises"},
            {"jobName": "dependent", "dependsOn": ["guarded"]},
            {"jobName": "other"},
        ],
    )
    report = run(service, [data], store_dir)
    assert report.ok and report.exit_code == 0  # as on the platform: the job is not scheduled
    assert statuses(report) == {
        "pre-services": "succeeded",
        "other": "succeeded",
        "post-services": "succeeded",
    }
    reasons = {n["job_name"]: n for n in report.sessions[0].not_scheduled}
    assert reasons["guarded"]["reason"] == (
        "registry callback 'svc_filters.raises' raised ValueError: filter exploded "
        "(counted as false, as on the platform)"
    )
    assert 'svc_filters.py", line' in reasons["guarded"]["traceback"]
    assert reasons["dependent"]["reason"] == (
        "dependsOn 'guarded', which was not scheduled for this series "
        "(its registry callback raised)"
    )
    assert "traceback" not in reasons["dependent"]
    assert report.callback_errors == [reasons["guarded"]]
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("ValueError: filter exploded" in m and "Traceback" in m for m in logged)


def test_disabled_jobs_do_not_run(tmp_path: Path, data: Path, store_dir: Path) -> None:
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "off", "disabled": True, "workerEntry": "svc_workers.fail"},
            {"jobName": "needs-off", "dependsOn": ["off"]},
            {"jobName": "on"},
        ],
    )
    report = run(service, [data], store_dir)
    assert statuses(report) == {
        "pre-services": "succeeded",
        "on": "succeeded",
        "post-services": "succeeded",
    }
    assert report.sessions[0].not_scheduled[0]["reason"] == "dependsOn 'off', which is disabled"


def test_two_services_with_the_same_module_names(
    tmp_path: Path, data: Path, store_dir: Path
) -> None:
    first = write_service(tmp_path / "one", [{"jobName": "j", "registryEntry": "svc_filters.yes"}])
    second = write_service(
        tmp_path / "two",
        [{"jobName": "j", "registryEntry": "svc_filters.yes"}],
        filters="def yes(**kwargs):\n    return False\n",
    )
    assert statuses(run(first, [data], store_dir))["j"] == "succeeded"
    assert "j" not in statuses(run(second, [data], store_dir))  # its own svc_filters ran


def test_file_entry_points(tmp_path: Path, data: Path, store_dir: Path) -> None:
    service = write_service(
        tmp_path / "svc",
        [
            {
                "jobName": "by-file",
                "workerEntry": "svc_workers.py:store_value",
                "registryEntry": "svc_filters.py:yes",
            },
        ],
    )
    report = run(service, [data], store_dir)
    assert report.ok and next(j for j in report.jobs if j.job_name == "by-file").result == 42


def test_single_function_manifest(tmp_path: Path, data: Path, store_dir: Path) -> None:
    (tmp_path / "work.py").write_text(
        "def go(session_id, job_name, headers, params, added_params, **kw):\n"
        "    return [job_name, params, kw['event']]\n"
    )
    manifest = manifest_for_function(
        f"{tmp_path / 'work.py'}:go", event="stable-study", params={"p": 1}
    )
    report = Runner(manifest, db_url=str(store_dir) + os.sep, work_dir=tmp_path / "work").run(
        [data]
    )
    assert report.ok
    assert next(j for j in report.jobs if j.job_name == "go").result == [
        "go",
        {"p": 1},
        "stable-study",
    ]


def test_params_overrides(tmp_path: Path, data: Path, store_dir: Path) -> None:
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "a", "params": {"x": 1, "y": 1}},
            {"jobName": "b", "params": {"x": 1}},
        ],
    )
    report = run(service, [data], store_dir, params={None: {"x": 2}, "a": {"y": [3]}})
    results = {j.job_name: j.result["params"] for j in report.jobs if j.event == "stable-series"}
    assert results == {"a": {"x": 2, "y": [3]}, "b": {"x": 2}}
    with pytest.raises(ServiceError, match="unknown job"):
        run(service, [data], store_dir, params={"nope": {"x": 1}})


def test_bad_input(tmp_path: Path, store_dir: Path) -> None:
    service = write_service(tmp_path / "svc", [{"jobName": "j"}])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="input folder .* is empty"):
        run(service, [empty], store_dir)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("not DICOM at all")
    (junk / "zero.dcm").write_bytes(b"")
    with pytest.raises(
        DicomInputError, match=r"no DICOM instances in the input: 2 file\(s\) read, none is DICOM"
    ):
        run(service, [junk], store_dir)
    with pytest.raises(InvalidInputError, match="does not exist"):
        run(service, [tmp_path / "missing"], store_dir)


def test_some_non_dicom_files_are_reported_not_fatal(
    tmp_path: Path, data: Path, store_dir: Path
) -> None:
    (data / "README.txt").write_text("hello")
    service = write_service(tmp_path / "svc", [{"jobName": "j"}])
    report = run(service, [data], store_dir)
    assert report.ok and report.stored == 4
    assert [Path(p).name for p, _ in report.ingest_failed] == ["README.txt"]


def test_dicomdir_input(tmp_path: Path, store_dir: Path) -> None:
    from pydicom.data.data_manager import DATA_ROOT

    dicomdir = Path(DATA_ROOT) / "test_files" / "dicomdirtests" / "DICOMDIR"
    service = write_service(
        tmp_path / "svc", [{"jobName": "j", "registryEntry": "svc_filters.ct_only"}]
    )
    report = run(service, [dicomdir], store_dir)
    assert report.ok and report.stored > 10 and len(report.sessions) >= 2


def test_report_to_dict_is_json(tmp_path: Path, data: Path, store_dir: Path) -> None:
    service = write_service(tmp_path / "svc", [{"jobName": "j"}])
    report = run(service, [data], store_dir)
    text = json.dumps(report.to_dict())
    assert re.search(r'"exit_code": 0', text) and report.to_dict()["counts"] == {"succeeded": 3}


def test_ingested_elsewhere_does_not_leak_into_the_session(
    tmp_path: Path, data: Path, store_dir: Path
) -> None:
    other = tmp_path / "other"
    sample_series(other, patient_id="OTHER")
    with open_store("sqlite", str(store_dir) + os.sep) as store:
        ingest(other, store=store)
    service = write_service(tmp_path / "svc", [{"jobName": "j"}])
    report = run(service, [data], store_dir)
    assert [
        j.result["headers"]["Metadata"]["PatientID"] for j in report.jobs if j.job_name == "j"
    ] == ["PAT-1"]
