"""What the runner reports while it works, and to whom.

The runner never prints. It calls the methods of a :class:`RunObserver`; the CLI
passes one that draws progress on the terminal, tests pass one that records events,
and the default does nothing. Every method has a no-op default, so an observer
overrides only what it needs.
"""

from __future__ import annotations

from typing import Any

from .report import JobRun, SessionRun

__all__ = ["RunObserver"]


class RunObserver:
    """Receives the runner's events (all methods optional)."""

    def ingest_started(self, total_files: int) -> None:
        """Ingest of ``total_files`` files begins."""

    def ingest_advanced(self, done_files: int, total_files: int) -> None:
        """``done_files`` of ``total_files`` files are ingested."""

    def ingest_finished(self, stored: int, failed: list[tuple[str, str]]) -> None:
        """Ingest ended: ``stored`` instances stored, ``failed`` ``(path, reason)``."""

    def sessions_planned(self, total: int) -> None:
        """The run will work on ``total`` sessions (known once the input is ingested,
        or the sessions of a resumed run are found)."""

    def session_started(self, session: SessionRun) -> None:
        """A session (one patient) opens."""

    def session_finished(self, session: SessionRun) -> None:
        """A session's jobs, export and clean-up are done."""

    def job_started(self, job: JobRun) -> None:
        """A job starts (its process is launched)."""

    def job_progress(self, job: JobRun, progress: dict[str, Any], elapsed: float) -> None:
        """Called about every poll interval while ``job`` runs, with what it reported
        through :func:`~dcm_processor_service.report_progress` so far."""

    def job_output(self, job: JobRun, line: str) -> None:
        """A line the job process printed (stdout or stderr)."""

    def job_finished(self, job: JobRun) -> None:
        """A job ended (succeeded, failed, timed-out) or was skipped."""

    def message(self, text: str) -> None:
        """A notice for the user (also logged)."""
