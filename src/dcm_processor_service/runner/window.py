"""Several sessions' jobs at once on an executor that runs tasks in parallel (a cluster).

On one machine the runner works on one session after the other. A cluster would then
idle while a session's last job runs, and a batch of one-series patients would use
one worker. :class:`SessionWindow` keeps up to ``size`` sessions open instead, all in
the runner's one thread: it opens sessions (pre-services hook, job graph, jobs
submitted) until ``size`` are open, reads the executor's outcomes - each goes to the
session that owns the job - and closes a session (export, post-services hook) as soon
as its last job ended, then opens the next one.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from .._errors import ServiceError
from .executors.base import Executor
from .jobs import SessionJobs

__all__ = ["SessionWindow"]

Item = TypeVar("Item")


class _Router:
    """The one listener of the executor: passes each call on to the job's session."""

    def __init__(self) -> None:
        self.owner: dict[str, SessionJobs] = {}

    def job_started(self, key: str) -> None:
        self.owner[key].job_started(key)

    def job_output(self, key: str, line: str) -> None:
        self.owner[key].job_output(key, line)

    def job_running(self, key: str, elapsed: float) -> None:
        self.owner[key].job_running(key, elapsed)


class SessionWindow(Generic[Item]):
    """Runs sessions ``size`` at a time on ``executor``. ``open_session(item)`` opens
    one and returns its :class:`SessionJobs` with the jobs submitted (``None``: no job
    to wait for - it is closed at once); ``close_session(item)`` closes it."""

    def __init__(
        self,
        executor: Executor,
        open_session: Callable[[Item], SessionJobs | None],
        close_session: Callable[[Item], None],
        size: int,
    ) -> None:
        self.executor = executor
        self.open_session = open_session
        self.close_session = close_session
        self.size = max(1, size)

    def run(self, items: Sequence[Item]) -> None:
        """Open, run and close every item's session."""
        pending = collections.deque(items)
        router = _Router()
        active: dict[int, tuple[Item, SessionJobs]] = {}
        try:
            while pending or active:
                while pending and len(active) < self.size:
                    item = pending.popleft()
                    jobs = self.open_session(item)
                    if jobs is None or jobs.complete:
                        self.close_session(item)
                        continue
                    active[id(jobs)] = (item, jobs)
                    router.owner.update(dict.fromkeys(jobs.waiting, jobs))
                if not active:
                    continue
                for key, outcome in self.executor.outcomes(router):
                    jobs = router.owner.pop(key)
                    jobs.record(key, outcome)
                    if jobs.complete:
                        item, _ = active.pop(id(jobs))
                        self.close_session(item)
                        break  # room for the next session
                else:
                    raise ServiceError(
                        f"the executor gave back no outcome for {len(router.owner)} submitted "
                        "job(s) - an executor must give back every task it accepted"
                    )
        except BaseException as exc:  # a signal: stop what runs, record the running jobs
            self.executor.cancel()
            for _, jobs in active.values():
                jobs.stopped(exc)
            raise
