"""Everything ``dcm-service`` writes to the terminal.

Results go to stdout (:func:`out`, :func:`print_json`); progress, notices and errors to
stderr (:func:`err`, :class:`Console`). Everything printed passes through
``mask_secrets``: an error message or a job's result may quote a store URL.

:class:`Console` is the live progress of a run: on a terminal one status line redrawn
in place, elsewhere plain lines. :class:`ConsoleLogHandler` prints log records above
that status line instead of across it.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from typing import Any, TextIO

import click

from .._safe_text import mask_secrets
from ..runner.progress import RunObserver
from ..store.records import JobStatus
from .formatting import duration, first_line

__all__ = ["Console", "ConsoleLogHandler", "err", "out", "print_json"]

_SYMBOLS_FANCY = {
    JobStatus.SUCCEEDED: "✓",
    JobStatus.FAILED: "✗",
    JobStatus.TIMED_OUT: "⏱",
    JobStatus.SKIPPED: "\u2013",
    JobStatus.RUNNING: "▸",
}
_SYMBOLS_PLAIN = {
    JobStatus.SUCCEEDED: "ok",
    JobStatus.FAILED: "XX",
    JobStatus.TIMED_OUT: "TO",
    JobStatus.SKIPPED: "--",
    JobStatus.RUNNING: ">>",
}


def out(text: str = "") -> None:
    """Print a line of the result on stdout."""
    click.echo(mask_secrets(text))


def err(text: str) -> None:
    """Print a notice or an error on stderr."""
    click.echo(mask_secrets(text), file=sys.stderr)


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout (``--json``); dates become text."""
    out(json.dumps(data, indent=2, default=str))


class Console(RunObserver):
    """Live progress on stderr: a redrawn status line on a terminal, plain lines
    otherwise."""

    def __init__(self, stream: TextIO, *, show_output: bool, enabled: bool = True) -> None:
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and bool(getattr(stream, "isatty", lambda: False)())
        encoding = (getattr(stream, "encoding", None) or "").lower()
        self.fancy = "utf" in encoding
        self.show_output = show_output
        self._width = 0
        self._status = ""
        self._last_step: dict[str, Any] = {}
        self._last_draw = 0.0

    # drawing
    def _sym(self, status: JobStatus) -> str:
        return (_SYMBOLS_FANCY if self.fancy else _SYMBOLS_PLAIN).get(status, "?")

    def _bar(self, fraction: float, width: int = 20) -> str:
        fraction = min(1.0, max(0.0, fraction))
        filled = round(fraction * width)
        full, empty = ("█", "░") if self.fancy else ("#", "-")
        return full * filled + empty * (width - filled)

    def _draw(self, text: str) -> None:
        if not self.tty:
            return
        columns = shutil.get_terminal_size((100, 20)).columns
        text = text[: max(10, columns - 1)]
        self.stream.write("\r" + text + " " * max(0, self._width - len(text)))
        self.stream.flush()
        self._width = len(text)
        self._status = text

    def _clear(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0

    def finish(self) -> None:
        """Remove the status line (at the end, or when an error interrupts)."""
        self._clear()
        self._status = ""

    def line(self, text: str) -> None:
        """Print a line, keeping the status line below it."""
        if not self.enabled:
            return
        status = self._status if self._width else ""
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()
        if status:
            self._draw(status)

    # events
    def ingest_started(self, total_files: int) -> None:
        self._draw(f"ingest   {self._bar(0)} 0/{total_files} files")

    def ingest_advanced(self, done_files: int, total_files: int) -> None:
        now = time.monotonic()
        if done_files < total_files and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        self._draw(
            f"ingest   {self._bar(done_files / max(1, total_files))} {done_files}/{total_files} files"
        )

    def ingest_finished(self, stored: int, failed: list[tuple[str, str]]) -> None:
        self.finish()
        self.line(
            f"ingested {stored} instance(s)"
            + (f"; {len(failed)} file(s) not ingested" if failed else "")
        )
        for path, reason in failed[:10]:
            self.line(f"  not ingested: {path}: {reason}")
        if len(failed) > 10:
            self.line(f"  ... and {len(failed) - 10} more (--json lists all)")

    def session_started(self, session: Any) -> None:
        self.line(
            f"session {session.session_id[:12]}  patient {session.patient_label}  ({session.stored} instance(s))"
        )

    def job_started(self, job: Any) -> None:
        self._last_step = {}
        if self.tty:
            self._draw(
                f"  {self._sym(JobStatus.RUNNING)} {job.job_name}  {job.object_kind} {job.object_label}  running"
            )
        elif job.object_kind != "session":
            self.line(
                f"  {self._sym(JobStatus.RUNNING)} {job.job_name} ({job.object_kind} {job.object_label}) started"
            )

    def job_progress(self, job: Any, progress: dict[str, Any], elapsed: float) -> None:
        percent = progress.get("percent")
        stage = progress.get("stage") or ""
        message = progress.get("message") or ""
        if self.tty:
            bar = (
                f"{self._bar(percent / 100)} {percent:5.1f}%"
                if isinstance(percent, (int, float))
                else ""
            )
            text = " ".join(t for t in (bar, stage, message) if t)
            self._draw(
                f"  {self._sym(JobStatus.RUNNING)} {job.job_name}  {text or 'running'}  {duration(elapsed)}"
            )
            return
        step = {
            "stage": stage,
            "message": message,
            "quarter": int(percent // 25) if isinstance(percent, (int, float)) else None,
        }
        if progress and step != self._last_step:
            self._last_step = step
            pct = f"{percent:.0f}% " if isinstance(percent, (int, float)) else ""
            self.line(f"    {job.job_name}: {pct}{stage}{' - ' + message if message else ''}")

    def job_output(self, job: Any, line: str) -> None:
        if self.show_output:
            self.line(f"    {'│' if self.fancy else '|'} {line}")

    def job_finished(self, job: Any) -> None:
        self.finish()
        detail = job.reason or first_line(job.error)
        timing = duration(job.duration) if job.duration is not None else ""
        self.line(
            f"  {self._sym(job.status)} {job.job_name}  {job.status} {timing}".rstrip()
            + (f"  ({job.object_kind} {job.object_label})" if job.object_kind != "session" else "")
            + (f": {detail}" if detail and job.status != JobStatus.SUCCEEDED else "")
        )

    def message(self, text: str) -> None:
        self.line(f"  {text}")


class ConsoleLogHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """The log handler ``dcm-service`` installs. While :attr:`console` draws a status
    line, records are printed above it instead of across it."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.console: Console | None = None

    def emit(self, record: logging.LogRecord) -> None:
        console = self.console
        if console is not None and console.tty:
            try:
                console.line(self.format(record))
            except Exception:  # pragma: no cover - logging must not raise
                self.handleError(record)
            return
        super().emit(record)
