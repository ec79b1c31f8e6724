"""The executor seam: the runner hands each job over with its dependencies and records
the outcome; the local executor runs them in real processes, skipping what cannot run.

No mock: the recording executor below wraps the real :class:`LocalExecutor` and only
notes what passes through the seam.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dcm_processor_service import ServiceError
from dcm_processor_service.runner import (
    JobOutcome,
    JobTask,
    LocalExecutor,
    Runner,
    load_manifest,
)
from dcm_processor_service.runner.entries import parse_entry
from dcm_processor_service.runner.executors.base import JobListener
from dcm_processor_service.runner.platform import WORKER_KEYWORDS
from dcm_processor_service.store import open_store
from support.services import CONTEXT_VARIABLES, sample_series, sample_two_studies, write_service


class RecordingExecutor:
    """A :class:`LocalExecutor` that notes the tasks submitted and the events it reports."""

    def __init__(self, work_dir: Path) -> None:
        self.inner = LocalExecutor(work_dir, poll_interval=0.05)
        self.tasks: list[JobTask] = []
        self.events: list[tuple[str, str]] = []

    def submit(self, task: JobTask) -> None:
        self.tasks.append(task)
        self.inner.submit(task)

    def outcomes(self, listener: JobListener) -> Iterator[tuple[str, JobOutcome]]:
        recorder = self

        class Tee:
            def job_started(self, key: str) -> None:
                recorder.events.append(("started", key))
                listener.job_started(key)

            def job_output(self, key: str, line: str) -> None:
                listener.job_output(key, line)

            def job_running(self, key: str, elapsed: float) -> None:
                listener.job_running(key, elapsed)

        for key, outcome in self.inner.outcomes(Tee()):
            self.events.append((outcome.status, key))
            yield key, outcome

    def cancel(self) -> None:
        self.inner.cancel()


class Listener:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.lines: list[str] = []

    def job_started(self, key: str) -> None:
        self.events.append(("started", key))

    def job_output(self, key: str, line: str) -> None:
        self.lines.append(line)

    def job_running(self, key: str, elapsed: float) -> None:
        pass


def test_the_runner_submits_the_platforms_graph_with_each_jobs_dependencies(
    tmp_path: Path,
) -> None:
    sample_two_studies(tmp_path / "in")
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "patient-job", "events": ["stable-patient"]},
            {"jobName": "study-job", "events": ["stable-study"]},
            {"jobName": "series-second", "dependsOn": ["series-first"]},
            {"jobName": "series-first"},
        ],
    )
    executor = RecordingExecutor(tmp_path / "work")
    report = Runner(
        load_manifest(service),
        db_url=str(tmp_path / "store") + os.sep,
        executor=executor,
    ).run([tmp_path / "in"])
    assert report.ok, report.to_dict()

    runs = [j for j in report.jobs if j.job_name not in ("pre-services", "post-services")]
    assert [t.key for t in executor.tasks] == [j.job_id for j in runs]
    by_key = {t.key: t for t in executor.tasks}
    submitted: set[str] = set()
    for task in executor.tasks:  # every task comes after tasks submitted before it
        assert set(task.after) <= submitted, task.name
        submitted.add(task.key)
        assert tuple(task.kwargs) == WORKER_KEYWORDS
        assert task.kwargs["job_id"] == task.key and task.group == task.kwargs["session_id"]
        assert set(task.env) >= CONTEXT_VARIABLES - {"DCM-PROCESSOR-SERVICE-PEER-ID"}  # no peer
        assert task.env["DCM-PROCESSOR-SERVICE-JOB-ID"] == task.key
        assert task.env["DCM-PROCESSOR-SERVICE-JOB-NAME"] == task.kwargs["job_name"]

    def tasks(name: str) -> list[JobTask]:
        return [t for t in executor.tasks if t.kwargs["job_name"] == name]

    def study_of(task: JobTask) -> str:
        return str(task.kwargs["headers"]["StudyInstanceUID"])

    # within a series: dependsOn; a series job waits for nothing the executor runs
    for task in tasks("series-second"):
        (dep,) = task.after
        assert by_key[dep].kwargs["job_name"] == "series-first"
        assert by_key[dep].kwargs["headers"]["_id"] == task.kwargs["headers"]["_id"]
    assert all(t.after == () for t in tasks("series-first"))
    # a study's job waits for every series job of that study, and only those
    for task in tasks("study-job"):
        expected = {
            t.key
            for t in tasks("series-first") + tasks("series-second")
            if study_of(t) == study_of(task)
        }
        assert set(task.after) == expected
    assert sorted(len(t.after) for t in tasks("study-job")) == [2, 4]
    # the patient's job waits for every study job
    (patient,) = tasks("patient-job")
    assert set(patient.after) == {t.key for t in tasks("study-job")}
    # each job was started once, before its outcome came back
    assert executor.events == [
        event
        for task in executor.tasks
        for event in (("started", task.key), ("succeeded", task.key))
    ]


def test_a_job_after_a_failed_one_is_skipped_without_starting(tmp_path: Path) -> None:
    sample_series(tmp_path / "in")
    service = write_service(
        tmp_path / "svc",
        [
            {"jobName": "first", "workerEntry": "svc_workers.fail"},
            {"jobName": "second", "dependsOn": "first"},
            {"jobName": "other"},
        ],
    )
    executor = RecordingExecutor(tmp_path / "work")
    report = Runner(
        load_manifest(service), db_url=str(tmp_path / "store") + os.sep, executor=executor
    ).run([tmp_path / "in"])
    keys = {t.kwargs["job_name"]: t.key for t in executor.tasks}
    assert executor.events == [
        ("started", keys["first"]),
        ("failed", keys["first"]),
        ("skipped", keys["second"]),
        ("started", keys["other"]),
        ("succeeded", keys["other"]),
    ]
    second = next(j for j in report.jobs if j.job_name == "second")
    assert (second.status, second.reason) == ("skipped", "dependency 'first' failed")
    assert second.started_at is None
    with open_store("sqlite", str(tmp_path / "store") + os.sep) as store:
        record = store.get_job(keys["second"])
    assert (record.status, record.error) == ("skipped", "dependency 'first' failed")


WORK = textwrap.dedent(
    """
    def ok(**kwargs):
        print("ran", kwargs["n"])
        return kwargs["n"]

    def boom(**kwargs):
        raise ValueError("no luck")
    """
)


def _task(tmp_path: Path, key: str, func: str, *, after: tuple[str, ...] = ()) -> JobTask:
    (tmp_path / "work.py").write_text(WORK, encoding="utf-8")
    return JobTask(
        key=key,
        name=key,
        group="g",
        entry=parse_entry(f"work.py:{func}", tmp_path),
        what=f"task {key}",
        kwargs={"n": len(key)},
        env={},
        timeout=60,
        timeout_text="1m",
        after=after,
    )


def test_local_executor_runs_in_order_and_skips_after_a_failure(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "work")
    executor.submit(_task(tmp_path, "a", "boom"))
    executor.submit(_task(tmp_path, "bb", "ok", after=("a",)))
    executor.submit(_task(tmp_path, "ccc", "ok"))
    executor.submit(_task(tmp_path, "dddd", "ok", after=("ccc", "bb")))
    executor.submit(_task(tmp_path, "eeeee", "ok", after=("ccc",)))
    listener = Listener()
    got: list[tuple[str, Any]] = [
        (key, outcome.status) for key, outcome in executor.outcomes(listener)
    ]
    assert got == [
        ("a", "failed"),
        ("bb", "skipped"),
        ("ccc", "succeeded"),
        ("dddd", "skipped"),  # one of the two it comes after was skipped
        ("eeeee", "succeeded"),
    ]
    assert listener.events == [("started", "a"), ("started", "ccc"), ("started", "eeeee")]
    assert listener.lines == ["ran 3", "ran 5"]
    assert list(executor.outcomes(listener)) == []  # every outcome was given back once
    assert not (tmp_path / "work" / "g" / "bb.log").exists()  # a skipped task never started
    assert (tmp_path / "work" / "g" / "ccc.log").read_text() == "ran 3\n"
    assert oct((tmp_path / "work" / "g").stat().st_mode & 0o777) == "0o700"


def test_local_executor_outcome_of_a_failed_task(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "work")
    executor.submit(_task(tmp_path, "a", "boom"))
    ((key, outcome),) = list(executor.outcomes(Listener()))
    assert key == "a" and outcome.status == "failed" and outcome.exit_code == 1
    assert outcome.error == "ValueError: no luck"
    assert outcome.traceback is not None and 'work.py", line 7, in boom' in outcome.traceback
    assert outcome.log_path == tmp_path / "work" / "g" / "a.log"


def test_local_executor_refuses_a_task_before_what_it_comes_after(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "work")
    with pytest.raises(ServiceError, match=r"task 'b' comes after 'a', not submitted yet"):
        executor.submit(_task(tmp_path, "b", "ok", after=("a",)))
    executor.submit(_task(tmp_path, "a", "ok"))
    executor.submit(_task(tmp_path, "b", "ok", after=("a",)))
    assert [k for k, _ in executor.outcomes(Listener())] == ["a", "b"]


def test_local_executor_cancel_forgets_the_tasks_not_run(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "work")
    executor.submit(_task(tmp_path, "a", "ok"))
    executor.submit(_task(tmp_path, "b", "ok", after=("a",)))
    executor.cancel()
    assert list(executor.outcomes(Listener())) == []
    with pytest.raises(ServiceError, match="comes after 'a', not submitted yet"):
        executor.submit(_task(tmp_path, "b", "ok", after=("a",)))
