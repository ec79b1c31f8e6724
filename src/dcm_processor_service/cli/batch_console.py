"""Progress of a long batch on a cluster (``dcm-service run --cluster / --workers``).

Many jobs run at once there, so a line per job start would scroll past unread.
:class:`BatchConsole` prints one line per session as it finishes (its jobs by status,
retries, time), a line per job that did not succeed, and keeps one overall status line
(on a terminal: redrawn in place; elsewhere: printed when a session finishes):
sessions done of all, jobs succeeded / failed / running, and the time left estimated
from the sessions done so far.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

from ..store.records import JobStatus
from .console import Console
from .formatting import duration, first_line

__all__ = ["BatchConsole"]


class BatchConsole(Console):
    """Per-session lines and an overall progress bar (see the module doc)."""

    def __init__(self, stream: TextIO, *, show_output: bool, enabled: bool = True) -> None:
        super().__init__(stream, show_output=show_output, enabled=enabled)
        self.sessions_total = 0
        self.sessions_done = 0
        self.jobs_done = 0
        self.jobs_failed = 0
        self.running: set[int] = set()
        self._started = time.monotonic()

    def overall(self) -> str:
        """The overall status: sessions, jobs, time left."""
        total = max(self.sessions_total, self.sessions_done)
        fraction = self.sessions_done / total if total else 0.0
        eta = ""
        if self.sessions_done and total > self.sessions_done:
            elapsed = time.monotonic() - self._started
            eta = f"  ETA {duration(elapsed / self.sessions_done * (total - self.sessions_done))}"
        return (
            f"{self._bar(fraction)} sessions {self.sessions_done}/{total}  jobs "
            f"{self.jobs_done} done, {self.jobs_failed} failed, {len(self.running)} running"
            f"{eta}"
        )

    def sessions_planned(self, total: int) -> None:
        self.sessions_total = total
        self._draw(self.overall())

    def session_started(self, session: Any) -> None:
        self._draw(self.overall())

    def job_started(self, job: Any) -> None:
        if job.object_kind != "session":
            self.running.add(id(job))
            self._draw(self.overall())

    def job_progress(self, job: Any, progress: dict[str, Any], elapsed: float) -> None:
        self._draw(self.overall())

    def job_finished(self, job: Any) -> None:
        if job.object_kind == "session":
            if job.status != JobStatus.SUCCEEDED:
                self.line(f"  {self._sym(job.status)} {job.job_name}: {first_line(job.error)}")
            return
        self.running.discard(id(job))
        if job.failed:
            self.jobs_failed += 1
            self.line(
                f"  {self._sym(job.status)} {job.job_name} ({job.object_kind} "
                f"{job.object_label}) {job.status}: {job.reason or first_line(job.error)}"
            )
        else:
            self.jobs_done += 1
        self._draw(self.overall())

    def session_finished(self, session: Any) -> None:
        self.sessions_done += 1
        jobs = [j for j in session.jobs if j.object_kind != "session"]
        counts: dict[str, int] = {}
        for job in jobs:
            counts[str(job.status)] = counts.get(str(job.status), 0) + 1
        retried = sum(1 for j in jobs if j.attempts > 1)
        text = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no jobs"
        state = (
            "cleaned up" if session.cleaned_up else f"kept ({session.kept_reason or 'see above'})"
        )
        symbol = self._sym(JobStatus.SUCCEEDED if session.ok else JobStatus.FAILED)
        self.line(
            f"{symbol} session {session.session_id[:12]}  patient {session.patient_label}: "
            f"{text}{f', {retried} retried' if retried else ''}; {state}"
        )
        if not self.tty:
            self.line(f"  {self.overall()}")
        self._draw(self.overall())

    def message(self, text: str) -> None:
        self.line(f"  {text}")
