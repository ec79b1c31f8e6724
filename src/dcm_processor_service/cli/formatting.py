"""Text for humans: tables, durations, sizes, and the summary of a run.

Pure functions from values to strings; printing them is :mod:`.console`'s job.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = [
    "duration",
    "failure_details",
    "first_line",
    "job_detail",
    "run_summary",
    "size",
    "table",
]

#: "not scheduled" lines a summary shows before "... and N more".
NOT_SCHEDULED_SHOWN = 20


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Left-aligned columns under ``headers`` and a dashed rule; ``None`` prints empty."""
    cells = [[str(h) for h in headers]] + [
        ["" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def duration(seconds: float | None) -> str:
    """``12.3s``, ``4m05s`` or ``2h03m``; empty for ``None``."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def first_line(text: str | None, limit: int = 70) -> str:
    """The line of ``text`` that says most (a traceback's last, else the first), cut
    to ``limit`` characters."""
    if not text:
        return ""
    line = text.strip().splitlines()[-1] if "Traceback" in text else text.strip().splitlines()[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def size(n: int) -> str:
    """``n`` bytes as ``512 B``, ``1.5 KB``, ... ``GB``."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def job_detail(job: Any, limit: int = 60) -> str:
    """A job's reason or error, else its result as short JSON (nothing for a session
    job); a job started more than once (its cluster worker died) says so first."""
    retried = f"{job.attempts} attempts, last on {job.worker}; " if job.attempts > 1 else ""
    if job.reason or job.error:
        return retried + (job.reason or first_line(job.error, limit))
    if retried:
        return retried.rstrip("; ")
    if job.result is None or job.object_kind == "session":
        return ""
    text = json.dumps(job.result, default=str, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_summary(report: Any) -> str:
    """The table and closing lines ``dcm-service run`` prints for a run report."""
    from ..runner.report import FILTERED_OUT

    rows = []
    for session in report.sessions:
        for job in session.jobs:
            rows.append(
                [
                    session.session_id[:12],
                    job.event,
                    (
                        job.object_label
                        if job.object_kind == "session"
                        else f"{job.object_kind} {job.object_label}"
                    )[:48],
                    job.job_name,
                    job.status,
                    duration(job.duration),
                    job_detail(job),
                ]
            )
    lines = [
        f"service {report.service} {report.version} - {report.store}"
        + (f" - peer {report.peer}" if report.peer else " - no peer"),
        "",
        table(rows, ["SESSION", "EVENT", "OBJECT", "JOB", "STATUS", "TIME", "DETAIL"])
        if rows
        else "(no jobs ran)",
        "",
    ]
    counts = report.counts()
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    not_scheduled = [n for s in report.sessions for n in s.not_scheduled]
    filtered = sum(1 for n in not_scheduled if n["reason"] == FILTERED_OUT)
    if not_scheduled:
        parts.append(
            f"{len(not_scheduled)} not scheduled"
            + (f" ({filtered} by a registry callback returning false)" if filtered else "")
        )
    lines.append(", ".join(parts) + f" - {duration(report.duration)}")
    if report.resumed_done:
        lines.append(f"{report.resumed_done} job(s) had succeeded before the resume: not run again")
    notable = [n for n in not_scheduled if n["reason"] != FILTERED_OUT]
    for item in notable[:NOT_SCHEDULED_SHOWN]:
        lines.append(f"not scheduled: {item['job_name']} for {item['object']} - {item['reason']}")
    if len(notable) > NOT_SCHEDULED_SHOWN:
        lines.append(f"... and {len(notable) - NOT_SCHEDULED_SHOWN} more (--json lists all)")
    for path, reason in report.patient_conflicts:
        lines.append(f"REFUSED {path}: {reason}")
    for session in report.sessions:
        if session.exported_to:
            n = sum(
                1
                for f in session.exported_files
                if not f.endswith(("session-data.json", "jobs.json"))
            )
            lines.append(f"results of {session.patient_label}: {session.exported_to} ({n} file(s))")
        for failure in session.export_failed:
            lines.append(f"export of {failure['name']!r} failed: {failure['reason']}")
        if session.kept_reason:
            lines.append(
                f"session {session.session_id} kept ({session.kept_reason}) - "
                f"dcm-service sessions show {session.session_id[:12]}"
            )
    return "\n".join(lines)


def failure_details(report: Any) -> str:
    """What went wrong in a run, for stderr: each registry callback that raised and
    each failed job, with the tail of its traceback and its log file."""
    out = []
    for item in report.callback_errors:
        out.append(
            f"--- registry callback of {item['job_name']} ({item['object']}) raised - "
            "counted as false, as on the platform"
        )
        out.extend("    " + ln for ln in item["traceback"].rstrip().splitlines()[-15:])
    for job in report.jobs:
        if job.failed:
            out.append(
                f"--- {job.job_name} ({job.object_kind} {job.object_label}) {job.status}: {job.error}"
            )
            if job.traceback:
                tail = job.traceback.rstrip().splitlines()[-15:]
                out.extend("    " + ln for ln in tail)
            if job.log_path:
                out.append(f"    log: {job.log_path}")
    return "\n".join(out)
