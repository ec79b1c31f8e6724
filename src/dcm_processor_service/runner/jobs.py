"""A session's jobs handed to an executor, and their records.

The runner builds a session's job graph (:mod:`.graph`) and gives it to
:class:`SessionJobs`: each node becomes a :class:`~.executors.base.JobTask` (the
platform's worker keywords, environment and timeout), every task is submitted to the
executor with the tasks it comes after, and what the executor reports is recorded as it
comes - in the store (``pending`` -> ``running`` -> ``succeeded`` / ``failed`` /
``skipped`` / ``timed-out``, with the error and the output's tail), in the
:class:`~.report.JobRun`, in the heartbeat and to the observer. :class:`JobRecorder`
records a job (or a hook) as started, owned by this runner.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Container, Sequence
from dataclasses import dataclass
from typing import Any

from .._context import RuntimeContext, context_environ
from .._errors import DcmProcessorError
from .._safe_text import bound_text
from ..store.base import Store
from ..store.records import JobStatus, utcnow
from .executors.base import SKIPPED, Executor, JobOutcome, JobTask
from .export import safe_dir_name
from .graph import SUCCEEDED, JobNode
from .ownership import Heartbeat
from .platform import main_file_hazard
from .progress import RunObserver
from .report import JobRun, SessionRun
from .stopping import stop_reason

__all__ = ["JobRecorder", "JobSettings", "SessionJobs"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSettings:
    """What every job of a run gets besides its own arguments: the service's name, the
    store (as the job processes reach it) and the jobs' logging level."""

    service_name: str
    db_provider: str
    db_url: str
    db_name: str | None
    log_level: str = "INFO"


class JobRecorder:
    """Records that a job (or a hook) of this runner starts: its record ``running``,
    owned by ``owner``, in the heartbeat, and to the observer."""

    def __init__(
        self, store: Store, owner: str, heartbeat: Heartbeat, observer: RunObserver
    ) -> None:
        self.store = store
        self.owner = owner
        self.heartbeat = heartbeat
        self.observer = observer

    def started(self, run: JobRun) -> None:
        """Record ``run`` as running, owned by this runner, and tell the observer."""
        assert run.job_id is not None
        run.started_at = utcnow()
        run.status = JobStatus.RUNNING
        self.store.update_job(
            run.job_id,
            status=JobStatus.RUNNING,
            started_at=run.started_at,
            owner=self.owner,
            heartbeat_at=run.started_at,
        )
        self.heartbeat.watch(run.session_id, run.job_id)
        self.observer.job_started(run)


class SessionJobs:
    """One session's job graph handed to an executor: the tasks submitted, and the
    executor's reports (a :class:`~.executors.base.JobListener`) turned into job
    records, :class:`~.report.JobRun` updates and observer events."""

    def __init__(
        self,
        recorder: JobRecorder,
        settings: JobSettings,
        session: SessionRun,
        ctx: RuntimeContext,
        nodes: list[JobNode],
    ) -> None:
        self.recorder = recorder
        self.store = recorder.store
        self.observer = recorder.observer
        self.settings = settings
        self.session = session
        self.ctx = ctx
        self.nodes = {node.key: node for node in nodes}
        self.running: set[str] = set()
        self.waiting: set[str] = set()  # submitted, outcome not recorded yet

    def submit(self, executor: Executor, done: Sequence[JobNode] = ()) -> None:
        """Submit every job of the graph (in graph order) but those ``done`` already (a
        resumed run: they count as succeeded); the runner then passes each outcome the
        executor gives back to :meth:`record` (see :class:`~.window.SessionWindow`)."""
        finished = {node.key for node in done}
        for node in done:
            self.session.jobs.append(node.run)
        for node in self.nodes.values():
            if node.key not in finished:
                executor.submit(self.task(node, finished))
                self.waiting.add(node.key)

    @property
    def complete(self) -> bool:
        """Whether every submitted job's outcome was recorded."""
        return not self.waiting

    def record(self, key: str, outcome: JobOutcome) -> None:
        """Record the outcome of job ``key`` (the executor gave it back)."""
        self.running.discard(key)
        self.waiting.discard(key)
        if outcome.status == SKIPPED:
            self.skipped(self.nodes[key])
        else:
            self.finished(self.nodes[key], outcome)

    def stopped(self, exc: BaseException) -> None:
        """The run stops (``exc``): the jobs still running are recorded ``failed``."""
        for key in self.running:
            with contextlib.suppress(Exception):
                self.store.update_job(
                    key,
                    status=JobStatus.FAILED,
                    finished_at=utcnow(),
                    error=f"{stop_reason(exc)} - the job's processes were ended",
                )

    def task(self, node: JobNode, finished: Container[str] = ()) -> JobTask:
        """What the executor needs to run ``node``'s job (``finished``: jobs that
        succeeded already - it does not wait for them)."""
        run, job = node.run, node.job
        assert job.worker is not None
        kwargs: dict[str, Any] = {  # exactly the platform's worker keywords
            "job_name": job.name,
            "worker_id": None,  # the platform's default worker: no worker record
            "worker_type": None,
            "service_id": self.settings.service_name,
            "event": run.event,
            "session_id": run.session_id,
            "headers": node.headers,
            "added_params": node.added_params,
            "params": job.params,
            "db_provider": self.settings.db_provider,
            "db_name": self.settings.db_name,
            "db_url": self.settings.db_url,
            "job_id": node.key,
        }
        job_ctx = self.ctx.replace(job_id=node.key, job_event=run.event, job_name=job.name)
        return JobTask(
            key=node.key,
            name=f"{safe_dir_name(job.name)}-{node.key[:8]}",
            group=run.session_id,
            entry=job.worker,
            what=f"workerEntry of job {job.name!r}",
            kwargs=kwargs,
            env=context_environ(job_ctx),
            timeout=job.timeout,
            timeout_text=job.timeout_text,
            log_level=self.settings.log_level,
            after=tuple(k for k in node.after if k not in finished),
            resources=job.placement,
        )

    # ----------------------------------------------------------- JobListener
    def job_started(self, key: str) -> None:
        """The job's dependencies succeeded and its process starts: record it."""
        node = self.nodes[key]
        run = node.run
        self.session.jobs.append(run)
        self.recorder.started(run)
        self.running.add(key)
        texts = {
            "params": node.job.params,
            "headers": node.headers,
            "added_params": node.added_params,
        }
        hazard = next(filter(None, (main_file_hazard(v, k) for k, v in texts.items())), None)
        if hazard:
            logger.warning(
                "job %s (%s %s): %s - it runs here, but on the platform the worker's generated "
                "main file cannot carry that text (the job would fail, or get a changed value)",
                run.job_name,
                run.object_kind,
                run.object_label,
                hazard,
            )

    def job_output(self, key: str, line: str) -> None:
        """A line the job printed: to the observer."""
        self.observer.job_output(self.nodes[key].run, line)

    def job_running(self, key: str, elapsed: float) -> None:
        """The job still runs: read the progress it reported, tell the observer."""
        run = self.nodes[key].run
        try:
            run.progress = self.store.get_job(key).progress
        except DcmProcessorError:
            return
        self.observer.job_progress(run, run.progress, elapsed)

    # -------------------------------------------------------------- outcomes
    def skipped(self, node: JobNode) -> None:
        """A job it needs did not succeed: record it ``skipped`` with the reason."""
        run = node.run
        self.session.jobs.append(run)
        reason = node.blocked_reason() or "a job it comes after did not succeed"
        run.status, run.reason = JobStatus.SKIPPED, reason
        run.finished_at = utcnow()
        self.store.update_job(
            node.key, status=JobStatus.SKIPPED, error=reason, finished_at=run.finished_at
        )
        logger.info(
            "job %s skipped for %s %s: %s", run.job_name, run.object_kind, run.object_label, reason
        )
        self.observer.job_finished(run)

    def finished(self, node: JobNode, outcome: JobOutcome) -> None:
        """The job's process ended (or timed out): record its outcome."""
        run = node.run
        self.recorder.heartbeat.job_ended(node.key)
        run.status = outcome.status
        run.result = outcome.result
        run.error = outcome.error
        run.traceback = outcome.traceback
        run.duration = outcome.duration
        run.log_path = str(outcome.log_path) if outcome.log_path else None
        run.attempts = outcome.attempts
        run.worker = outcome.worker
        run.finished_at = utcnow()
        detail = run.stored_error()
        if outcome.status != SUCCEEDED and outcome.output_tail and not outcome.traceback:
            detail = bound_text(
                f"{outcome.error}\n--- output tail ---\n" + "\n".join(outcome.output_tail[-20:])
            )
        record = self.store.update_job(
            node.key, status=run.status, finished_at=run.finished_at, error=detail
        )
        run.progress = record.progress
        logger.info(
            "job %s (%s %s) %s in %.1fs%s",
            run.job_name,
            run.object_kind,
            run.object_label,
            run.status,
            run.duration,
            f": {run.error}" if run.error else "",
        )
        self.observer.job_finished(run)
