"""The executor seam: how the runner hands a job over to be run, and gets its outcome.

The runner decides *what* runs (the registry callbacks, the job graph, the records in
the store, the hooks: all in its own process); an :class:`Executor` decides *where and
how* each job's process runs. The runner submits every job of a session's graph, in an
order where a job comes after the jobs it needs, each as a :class:`JobTask` naming the
tasks (``after``) that must succeed first, then reads the :class:`JobOutcome` s as they
come (:meth:`Executor.outcomes`). While a job runs, the executor tells the runner through
a :class:`JobListener` (in the runner's process): started, a line of output, still
running.

:class:`~.local.LocalExecutor` runs the jobs one after the other on this machine, each
in its own process (:mod:`..job_process`). Another executor (a cluster's) implements the
same three methods; it may run independent tasks at the same time.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..._errors import ServiceError
from ...store.records import JobStatus
from ..entries import EntryPoint

__all__ = ["SKIPPED", "Executor", "JobListener", "JobOutcome", "JobTask", "check_after"]

#: Status of a task that did not run because a task it comes ``after`` did not succeed.
SKIPPED = JobStatus.SKIPPED


@dataclass(frozen=True)
class JobTask:
    """One job to run: everything its process needs, and what it waits for.

    ``key`` is unique among the tasks of an executor (the runner uses the job's id; it
    also marks the job's processes). ``name`` is a short file-name-safe label (its log
    and result files); ``group`` names the tasks that share a work folder (a session).
    ``entry``, ``what``, ``kwargs`` and ``log_level`` are the job process's spec (see
    :mod:`..job_process`); ``env`` the process's environment (the platform's variables);
    ``after`` the keys of the tasks that must succeed before this one runs;
    ``resources`` the worker resources it needs on a cluster (``{"GPU": 1.0}``; an
    executor on one machine ignores them).
    """

    key: str
    name: str
    group: str
    entry: EntryPoint
    what: str
    kwargs: dict[str, Any]
    env: dict[str, str]
    timeout: float
    timeout_text: str
    log_level: str = "INFO"
    after: tuple[str, ...] = ()
    resources: dict[str, float] = field(default_factory=dict)

    def process_spec(self, result_path: Path) -> dict[str, Any]:
        """The JSON object the job process reads from its stdin."""
        return {
            "entry_point": self.entry.to_spec(),
            "what": self.what,
            "kwargs": self.kwargs,
            "log_level": self.log_level,
            "result_path": str(result_path),
        }


def check_after(task: JobTask, submitted: Container[str]) -> None:
    """Refuse ``task`` when a task it comes after was not submitted before it."""
    unknown = [k for k in task.after if k not in submitted]
    if unknown:
        raise ServiceError(
            f"task {task.key!r} comes after {', '.join(map(repr, unknown))}, not submitted "
            "yet - submit a task after the tasks it comes after"
        )


@dataclass
class JobOutcome:
    """What came out of one job: ``status`` ``succeeded``, ``failed``, ``timed-out``, or
    ``skipped`` (it did not run: a task it comes ``after`` did not succeed).
    ``attempts``: how many times it was started (a cluster starts it again when its
    worker dies); ``worker``: where it ran last (a cluster worker's address)."""

    status: JobStatus
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    exit_code: int | None = None
    duration: float = 0.0
    output_tail: list[str] = field(default_factory=list)
    log_path: Path | None = None
    attempts: int = 1
    worker: str | None = None


class JobListener(Protocol):
    """What an executor tells the runner while a task runs (called in the runner's
    process; :meth:`job_output` possibly from another thread)."""

    def job_started(self, key: str) -> None:
        """Task ``key`` is about to start (its dependencies succeeded)."""

    def job_output(self, key: str, line: str) -> None:
        """A line task ``key`` printed (secrets masked, bounded)."""

    def job_running(self, key: str, elapsed: float) -> None:
        """Task ``key`` still runs, ``elapsed`` seconds after it started (about every
        poll interval)."""


class Executor(Protocol):
    """Runs the runner's jobs. A task is submitted with its dependencies (``after``);
    its outcome comes back from :meth:`outcomes`."""

    def submit(self, task: JobTask) -> None:
        """Accept ``task``. It runs once every task in ``task.after`` has ended, and only
        if each of them succeeded; otherwise its outcome is :data:`SKIPPED`. The tasks it
        comes after are submitted before it."""

    def outcomes(self, listener: JobListener) -> Iterator[tuple[str, JobOutcome]]:
        """``(key, outcome)`` of each submitted task as it ends - a task always after the
        tasks it comes after - until every task submitted so far has been given back.
        The runner is waiting in here while jobs run; an exception raised here (a signal)
        leaves no process of a task behind."""
        ...

    def cancel(self) -> None:
        """The run stops: end what still runs and forget the tasks not given back."""
