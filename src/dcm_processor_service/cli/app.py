"""``dcm-service``: run services locally, and manage the store, peers and data.

The only module of the package that writes to the terminal and configures logging.
Results go to stdout (tables, or JSON with ``--json``); progress, notices and errors
go to stderr. Exit codes: 0 ok, 1 a job or operation failed, 2 a usage or input error
(bad option, bad manifest, unknown entry point/peer/session, input without DICOM).

Commands::

    dcm-service run SERVICE INPUT...      run a service (manifest folder or module:function)
    dcm-service new service NAME          write the platform's service template
    dcm-service check SERVICE             would the platform accept and run it?
    dcm-service demo                      sample data + example service + summary, in one go
    dcm-service demo-data OUT             write a synthetic CT series
    dcm-service ingest INPUT...           file DICOM into the store
    dcm-service send PEER [PATH...]       send files, folders or stored series to a peer
    dcm-service convert IN OUT            DICOM -> NIfTI or NIfTI -> DICOM
    dcm-service peers add|list|remove|echo
    dcm-service sessions list|show|clean
    dcm-service db init|gc

See ``docs/runner.md`` for the reference.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import click

from .._errors import (
    ConfigError,
    DcmProcessorError,
    DicomInputError,
    InvalidInputError,
    NotFoundError,
    ServiceError,
)
from .._safe_text import MaskingFormatter, mask_secrets, register_url_password
from ..runner.progress import RunObserver

__all__ = ["main"]

logger = logging.getLogger("dcm_processor_service.cli")

DEFAULT_STORE_DIR = ".dcm-service"
_NOT_SCHEDULED_SHOWN = 20
_USAGE_ERRORS = (InvalidInputError, ConfigError, ServiceError, DicomInputError, NotFoundError)


# --------------------------------------------------------------------- settings
@dataclass
class _Settings:
    verbose: int = 0
    json: bool = False


_state = _Settings()
_saved_levels: dict[str, int] = {}


def _setup(verbose: int, json_out: bool) -> _Settings:
    """Merge the group's and the command's flags, configure logging once per call."""
    ctx = click.get_current_context()
    group: _Settings = ctx.find_object(_Settings) or _Settings()
    _state.verbose = max(verbose, group.verbose)
    _state.json = json_out or group.json
    _configure_logging(_state.verbose)
    return _state


class _CliHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """The handler this module installs (a second ``main()`` replaces it). While a
    console draws a status line, records are printed above it instead of across it."""

    console: _Console | None = None

    def emit(self, record: logging.LogRecord) -> None:
        console = _CliHandler.console
        if console is not None and console.tty:
            try:
                console.line(self.format(record))
            except Exception:  # pragma: no cover - logging must not raise
                self.handleError(record)
            return
        super().emit(record)


def _configure_logging(verbose: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _CliHandler)]:
        root.removeHandler(handler)
    handler = _CliHandler(sys.stderr)
    if verbose:  # every line masked: a library may echo the store URL or conninfo
        handler.setFormatter(
            MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    else:
        handler.setFormatter(MaskingFormatter("%(levelname)s: %(message)s"))
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler.setLevel(level)
    root.addHandler(handler)
    pkg = logging.getLogger("dcm_processor_service")
    _saved_levels.setdefault("dcm_processor_service", pkg.level)
    pkg.setLevel(level)


def _restore_logging() -> None:
    """Undo :func:`_configure_logging` (``main()`` runs in-process in tests and tools)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _CliHandler)]:
        root.removeHandler(handler)
    for name, level in _saved_levels.items():
        logging.getLogger(name).setLevel(level)
    _saved_levels.clear()


def _common(inner: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``-v``/``--json`` and hand the command ``settings`` (logging configured)."""

    @functools.wraps(inner)
    def command(*args: Any, verbose: int, json_out: bool, **kwargs: Any) -> Any:
        return inner(*args, settings=_setup(verbose, json_out), **kwargs)

    func = click.option(
        "--json", "json_out", is_flag=True, help="Print the result as JSON on stdout."
    )(command)
    func = click.option(
        "-v", "--verbose", count=True, help="More output: -v info and job output, -vv debug."
    )(func)
    return func


def _store_options(inner: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--store``/``--db-*`` and hand the command one ``store_spec``."""

    @functools.wraps(inner)
    def command(
        *args: Any,
        store_dir: str,
        db_provider: str | None,
        db_url: str | None,
        db_name: str | None,
        **kwargs: Any,
    ) -> Any:
        return inner(
            *args, store_spec=_store_spec(store_dir, db_provider, db_url, db_name), **kwargs
        )

    func = click.option("--db-name", default=None, help="Database name (provider-specific).")(
        command
    )
    func = click.option(
        "--db-url",
        default=None,
        help="Store URL for --db-provider (default: the embedded SQLite store in --store).",
    )(func)
    func = click.option(
        "--db-provider",
        default=None,
        help="Storage provider: sqlite (default), postgresql, mongodb.",
    )(func)
    func = click.option(
        "--store",
        "store_dir",
        default=DEFAULT_STORE_DIR,
        show_default=True,
        type=click.Path(file_okay=False),
        help="Folder of the embedded SQLite store.",
    )(func)
    return func


@dataclass(frozen=True)
class _StoreSpec:
    provider: str
    url: str
    name: str | None
    local_dir: Path | None

    def open(self) -> Any:
        from ..store.registry import open_store

        return open_store(self.provider, self.url, self.name)


def _store_spec(
    store_dir: str, db_provider: str | None, db_url: str | None, db_name: str | None
) -> _StoreSpec:
    if db_url:
        register_url_password(db_url)  # masked in every message and log line
        provider = db_provider or "sqlite"
        url = db_url
        if provider.lower() == "sqlite" and "://" not in url:
            url = str(Path(url).expanduser().resolve()) + (
                os.sep if db_url.endswith(("/", os.sep)) else ""
            )
        return _StoreSpec(provider, url, db_name, None)
    if db_provider and db_provider.lower() != "sqlite":
        raise click.UsageError(f"--db-provider {db_provider} needs --db-url")
    folder = Path(store_dir).expanduser().resolve()
    return _StoreSpec("sqlite", str(folder) + os.sep, db_name, folder)


# ---------------------------------------------------------------------- output
# Everything printed passes through mask_secrets: an error message or a job's result
# may quote a store URL.
def _out(text: str = "") -> None:
    click.echo(mask_secrets(text))


def _err(text: str) -> None:
    click.echo(mask_secrets(text), file=sys.stderr)


def _print_json(data: Any) -> None:
    _out(json.dumps(data, indent=2, default=str))


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [
        ["" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _first_line(text: str | None, limit: int = 70) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[-1] if "Traceback" in text else text.strip().splitlines()[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


class _Console(RunObserver):
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
    def _sym(self, status: str) -> str:
        fancy = {
            "succeeded": "✓",
            "failed": "✗",
            "timed-out": "⏱",
            "skipped": "\u2013",
            "running": "▸",
        }
        plain = {
            "succeeded": "ok",
            "failed": "XX",
            "timed-out": "TO",
            "skipped": "--",
            "running": ">>",
        }
        return (fancy if self.fancy else plain).get(status, "?")

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
        self._clear()
        self._status = ""
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
                f"  {self._sym('running')} {job.job_name}  {job.object_kind} {job.object_label}  running"
            )
        elif job.object_kind != "session":
            self.line(
                f"  {self._sym('running')} {job.job_name} ({job.object_kind} {job.object_label}) started"
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
                f"  {self._sym('running')} {job.job_name}  {text or 'running'}  {_duration(elapsed)}"
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
        self._clear()
        self._status = ""
        detail = job.reason or _first_line(job.error)
        timing = _duration(job.duration) if job.duration is not None else ""
        self.line(
            f"  {self._sym(job.status)} {job.job_name}  {job.status} {timing}".rstrip()
            + (f"  ({job.object_kind} {job.object_label})" if job.object_kind != "session" else "")
            + (f": {detail}" if detail and job.status != "succeeded" else "")
        )

    def message(self, text: str) -> None:
        self.line(f"  {text}")


def _detail(job: Any, limit: int = 60) -> str:
    if job.reason or job.error:
        return job.reason or _first_line(job.error, limit)
    if job.result is None or job.object_kind == "session":
        return ""
    text = json.dumps(job.result, default=str, separators=(", ", ": "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _summary(report: Any) -> str:
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
                    _duration(job.duration),
                    _detail(job),
                ]
            )
    lines = [
        f"service {report.service} {report.version} - {report.store}"
        + (f" - peer {report.peer}" if report.peer else " - no peer"),
        "",
        _table(rows, ["SESSION", "EVENT", "OBJECT", "JOB", "STATUS", "TIME", "DETAIL"])
        if rows
        else "(no jobs ran)",
        "",
    ]
    counts = report.counts()
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    from ..runner.runner import FILTERED_OUT

    not_scheduled = [n for s in report.sessions for n in s.not_scheduled]
    filtered = sum(1 for n in not_scheduled if n["reason"] == FILTERED_OUT)
    if not_scheduled:
        parts.append(
            f"{len(not_scheduled)} not scheduled"
            + (f" ({filtered} by a registry callback returning false)" if filtered else "")
        )
    lines.append(", ".join(parts) + f" - {_duration(report.duration)}")
    notable = [n for n in not_scheduled if n["reason"] != FILTERED_OUT]
    for item in notable[:_NOT_SCHEDULED_SHOWN]:
        lines.append(f"not scheduled: {item['job_name']} for {item['object']} - {item['reason']}")
    if len(notable) > _NOT_SCHEDULED_SHOWN:
        lines.append(f"... and {len(notable) - _NOT_SCHEDULED_SHOWN} more (--json lists all)")
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


def _failure_details(report: Any) -> str:
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


# ---------------------------------------------------------------------- parsing
_PEER_ADDRESS = re.compile(r"^(?P<aet>[^@]+)@(?P<host>\[[^\]]+\]|[^:]+):(?P<port>\d+)$")


def _parse_peer_address(text: str) -> tuple[str, str, int]:
    match = _PEER_ADDRESS.match(text.strip())
    if match is None:
        raise click.BadParameter(
            f"{text!r} - write AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242",
            param_hint="--peer-address",
        )
    return match["aet"], match["host"].strip("[]"), int(match["port"])


def _parse_params(values: Sequence[str]) -> dict[str | None, dict[str, Any]]:
    out: dict[str | None, dict[str, Any]] = {}
    for item in values:
        if "=" not in item:
            raise click.BadParameter(
                f"{item!r} - write KEY=VALUE or JOB:KEY=VALUE", param_hint="--param"
            )
        key, raw = item.split("=", 1)
        job: str | None = None
        if ":" in key:
            job, key = key.split(":", 1)
        key = key.strip()
        if not key or (job is not None and not job.strip()):
            raise click.BadParameter(f"{item!r} - the key is empty", param_hint="--param")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.setdefault(job.strip() if job else None, {})[key] = value
    return out


def _load_service(
    service: str, *, event: str | None, job_name: str | None, timeout: str | None
) -> Any:
    from ..runner.manifest import load_manifest, manifest_for_function

    path = Path(service).expanduser()
    if path.exists():
        if event or job_name or timeout:
            logger.warning(
                "--event, --job-name and --timeout apply only to a module:function service; ignored"
            )
        return load_manifest(path)
    if ":" in service:
        return manifest_for_function(
            service, event=event or "stable-series", job_name=job_name, timeout=timeout
        )
    raise ServiceError(
        f"service {service!r} not found - give a folder with dcm-processor.json, a manifest file, "
        "or a worker as module:function / file.py:function"
    )


def _register_peer(store: Any, peer: str | None, peer_address: str | None) -> str | None:
    """The peer name to use; ``--peer-address`` adds (or updates) it in the store."""
    if not peer_address:
        if peer is not None:
            store.get_peer(peer)  # fails early, naming the known peers
        return peer
    from ..store.records import Peer

    aet, host, port = _parse_peer_address(peer_address)
    saved = store.put_peer(Peer(name=peer or aet, aet=aet, host=host, port=port))
    logger.info("peer %s registered (%s@%s:%d)", saved.name, saved.aet, saved.host, saved.port)
    return saved.name


# ------------------------------------------------------------------------ group
@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More output: -v info and job output, -vv debug.")
@click.option("--json", "json_out", is_flag=True, help="Print results as JSON on stdout.")
@click.version_option(package_name="dcm-processor-service", prog_name="dcm-service")
@click.pass_context
def cli(ctx: click.Context, verbose: int, json_out: bool) -> None:
    """Run dcm-processor services locally, exactly as the platform's worker would,
    and manage the store, peers and sessions they use."""
    ctx.obj = _Settings(verbose=verbose, json=json_out)
    _state.verbose = verbose


# -------------------------------------------------------------------------- run
def _run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "-p",
            "--param",
            "params",
            multiple=True,
            metavar="[JOB:]KEY=VALUE",
            help="Job parameter (value parsed as JSON, else text); JOB: limits it to one job. Repeatable.",
        ),
        click.option(
            "--peer",
            default=None,
            metavar="NAME",
            help="Peer (PACS) of the store the images 'came from'; jobs send results to it.",
        ),
        click.option(
            "--peer-address",
            default=None,
            metavar="AET@HOST:PORT",
            help="Register this peer (named --peer or its AE title) and use it.",
        ),
        click.option(
            "-o",
            "--output",
            type=click.Path(file_okay=False),
            default=None,
            help="Export each session's files and data here before clean-up.",
        ),
        click.option(
            "--keep-session",
            is_flag=True,
            help="Do not run the post-services clean-up: keep data, files, images and jobs.",
        ),
        click.option(
            "--cleanup-on-failure",
            is_flag=True,
            help="Clean up even when a job failed (by default the session is kept).",
        ),
        click.option(
            "--work-dir",
            type=click.Path(file_okay=False),
            default=None,
            help="Where job logs and scratch folders go (default: STORE/runs).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _execute_run(
    manifest: Any,
    inputs: Sequence[str],
    spec: _StoreSpec,
    *,
    params: Sequence[str],
    peer: str | None,
    peer_address: str | None,
    output: str | None,
    keep_session: bool,
    cleanup_on_failure: bool,
    work_dir: str | None,
    settings: _Settings,
    expect_job: str | None = None,
) -> int:
    from ..runner.runner import Runner

    overrides = _parse_params(params)
    with spec.open() as store:
        peer_name = _register_peer(store, peer, peer_address)
    if work_dir is None and spec.local_dir is not None:
        work_dir = str(spec.local_dir / "runs" / time.strftime("%Y%m%d-%H%M%S"))
    console = _Console(
        sys.stderr,
        show_output=settings.verbose >= 1,
        enabled=not settings.json or sys.stderr.isatty(),
    )
    jobs = ", ".join(j.name + (" (disabled)" if j.disabled else "") for j in manifest.jobs)
    console.line(f"service {manifest.name} {manifest.version}: {jobs}")
    runner = Runner(
        manifest,
        db_provider=spec.provider,
        db_url=spec.url,
        db_name=spec.name,
        peer=peer_name,
        params=overrides,
        keep_session=keep_session,
        cleanup_on_failure=cleanup_on_failure,
        output_dir=output,
        work_dir=work_dir,
        observer=console,
        job_log_level="DEBUG" if settings.verbose >= 2 else "INFO",
    )
    _CliHandler.console = console
    try:
        report = runner.run(inputs)
    finally:
        _CliHandler.console = None
        console.finish()
    if settings.json:
        _print_json(report.to_dict())
    else:
        _out(_summary(report))
        details = _failure_details(report)
        if details:
            _err(details)
    if expect_job and not any(
        j.job_name == expect_job and j.status == "succeeded" for j in report.jobs
    ):
        _err(f"error: job {expect_job!r} did not run on the input (see the summary)")
        return 1
    return report.exit_code


@cli.command()
@click.argument("service")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@_run_options
@click.option(
    "--event",
    type=click.Choice(["stable-series", "stable-study", "stable-patient"]),
    default=None,
    help="For module:function: the event the job runs on (default stable-series).",
)
@click.option(
    "--job-name",
    default=None,
    help="For module:function: the job name (default the function's name).",
)
@click.option(
    "--timeout",
    default=None,
    help="For module:function: the job timeout, e.g. 30s, 10m, 1h (default 1h).",
)
@_store_options
@_common
def run(
    service: str,
    inputs: tuple[str, ...],
    params: tuple[str, ...],
    peer: str | None,
    peer_address: str | None,
    output: str | None,
    keep_session: bool,
    cleanup_on_failure: bool,
    work_dir: str | None,
    event: str | None,
    job_name: str | None,
    timeout: str | None,
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """Run SERVICE on INPUT DICOM (folders, files, DICOMDIRs) as the platform would.

    SERVICE is a folder with a dcm-processor.json manifest, the manifest file, or a
    single worker as module:function or path/file.py:function. The input is ingested
    into the store, one session per patient; each stable series, study and patient
    triggers the registry callbacks and jobs of its event, each job in its own process
    with the platform's DCM-PROCESSOR-SERVICE-* variables. Exit code 1 when a job
    failed or timed out.
    """
    spec = store_spec
    manifest = _load_service(service, event=event, job_name=job_name, timeout=timeout)
    return _execute_run(
        manifest,
        inputs,
        spec,
        params=params,
        peer=peer,
        peer_address=peer_address,
        output=output,
        keep_session=keep_session,
        cleanup_on_failure=cleanup_on_failure,
        work_dir=work_dir,
        settings=settings,
    )


# ------------------------------------------------------------------------- demo
def _example_service() -> Path | None:
    here = Path(__file__).resolve()
    candidates = [
        here.parents[3] / "examples" / "threshold-service",
        Path.cwd() / "examples" / "threshold-service",
    ]
    for candidate in candidates:
        if (candidate / "dcm-processor.json").is_file():
            return candidate
    return None


@cli.command("demo-data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--slices", default=32, show_default=True, help="Slices per series.")
@click.option("--size", default=128, show_default=True, help="Rows and columns per slice.")
@click.option(
    "--patients",
    default=1,
    show_default=True,
    help="Patients (one series each, patient-N folders).",
)
@click.option("--seed", default=0, show_default=True, help="Noise seed.")
@_common
def demo_data(
    out: str, slices: int, size: int, patients: int, seed: int, settings: _Settings
) -> int:
    """Write a synthetic CT series (a bright sphere in a water cylinder) to OUT."""
    from ..runner.sample_data import make_sample_data

    if slices < 1 or size < 8 or patients < 1:
        raise click.BadParameter("need --slices >= 1, --size >= 8, --patients >= 1")
    paths = make_sample_data(out, patients=patients, slices=slices, size=size, seed=seed)
    if settings.json:
        _print_json({"out": str(Path(out).resolve()), "files": [str(p) for p in paths]})
    else:
        _out(
            f"wrote {len(paths)} DICOM file(s) ({patients} patient(s), {slices} x {size}x{size}) to {out}"
        )
    return 0


@cli.command()
@click.option(
    "--out",
    "out_dir",
    default="demo-output",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for input/ (sample data) and results/ (exported outputs).",
)
@click.option(
    "--service",
    "service_dir",
    default=None,
    type=click.Path(exists=True),
    help="The example service (default: examples/threshold-service of this checkout).",
)
@click.option(
    "--peer", default=None, metavar="NAME", help="Send the results to this peer of the store."
)
@click.option(
    "--peer-address",
    default=None,
    metavar="AET@HOST:PORT",
    help="Send the results to this DICOM node.",
)
@click.option(
    "--keep-session",
    is_flag=True,
    help="Keep the session in the store (dcm-service sessions show).",
)
@_store_options
@_common
def demo(
    out_dir: str,
    service_dir: str | None,
    peer: str | None,
    peer_address: str | None,
    keep_session: bool,
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """The README's main job in one go: generate a synthetic CT into OUT/input, run
    the example threshold service on it (embedded store), export the results to
    OUT/results, and print the summary."""
    from ..runner.manifest import load_manifest
    from ..runner.sample_data import make_sample_data

    service = Path(service_dir) if service_dir else _example_service()
    if service is None:
        raise ServiceError(
            "the example service was not found (it lives in examples/threshold-service of the "
            "source checkout) - pass --service PATH"
        )
    out = Path(out_dir)
    input_dir, results_dir = out / "input", out / "results"
    for old in input_dir.glob("CT_*.dcm") if input_dir.is_dir() else ():
        old.unlink()
    paths = make_sample_data(input_dir)
    if not settings.json:
        _err(f"wrote a synthetic CT ({len(paths)} slices) to {input_dir}")
    spec = store_spec
    manifest = load_manifest(service)
    code = _execute_run(
        manifest,
        [str(input_dir)],
        spec,
        params=(),
        peer=peer,
        peer_address=peer_address,
        output=str(results_dir),
        keep_session=keep_session,
        cleanup_on_failure=False,
        work_dir=None,
        settings=settings,
        expect_job="threshold",
    )
    if not settings.json:
        command = f"dcm-service run {service} {input_dir} --output {results_dir}"
        _err(f"\nsame run, step by step: {command}")
    return code


# ---------------------------------------------------------------- service tools
@cli.group()
def new() -> None:
    """Create a service from the platform's template."""


@new.command("service")
@click.argument("name")
@click.option(
    "-p",
    "--path",
    "directory",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="Where to create the NAME folder.",
)
@click.option(
    "-e",
    "--event",
    "events",
    multiple=True,
    type=click.Choice(["stable-series", "stable-study", "stable-patient"]),
    help="An event the job handles (repeatable; default stable-series).",
)
@_common
def new_service(name: str, directory: str, events: tuple[str, ...], settings: _Settings) -> int:
    """Write the platform's service template into PATH/NAME: dcm-processor.json, a
    registry package exporting 'callback' and a module package exporting 'worker'.
    It deploys to the platform as it is and runs at once with dcm-service run."""
    from ..runner.template import write_service_template

    files = write_service_template(name, directory, events=events or ("stable-series",))
    root = files[0].parent
    if settings.json:
        _print_json({"service": str(root), "files": [str(f) for f in files]})
    else:
        _out(f"created service {name} in {root}:")
        for path in files:
            _out(f"  {path.relative_to(root)}")
        _out(f"next: dcm-service check {root} && dcm-service demo --service {root}")
    return 0


@cli.command()
@click.argument("service", type=click.Path())
@_common
def check(service: str, settings: _Settings) -> int:
    """Check whether the platform would accept SERVICE and run every job: the
    manifest's rules, entries that import the way the platform imports them, and
    signatures that accept the platform's keywords. Exit code 1 on any problem."""
    from ..runner.check import check_service

    report = check_service(service)
    if settings.json:
        _print_json(report.to_dict())
        return 0 if report.ok else 1
    _out(f"service {report.name or '?'} {report.version or '?'} ({report.manifest_path})")
    for line in report.passed:
        _out(f"  ok        {line}")
    for problem in report.problems:
        _out(f"  {problem.severity.upper():9} {problem}")
    if report.ok:
        _out("the platform accepts this service and can run every job")
        return 0
    errors = sum(1 for p in report.problems if not p.platform_only)
    _out(
        f"{len(report.problems)} problem(s): "
        + (f"{errors} stop(s) it running anywhere, " if errors else "")
        + "'platform' ones run here but not on the platform (see docs/migrating.md)"
    )
    return 1


# ----------------------------------------------------------------------- ingest
@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--peer",
    default=None,
    metavar="NAME",
    help="Peer the images came from (its id becomes PeerUID).",
)
@click.option(
    "--session",
    "session_id",
    default=None,
    help="Session the instances belong to (clean-up removes them).",
)
@_store_options
@_common
def ingest(
    inputs: tuple[str, ...],
    peer: str | None,
    session_id: str | None,
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """File DICOM INPUT (folders, files, DICOMDIRs) into the store's index."""
    from ..dicom.index import IngestReport, iter_ingest
    from ..runner.inputs import expand_inputs

    spec = store_spec
    files = expand_inputs(inputs)
    console = _Console(
        sys.stderr, show_output=False, enabled=not settings.json or sys.stderr.isatty()
    )
    report = IngestReport()
    with spec.open() as store:
        peer_id = store.get_peer(peer).id if peer else None
        if session_id:
            store.ensure_session(session_id, peer_id=peer_id)
        console.ingest_started(len(files))
        for i, outcome in enumerate(
            iter_ingest(files, store=store, peer_id=peer_id, session_id=session_id), 1
        ):
            report.add(outcome)
            console.ingest_advanced(min(i, len(files)), len(files))
        console.finish()
    if settings.json:
        _print_json(
            {
                "stored": report.n_stored,
                "series_ids": report.series_ids,
                "failed": [{"path": p, "reason": r} for p, r in report.failed],
                "conflicts": [{"path": p, "reason": r} for p, r in report.conflicts],
                "skipped": [{"path": p, "reason": r} for p, r in report.skipped],
            }
        )
    else:
        _out(report.summary())
        for path, reason in report.failed:
            _err(f"  not ingested: {path}: {reason}")
    if report.n_stored == 0 and report.failed:
        _err("error: no DICOM instance was stored")
        return 2
    return 0 if report.ok else 1


# ------------------------------------------------------------------------ peers
@cli.group()
def peers() -> None:
    """Add, list, remove and test peers (DICOM nodes, usually a PACS)."""


@peers.command("add")
@click.argument("name")
@click.argument("aet")
@click.argument("host")
@click.argument("port", type=int)
@click.option("--tls", is_flag=True, help="Use TLS.")
@click.option(
    "--cert-file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Our client certificate (mutual TLS).",
)
@click.option(
    "--key-file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Its private key.",
)
@click.option(
    "--ca-file",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="CA that signed the peer's certificate.",
)
@click.option(
    "--allow-aet", multiple=True, help="AE title allowed to send to us as this peer (repeatable)."
)
@click.option(
    "--allow-ip", multiple=True, help="IP address allowed to send to us as this peer (repeatable)."
)
@_store_options
@_common
def peers_add(
    name: str,
    aet: str,
    host: str,
    port: int,
    tls: bool,
    cert_file: str | None,
    key_file: str | None,
    ca_file: str | None,
    allow_aet: tuple[str, ...],
    allow_ip: tuple[str, ...],
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """Add peer NAME (AE title AET at HOST:PORT), or update the peer of that name."""
    from ..peers import add_peer

    with store_spec.open() as store:
        saved = add_peer(
            name,
            aet,
            host,
            port,
            tls=tls,
            cert_file=cert_file,
            key_file=key_file,
            ca_file=ca_file,
            whitelist_aet=allow_aet,
            whitelist_ip=allow_ip,
            store=store,
        )
    if settings.json:
        _print_json(saved.to_dict())
    else:
        _out(
            f"peer {saved.name}: {saved.aet}@{saved.host}:{saved.port}{' (TLS)' if saved.tls else ''}"
        )
    return 0


@peers.command("list")
@_store_options
@_common
def peers_list(
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """List the peers of the store."""
    with store_spec.open() as store:
        items = store.list_peers()
    if settings.json:
        _print_json([p.to_dict() for p in items])
    elif not items:
        _out("no peers (add one: dcm-service peers add NAME AET HOST PORT)")
    else:
        _out(
            _table(
                [[p.name, p.aet, p.host, p.port, "yes" if p.tls else "", p.id] for p in items],
                ["NAME", "AET", "HOST", "PORT", "TLS", "ID"],
            )
        )
    return 0


@peers.command("remove")
@click.argument("name")
@_store_options
@_common
def peers_remove(
    name: str,
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """Remove peer NAME."""
    with store_spec.open() as store:
        removed = store.remove_peer(name)
    if not removed:
        raise NotFoundError(f"peer {name!r} not found")
    if settings.json:
        _print_json({"removed": name})
    else:
        _out(f"peer {name} removed")
    return 0


def _sender_for(peer: Any) -> Any:
    from ..net.sender import DicomSender

    return DicomSender.for_peer(peer)


@peers.command("echo")
@click.argument("name")
@_store_options
@_common
def peers_echo(
    name: str,
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """Check that peer NAME answers (DICOM C-ECHO)."""
    with store_spec.open() as store:
        peer = store.get_peer(name)
    result = _sender_for(peer).send_echo()
    ok = bool(result)
    if settings.json:
        _print_json(
            {
                "peer": peer.name,
                "ok": ok,
                "status": result.status,
                "latency_s": round(result.latency_s, 4),
                "total_s": round(result.total_s, 4),
                "error": result.error,
            }
        )
    else:
        text = "success" if ok else f"failed ({result.error})"
        _out(f"C-ECHO {peer.name} ({result.peer}): {text} in {result.total_s * 1000:.0f} ms")
    return 0 if ok else 1


# ------------------------------------------------------------------------- send
@cli.command()
@click.argument("peer")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option(
    "--series",
    "series_ids",
    multiple=True,
    help="A series of the store (record _id or SeriesInstanceUID). Repeatable.",
)
@_store_options
@_common
def send(
    peer: str,
    paths: tuple[str, ...],
    series_ids: tuple[str, ...],
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """Send DICOM files, folders, or stored series to PEER (a peer of the store)."""
    from ..dicom.series import get_series_dicom
    from ..net.results import Outcome
    from ..runner.inputs import expand_inputs

    if not paths and not series_ids:
        raise click.UsageError("give files or folders to send, or --series ID")
    reports = []
    fatal: DcmProcessorError | None = None
    with store_spec.open() as store:
        target = store.get_peer(peer)
        sender = _sender_for(target)
        datasets = [
            ds for series_id in series_ids for ds in get_series_dicom(series_id, store=store)
        ]
        files = [str(p) for p in expand_inputs(paths)] if paths else []
        try:
            if files:
                reports.append(sender.send(files))
            if datasets:
                reports.append(sender.send(datasets))
        except DcmProcessorError as exc:  # a network failure: show what was done first
            if getattr(exc, "report", None) is None:
                raise
            reports.append(exc.report)  # type: ignore[attr-defined]
            fatal = exc
    results = [r for report in reports for r in report.results]
    failed = [r for r in results if not r.ok]
    counts = {o: sum(r.outcome is o for r in results) for o in Outcome}
    if settings.json:
        _print_json(
            {
                "peer": target.name,
                "sent": counts[Outcome.STORED],
                "failed": len(failed),
                "instances": len(results),
                **{o.value: n for o, n in counts.items() if o is not Outcome.STORED},
                "not_stored": [
                    {
                        "source": r.source,
                        "sop_instance_uid": r.sop_instance_uid,
                        "outcome": r.outcome.value,
                        "status": r.status,
                        "attempts": r.attempts,
                        "error": r.error,
                    }
                    for r in failed
                ],
                "error": str(fatal) if fatal else None,
            }
        )
    else:
        labels = {
            Outcome.REFUSED: "refused",
            Outcome.IN_DOUBT: "in doubt",
            Outcome.NOT_SENT: "not sent",
        }
        breakdown = ", ".join(
            f"{counts[o]} {label}" + (" (sent, no response)" if o is Outcome.IN_DOUBT else "")
            for o, label in labels.items()
            if counts[o]
        )
        _out(
            f"sent {counts[Outcome.STORED]} of {len(results)} instance(s) to {target.name}"
            + (f"; {breakdown}" if breakdown else "")
        )
        for r in failed[:20]:
            _err(f"  {labels[r.outcome]}: {r.source}: 0x{r.status:04X} {r.error or ''}".rstrip())
    if fatal is not None:
        _err(f"error: {fatal}")
        return 1
    if not results:
        _err("error: nothing to send (no DICOM instance in the input)")
        return 2
    return 0 if not failed else 1


# ---------------------------------------------------------------------- convert
def _is_nifti(path: str) -> bool:
    return path.lower().endswith((".nii", ".nii.gz"))


@cli.command()
@click.argument("source", type=click.Path(exists=True))
@click.argument("target", type=click.Path())
@click.option(
    "--modality",
    default="CT",
    show_default=True,
    help="NIfTI -> DICOM: modality (CT, MR, else Secondary Capture).",
)
@click.option("--description", default="", help="NIfTI -> DICOM: SeriesDescription.")
@click.option(
    "--reference",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="NIfTI -> DICOM: a DICOM file whose patient and study the series joins.",
)
@_common
def convert(
    source: str,
    target: str,
    modality: str,
    description: str,
    reference: str | None,
    settings: _Settings,
) -> int:
    """Convert SOURCE to TARGET: a DICOM series (folder or files) to a NIfTI file
    (TARGET ends with .nii or .nii.gz; a JSON sidecar is written beside it), or a NIfTI
    file to a DICOM series in folder TARGET."""
    if _is_nifti(source):
        import nibabel as nib

        from ..dicom.derived import write_datasets
        from ..dicom.nifti import nifti_to_dicom

        datasets = nifti_to_dicom(nib.load(source), modality, description, ref_dcm=reference)
        written = write_datasets(datasets, target)
        result = {
            "source": source,
            "target": target,
            "files": len(written),
            "direction": "nifti-to-dicom",
        }
        text = f"wrote {len(written)} DICOM file(s) to {target}"
    else:
        if not _is_nifti(target):
            raise click.BadParameter(
                f"{target!r} - a DICOM series converts to a .nii or .nii.gz file",
                param_hint="TARGET",
            )
        from ..dicom.nifti import series_files_to_nifti

        nifti_path, json_path, _ = series_files_to_nifti(source, target)
        slices = json.loads(Path(json_path).read_text(encoding="utf-8")).get("Slices")
        result = {
            "source": source,
            "target": nifti_path,
            "sidecar": json_path,
            "slices": slices,
            "direction": "dicom-to-nifti",
        }
        text = f"wrote {nifti_path} ({slices} slices) and {json_path}"
    if settings.json:
        _print_json(result)
    else:
        _out(text)
    return 0


# --------------------------------------------------------------------- sessions
@cli.group()
def sessions() -> None:
    """Inspect and clean up sessions (jobs, data, files)."""


def _find_session(store: Any, prefix: str) -> Any:
    matches = [s for s in store.list_sessions() if s.id.startswith(prefix)]
    if not matches:
        raise NotFoundError(
            f"no session {prefix!r} in {store.describe()} (dcm-service sessions list)"
        )
    if len(matches) > 1 and not any(s.id == prefix for s in matches):
        raise InvalidInputError(
            f"session prefix {prefix!r} is ambiguous: {', '.join(s.id for s in matches[:5])}"
        )
    return next((s for s in matches if s.id == prefix), matches[0])


@sessions.command("list")
@_store_options
@_common
def sessions_list(
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """List the sessions of the store, with the runner working on each and whether
    that runner is gone (stale: see dcm-service sessions clean --stale)."""
    rows, data = [], []
    with store_spec.open() as store:
        for s in store.list_sessions():
            jobs = store.list_jobs(s.id)
            failed = sum(1 for j in jobs if j.status in ("failed", "timed-out"))
            life = _liveness(s)
            data.append(
                {
                    "id": s.id,
                    "status": s.status,
                    "peer_id": s.peer_id,
                    "meta": s.meta,
                    "jobs": len(jobs),
                    "failed": failed,
                    "created_at": s.created_at,
                    **_owner_fields(s, life),
                }
            )
            rows.append(
                [
                    s.id[:12],
                    s.status + (" (STALE)" if life.stale else ""),
                    s.meta.get("patient", ""),
                    s.meta.get("service", ""),
                    f"{len(jobs)}" + (f" ({failed} failed)" if failed else ""),
                    s.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                    _runner_text(s.owner, life),
                ]
            )
    stale = sum(1 for d in data if d["stale"])
    if settings.json:
        _print_json(data)
    elif not rows:
        _out("no sessions")
    else:
        headers = ["SESSION", "STATUS", "PATIENT", "SERVICE", "JOBS", "CREATED (UTC)", "RUNNER"]
        _out(_table(rows, headers))
        if stale:
            _out(
                f"\n{stale} stale session(s): their runner is gone - end what is left of them "
                "with dcm-service sessions clean --stale [--mark-only]"
            )
    return 0


@sessions.command("show")
@click.argument("session_id")
@_store_options
@_common
def sessions_show(
    session_id: str,
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """Show a session (id or unique prefix): its jobs, data keys and files."""
    with store_spec.open() as store:
        s = _find_session(store, session_id)
        jobs = store.list_jobs(s.id)
        values = store.list_data(s.id)
        files = store.list_files(s.id)
        series = store.list_series(session_id=s.id)
    life = _liveness(s)
    job_life = {j.id: _liveness(j) for j in jobs}
    if settings.json:
        _print_json(
            {
                "session": {
                    "id": s.id,
                    "status": s.status,
                    "peer_id": s.peer_id,
                    "patient_uid": s.patient_uid,
                    "meta": s.meta,
                    "created_at": s.created_at,
                    "updated_at": s.updated_at,
                    **_owner_fields(s, life),
                },
                "series": [
                    {
                        "_id": r["_id"],
                        "SeriesInstanceUID": r["SeriesInstanceUID"],
                        "instances": len(r["Instances"]),
                        "Modality": r["Metadata"].get("Modality"),
                    }
                    for r in series
                ],
                "jobs": [
                    {
                        "id": j.id,
                        "name": j.name,
                        "event": j.event,
                        "status": j.status,
                        "progress": j.progress,
                        "error": j.error,
                        "started_at": j.started_at,
                        "finished_at": j.finished_at,
                        **_owner_fields(j, job_life[j.id]),
                    }
                    for j in jobs
                ],
                "data": [
                    {
                        "job_name": v["job_name"],
                        "event": v["event"],
                        "name": v["name"],
                        "value": json.loads(v["value_json"]),
                    }
                    for v in values
                ],
                "files": [f.to_dict() for f in files],
            }
        )
        return 0
    _out(
        f"session {s.id}  status {s.status}  peer {s.peer_id or '-'}  created {s.created_at:%Y-%m-%d %H:%M:%S} UTC"
    )
    if s.owner:
        _out(
            f"runner: {_runner_text(s.owner, life)}"
            + (f"  STALE: {life.reason} (dcm-service sessions clean --stale)" if life.stale else "")
        )
    if s.meta:
        _out("meta: " + ", ".join(f"{k}={v}" for k, v in s.meta.items()))
    _out(f"\nseries ({len(series)}):")
    for r in series:
        _out(
            f"  {r['_id'][:12]}  {r['Metadata'].get('Modality', '')}  {len(r['Instances'])} instance(s)  {r['Metadata'].get('SeriesDescription', '')}"
        )
    _out(f"\njobs ({len(jobs)}):")
    if jobs:
        rows = []
        for j in jobs:
            took = (
                (j.finished_at - j.started_at).total_seconds()
                if j.started_at and j.finished_at
                else None
            )
            pct = j.progress.get("percent")
            rows.append(
                [
                    j.id[:12],
                    j.name,
                    j.event,
                    j.status + (" (STALE)" if job_life[j.id].stale else ""),
                    _duration(took),
                    f"{pct:.0f}%" if isinstance(pct, (int, float)) else "",
                    _first_line(j.error, 60),
                ]
            )
        _out(_table(rows, ["JOB", "NAME", "EVENT", "STATUS", "TIME", "PROGRESS", "ERROR"]))
    _out(f"\ndata ({len(values)}):")
    for v in values:
        text = v["value_json"]
        _out(f"  {v['job_name']}/{v['name']} = {text if len(text) <= 80 else text[:77] + '...'}")
    _out(f"\nfiles ({len(files)}):")
    for f in files:
        _out(f"  {f.job_name}/{f.name}  {_size(f.size)}  {f.content_type}  sha256 {f.sha256[:12]}")
    return 0


@sessions.command("clean")
@click.argument("session_ids", nargs=-1)
@click.option("--all", "clean_all", is_flag=True, help="Clean up every session of the store.")
@click.option(
    "--stale", is_flag=True, help="Clean up the sessions whose runner is gone (see sessions list)."
)
@click.option(
    "--mark-only",
    is_flag=True,
    help="For stale sessions: end their leftover job processes and mark them abandoned, "
    "but keep their data, files and jobs for inspection.",
)
@click.option("--force", is_flag=True, help="Also clean sessions that a live runner is working on.")
@_store_options
@_common
def sessions_clean(
    session_ids: tuple[str, ...],
    clean_all: bool,
    stale: bool,
    mark_only: bool,
    force: bool,
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """Run the post-services clean-up on sessions (their data, files, images, jobs).

    A session left behind by a runner that is gone (stale) first has the processes its
    running jobs left ended (on this host) and its unfinished jobs marked abandoned. A
    session a live runner is working on is refused (skipped with --all) unless --force.
    """
    from ..hooks import run_post_services
    from ..runner.ownership import abandon_session

    if not session_ids and not clean_all and not stale:
        raise click.UsageError("name sessions to clean, or --all, or --stale")
    results: dict[str, dict[str, Any]] = {}
    with store_spec.open() as store:
        if clean_all or stale:
            targets = [s for s in store.list_sessions() if clean_all or _liveness(s).stale]
        else:
            targets = [_find_session(store, p) for p in session_ids]
        for s in targets:
            life = _liveness(s)
            if life.live and not force:
                message = (
                    f"session {s.id} is being run by runner {s.owner} (heartbeat "
                    f"{_age(life.heartbeat_age)} ago) - stop that run first, or pass --force"
                )
                if not clean_all:
                    raise InvalidInputError(message)
                _err(f"skipped: {message}")
                continue
            result = abandon_session(store, s, life) if life.stale else {}
            if mark_only:
                result["status"] = store.get_session(s.id).status
            else:
                result.update(run_post_services(s.id, store=store))
            results[s.id] = result
    if settings.json:
        _print_json(results)
    else:
        for sid, counts in results.items():
            verb = "marked" if mark_only else "cleaned up"
            _out(
                f"session {sid} {verb}: "
                + ", ".join(
                    f"{n} {k}" if isinstance(n, int) else f"{k} {n}" for k, n in counts.items()
                )
            )
        if not results:
            _out("no sessions")
    return 0


def _liveness(record: Any) -> Any:
    from ..runner.ownership import judge_record

    return judge_record(record)


def _owner_fields(record: Any, life: Any) -> dict[str, Any]:
    return {
        "owner": record.owner,
        "heartbeat_at": record.heartbeat_at,
        "heartbeat_age": round(life.heartbeat_age, 1) if life.heartbeat_age is not None else None,
        "stale": life.stale,
        "stale_reason": life.reason,
    }


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else _duration(max(seconds, 0.0))


def _runner_text(owner: str | None, life: Any) -> str:
    if not owner:
        return "-"
    return f"{owner}, heartbeat {_age(life.heartbeat_age)} ago" + (" - gone" if life.stale else "")


# --------------------------------------------------------------------------- db
@cli.group()
def db() -> None:
    """Store administration."""


@db.command("init")
@_store_options
@_common
def db_init(
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """Create (or upgrade) the store's schema."""
    with store_spec.open() as store:
        version = store.migrate()
        where = store.describe()
    if settings.json:
        _print_json({"store": where, "schema_version": version})
    else:
        _out(f"{where} ready (schema version {version})")
    return 0


@db.command("gc")
@click.option("--dry-run", is_flag=True, help="Report what would be removed; remove nothing.")
@click.option(
    "--min-age",
    type=click.FloatRange(min=0),
    default=None,
    metavar="SECONDS",
    help="MongoDB only: how long an unfinished upload must have been silent to be removed "
    "(default 3600). SQLite and PostgreSQL need no age: a live writer holds a lock.",
)
@_store_options
@_common
def db_gc(
    dry_run: bool,
    min_age: float | None,
    store_spec: _StoreSpec,
    settings: _Settings,
) -> int:
    """Remove what crashed writers left: stored bytes no record references.

    Never touches data a writer that is still running is committing."""
    with store_spec.open() as store:
        report = store.collect_garbage(dry_run=dry_run, min_age_s=min_age)
    if settings.json:
        _print_json(report.to_dict())
    else:
        _out(report.summary())
    return 0


# ------------------------------------------------------------------------- main
def _interrupted(exc: KeyboardInterrupt) -> int:
    """Report a run stopped by a signal; the exit code is 128 + the signal's number."""
    signum = int(getattr(exc, "signum", signal.SIGINT))
    _err(f"interrupted by {signal.Signals(signum).name}")
    return 128 + signum


def main(argv: list[str] | None = None) -> int:
    """Run ``dcm-service`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    _state.verbose = 0
    _state.json = False
    try:
        result = cli.main(args=argv, prog_name="dcm-service", standalone_mode=False)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):  # click wraps Ctrl-C (and our signals)
            return _interrupted(exc.__cause__)
        _err("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except DcmProcessorError as exc:
        _err(f"error: {exc}")
        if _state.verbose:
            _err(traceback.format_exc())
        return 2 if isinstance(exc, _USAGE_ERRORS) else 1
    except Exception as exc:
        _err(f"error: {type(exc).__name__}: {exc}")
        if _state.verbose:
            _err(traceback.format_exc())
        else:
            _err("(run with -v for the traceback)")
        return 1
    finally:
        _restore_logging()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
