"""What a run did: :class:`JobRun`, :class:`SessionRun`, :class:`RunReport` and their JSON.

The runner fills these in as it works and returns the :class:`RunReport`; the observer
(:class:`~.progress.RunObserver`) is handed the :class:`JobRun` and :class:`SessionRun`
objects as they change; ``dcm-service run --json`` prints :meth:`RunReport.to_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from .._safe_text import bound_text
from ..store.records import JobStatus

__all__ = ["FILTERED_OUT", "JobRun", "RunReport", "SessionRun"]

#: Job states that count as a failure of the run.
_FAILED = (JobStatus.FAILED, JobStatus.TIMED_OUT)
#: ``reason`` of a job whose registry callback returned false for an object (in
#: :attr:`SessionRun.not_scheduled`).
FILTERED_OUT = "registry callback returned false"


@dataclass
class JobRun:
    """One job (or hook, or registry callback) of a run, and how it went."""

    session_id: str
    job_name: str
    event: str
    object_kind: str
    object_id: str | None
    object_label: str
    status: JobStatus = JobStatus.PENDING
    job_id: str | None = None
    reason: str | None = None
    error: str | None = None
    traceback: str | None = None
    result: Any = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration: float | None = None
    progress: dict[str, Any] = field(default_factory=dict)
    log_path: str | None = None
    #: times the job was started (more than 1: its cluster worker died and it was retried)
    attempts: int = 0
    #: the cluster worker it ran on last (``None`` on this machine)
    worker: str | None = None

    def fail(self, error: str, traceback: str | None = None) -> None:
        """Mark the run failed with ``error`` (and ``traceback``), both bounded."""
        self.status = JobStatus.FAILED
        self.error = bound_text(error)
        self.traceback = bound_text(traceback) if traceback else None

    def stored_error(self) -> str | None:
        """The text kept in the job record's ``error``: the traceback or the error."""
        text = self.traceback or self.error
        return bound_text(text) if text else None

    @property
    def failed(self) -> bool:
        """Whether this counts as a failure of the run."""
        return self.status in _FAILED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = asdict(self)
        for key in ("started_at", "finished_at"):
            data[key] = data[key].isoformat() if data[key] else None
        return data


@dataclass
class SessionRun:
    """One session (one patient) of a run."""

    session_id: str
    patient_label: str
    files: int = 0
    stored: int = 0
    series: int = 0
    jobs: list[JobRun] = field(default_factory=list)
    #: Jobs not scheduled for an object: ``job_name``, ``event``, ``object``, ``reason``
    #: (and ``traceback`` when the registry callback raised).
    not_scheduled: list[dict[str, str]] = field(default_factory=list)
    exported_to: str | None = None
    exported_files: list[str] = field(default_factory=list)
    export_failed: list[dict[str, str]] = field(default_factory=list)
    cleaned_up: bool = False
    kept_reason: str | None = None

    @property
    def ok(self) -> bool:
        """No job of the session failed or timed out, and its export succeeded."""
        return not any(j.failed for j in self.jobs) and not self.export_failed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        data = {k: v for k, v in asdict(self).items() if k != "jobs"}
        data["jobs"] = [j.to_dict() for j in self.jobs]
        data["ok"] = self.ok
        return data


@dataclass
class RunReport:
    """The outcome of a run."""

    service: str
    version: str
    store: str
    peer: str | None
    input_files: int = 0
    stored: int = 0
    ingest_failed: list[tuple[str, str]] = field(default_factory=list)
    #: input entries deliberately not read (hidden entries, DICOMDIRs met in a folder)
    input_skipped: list[tuple[str, str]] = field(default_factory=list)
    #: files refused because their series/study is another patient's (also in ingest_failed)
    patient_conflicts: list[tuple[str, str]] = field(default_factory=list)
    sessions: list[SessionRun] = field(default_factory=list)
    output_dir: str | None = None
    duration: float = 0.0
    #: the run's id (in its sessions' meta ``run``): ``dcm-service run --resume RUN_ID``
    run_id: str | None = None
    #: jobs that had succeeded before this run resumed the run (not run again)
    resumed_done: int = 0

    @property
    def jobs(self) -> list[JobRun]:
        """Every job of every session, in run order."""
        return [j for s in self.sessions for j in s.jobs]

    @property
    def ok(self) -> bool:
        """No job failed or timed out, no export failed, and no input file was refused
        as a patient conflict."""
        return not self.patient_conflicts and all(s.ok for s in self.sessions)

    @property
    def callback_errors(self) -> list[dict[str, str]]:
        """Registry callbacks that raised (each counted as false, as on the platform)."""
        return [n for s in self.sessions for n in s.not_scheduled if n.get("traceback")]

    @property
    def exit_code(self) -> int:
        """0 when everything succeeded, 1 when a job or an export failed or a patient
        conflict was found."""
        return 0 if self.ok else 1

    def counts(self) -> dict[str, int]:
        """How many jobs ended in each status."""
        out: dict[str, int] = {}
        for job in self.jobs:
            out[job.status] = out.get(job.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``dcm-service run --json`` prints)."""
        return {
            "service": self.service,
            "version": self.version,
            "run_id": self.run_id,
            "resumed_done": self.resumed_done,
            "store": self.store,
            "peer": self.peer,
            "input_files": self.input_files,
            "stored": self.stored,
            "ingest_failed": [{"path": p, "reason": r} for p, r in self.ingest_failed],
            "input_skipped": [{"path": p, "reason": r} for p, r in self.input_skipped],
            "patient_conflicts": [{"path": p, "reason": r} for p, r in self.patient_conflicts],
            "sessions": [s.to_dict() for s in self.sessions],
            "output_dir": self.output_dir,
            "duration": round(self.duration, 3),
            "counts": self.counts(),
            "ok": self.ok,
            "exit_code": self.exit_code,
        }
