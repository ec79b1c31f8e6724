"""The local runner: plays the platform worker's part on one machine.

:func:`run_service` (or :class:`Runner`) takes a service manifest and input DICOM and,
calling the service exactly as the platform does (:mod:`.platform`):

1. groups the input by patient and ingests it into the store, one session per patient,
   with the given peer as the images' source;
2. per session, runs the pre-services hook (:func:`~dcm_processor_service.run_pre_services`);
3. builds the session's job graph as the platform's scheduler does: for each study, for
   each of its series, then for the study, then for the patient, calls the registry
   callbacks of that event's jobs in ``sortPosition`` order with the keywords
   ``session_id, job_name, headers, added_params, params`` (``bool`` or ``(bool,
   dict)``; the dict lands in ``added_params[job_name]``; an exception counts as false
   and its traceback is logged), drops jobs whose ``dependsOn`` did not pass (the
   report says why), and creates the remaining jobs: each series' jobs wait for the
   pre-services hook, each study's jobs for every series job of the study, the patient's
   jobs for every study job; within an object, ``dependsOn`` orders them;
4. runs the graph in that order, each job in its own process with the platform's
   environment variables, its timeout, and the worker's keywords ``job_name, worker_id,
   worker_type, service_id, event, session_id, headers, added_params, params,
   db_provider, db_name, db_url, job_id``; a job whose predecessor did not succeed is
   skipped with the reason; every job's status and timings go to the store (pending ->
   running -> succeeded / failed / skipped / timed-out);
5. exports the session's files and data (``output_dir``; a file that cannot be written
   is reported and the export goes on), then runs the post-services hook (clean-up) —
   unless ``keep_session``, or a job or the export failed (then, as on the platform
   where the post-services job depends on every job, the session is kept for
   inspection, with status ``kept``; ``cleanup_on_failure`` cleans up anyway).

The registry callbacks run in the runner's process (the platform's scheduler runs them
in its own); the pre/post hooks run in the runner's process too.

The session and job records carry the runner's ``PID@HOST`` and a heartbeat
(:mod:`.ownership`), so a record left behind by a runner that died is recognisable.
SIGTERM, SIGHUP and SIGINT stop a run the same way: the running job's processes are
ended, it is recorded ``failed``, the jobs not run yet ``skipped``, the session
``interrupted``, and :class:`RunInterrupted` (a ``KeyboardInterrupt``) is raised.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import re
import signal
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .._atomic_file import atomic_write
from .._context import RuntimeContext, context_environ, use_context
from .._errors import DcmProcessorError, InvalidInputError, ServiceError
from .._safe_text import bound_text, mask_secrets
from ..store.address import StoreAddress
from ..store.base import CHUNK_SIZE, Store
from ..store.records import Peer, utcnow
from ..store.registry import open_store
from .inputs import InputScan, PatientGroup, scan_inputs
from .job_process import run_job_process
from .manifest import EntryLoader, JobSpec, ServiceManifest
from .ownership import Heartbeat, this_owner
from .platform import main_file_hazard, registry_result
from .progress import RunObserver
from .graph import SUCCEEDED, order_jobs, prune_dependencies

__all__ = [
    "JobRun",
    "RunInterrupted",
    "RunReport",
    "Runner",
    "SessionRun",
    "export_session",
    "run_service",
]

logger = logging.getLogger(__name__)

#: Pseudo-event of the pre/post-services hooks in the job records.
HOOK_EVENT = "session"
_FAILED = ("failed", "timed-out")
#: ``reason`` of a job whose registry callback returned false for an object.
FILTERED_OUT = "registry callback returned false"
#: Worker arguments that carry text from the manifest or the images.
_TEXT_ARGUMENTS = ("params", "headers", "added_params")
#: Signals that stop a run the way Ctrl-C does.
_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT, SIGTERM, SIGHUP); ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _stop_reason(exc: BaseException) -> str:
    """Why a run stopped early, for the records."""
    if isinstance(exc, KeyboardInterrupt):
        return str(exc) or "interrupted by SIGINT"
    return bound_text(mask_secrets(f"the runner failed: {type(exc).__name__}: {exc}"))


@contextlib.contextmanager
def _stop_on_signals(enabled: bool) -> Iterator[None]:
    """While the block runs, SIGINT, SIGTERM and SIGHUP raise :class:`RunInterrupted`
    (once: a second signal while the run stops is logged and ignored, so the clean-up
    completes). Only in the main thread, where Python delivers signals."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        if received:
            logger.warning("%s received while stopping: ignored", signal.Signals(signum).name)
            return
        received.append(signum)
        raise RunInterrupted(signum)

    previous = {}
    for name in _STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None:
            previous[number] = signal.signal(number, stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@dataclass
class JobRun:
    """One job (or hook, or registry callback) of a run, and how it went."""

    session_id: str
    job_name: str
    event: str
    object_kind: str
    object_id: str | None
    object_label: str
    status: str = "pending"
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

    def fail(self, error: str, traceback: str | None = None) -> None:
        """Mark the run failed with ``error`` (and ``traceback``), both bounded."""
        self.status = "failed"
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
    #: files refused because their series/study is another patient's (also in ingest_failed)
    patient_conflicts: list[tuple[str, str]] = field(default_factory=list)
    sessions: list[SessionRun] = field(default_factory=list)
    output_dir: str | None = None
    duration: float = 0.0

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
            "store": self.store,
            "peer": self.peer,
            "input_files": self.input_files,
            "stored": self.stored,
            "ingest_failed": [{"path": p, "reason": r} for p, r in self.ingest_failed],
            "patient_conflicts": [{"path": p, "reason": r} for p, r in self.patient_conflicts],
            "sessions": [s.to_dict() for s in self.sessions],
            "output_dir": self.output_dir,
            "duration": round(self.duration, 3),
            "counts": self.counts(),
            "ok": self.ok,
            "exit_code": self.exit_code,
        }


def _label(kind: str, record: dict[str, Any]) -> str:
    meta = record.get("Metadata") or {}
    if kind == "series":
        parts = [
            str(meta.get(k)) for k in ("Modality", "SeriesNumber") if meta.get(k) not in (None, "")
        ]
        desc = meta.get("SeriesDescription")
        text = " #".join(parts) if parts else str(record.get("SeriesInstanceUID", ""))[-16:]
        n = len(record.get("Instances") or [])
        return f"{text}{' ' + str(desc) if desc else ''} ({n} inst.)"
    if kind == "study":
        return str(
            meta.get("StudyDescription")
            or meta.get("StudyID")
            or str(record.get("StudyInstanceUID", ""))[-16:]
        )
    return str(meta.get("PatientID") or meta.get("PatientName") or record.get("PatientUID", ""))


def _safe_dir_name(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned[:64] or "session"


def _write_text(path: Path, text: str) -> Path:
    with atomic_write(path) as out:
        out.write(text.encode("utf-8"))
    return path


def export_session(
    store: Store,
    session_id: str,
    out_dir: str | os.PathLike[str],
    *,
    failed: list[dict[str, str]] | None = None,
) -> list[Path]:
    """Write the session's files to ``out_dir/<job name>/<file name>`` (a job that ran
    more than once gets ``<job name>-<job id>`` folders), its data to
    ``session-data.json`` and its jobs to ``jobs.json``. Returns the files written.

    Each file appears complete or not at all. With ``failed``, a file that cannot be
    written (a name too long for the file system, a full disk, damaged stored bytes)
    is appended there as ``{"name", "job_name", "reason"}`` and the export goes on;
    without it, the first such error is raised."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    records = store.list_files(session_id)
    runs_per_job: dict[str, set[str]] = {}
    for rec in records:
        runs_per_job.setdefault(rec.job_name or rec.job_id, set()).add(rec.job_id)
    for rec in records:
        job = rec.job_name or rec.job_id
        folder = out / (job if len(runs_per_job[job]) == 1 else f"{job}-{rec.job_id[:8]}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with store.open_file(rec) as reader, atomic_write(folder / rec.name) as handle:
                while chunk := reader.read(CHUNK_SIZE):
                    handle.write(chunk)
        except (DcmProcessorError, OSError) as exc:
            if failed is None:
                raise
            reason = mask_secrets(f"{type(exc).__name__}: {exc}")
            failed.append({"name": rec.name, "job_name": job, "reason": reason})
            logger.warning("export of session file %s/%s failed: %s", job, rec.name, reason)
            continue
        written.append(folder / rec.name)
    data = [
        {
            "job_name": row["job_name"],
            "event": row["event"],
            "job_id": row["job_id"],
            "name": row["name"],
            "value": json.loads(row["value_json"]),
        }
        for row in store.list_data(session_id)
    ]
    written.append(_write_text(out / "session-data.json", json.dumps(data, indent=2, default=str)))
    jobs = [
        {
            "id": j.id,
            "name": j.name,
            "event": j.event,
            "status": j.status,
            "error": j.error,
            "progress": j.progress,
            "started_at": j.started_at,
            "finished_at": j.finished_at,
        }
        for j in store.list_jobs(session_id)
    ]
    written.append(_write_text(out / "jobs.json", json.dumps(jobs, indent=2, default=str)))
    return written


@dataclass
class _Node:
    """One scheduled job of a session's graph: it runs when everything it ``waits``
    for (the platform's graph: series jobs before their study's jobs, ...) and every
    job it ``depends`` on (its ``dependsOn``, same object) succeeded."""

    run: JobRun
    job: JobSpec
    headers: dict[str, Any]
    added_params: dict[str, Any]
    waits: list[_Node]
    depends: list[_Node]

    def blocked_reason(self) -> str | None:
        """Why this job must be skipped, or ``None``."""
        for dep in self.depends:
            if dep.run.status != SUCCEEDED:
                return f"dependency {dep.run.job_name!r} {dep.run.status}"
        for before in self.waits:
            if before.run.status != SUCCEEDED:
                return (
                    f"waits for {before.run.object_kind} job {before.run.job_name!r} "
                    f"({before.run.object_label}), which {before.run.status}"
                )
        return None


class Runner:
    """Runs a service on local input, as the platform's worker would.

    ``db_provider``/``db_url``/``db_name`` name the store (the job processes get them in
    their environment, so the URL must be reachable from them: for ``sqlite`` an
    absolute path is used). ``peer`` names a peer of the store (or is a :class:`Peer`).
    ``params`` overrides job params: key ``None`` for every job, a job name for one.
    ``handle_signals``: while :meth:`run` runs in the main thread, SIGTERM and SIGHUP
    stop it as SIGINT does (see :class:`RunInterrupted`).
    """

    def __init__(
        self,
        manifest: ServiceManifest,
        *,
        db_provider: str = "sqlite",
        db_url: str,
        db_name: str | None = None,
        peer: str | Peer | None = None,
        params: dict[str | None, dict[str, Any]] | None = None,
        keep_session: bool = False,
        cleanup_on_failure: bool = False,
        output_dir: str | os.PathLike[str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        observer: RunObserver | None = None,
        job_log_level: str = "INFO",
        poll_interval: float = 0.25,
        handle_signals: bool = True,
    ) -> None:
        self.manifest = manifest.with_params(params) if params else manifest
        # sqlite: an absolute path and the default name, as the jobs must see them;
        # the URL's password is masked in every log line and job output
        address = StoreAddress.from_options(db_provider, db_url, db_name)
        self.db_provider, self.db_url, self.db_name = address.provider, address.url, address.name
        self.peer = peer
        self.keep_session = keep_session
        self.cleanup_on_failure = cleanup_on_failure
        self.output_dir = Path(output_dir).resolve() if output_dir is not None else None
        self.work_dir = Path(work_dir).resolve() if work_dir is not None else None
        self.observer = observer or RunObserver()
        self.job_log_level = job_log_level
        self.poll_interval = poll_interval
        self.handle_signals = handle_signals
        self._by_name = {j.name: j for j in self.manifest.jobs}
        self._exported: set[Path] = set()
        self._owner = this_owner()
        self._heartbeat = Heartbeat(self._open_store)
        self._unfinished: list[str] = []  # sessions opened and not yet kept or cleaned up

    def _open_store(self) -> Store:
        return open_store(self.db_provider, self.db_url, self.db_name)

    # ------------------------------------------------------------------ run
    def run(self, inputs: Sequence[str | os.PathLike[str]]) -> RunReport:
        """Ingest ``inputs`` (folders, files, DICOMDIRs) and run the service on them."""
        start = time.monotonic()
        store = self._open_store()
        watch = contextlib.ExitStack()  # signals stop the run; the heartbeat beats
        watch.enter_context(_stop_on_signals(self.handle_signals))
        watch.enter_context(self._heartbeat)
        try:
            peer = self._resolve_peer(store)
            report = RunReport(
                service=self.manifest.name,
                version=self.manifest.version,
                store=store.describe(),
                peer=f"{peer.name} ({peer.aet}@{peer.host}:{peer.port})" if peer else None,
                output_dir=str(self.output_dir) if self.output_dir else None,
            )
            scan = scan_inputs(inputs)
            report.input_files = scan.total_files
            with EntryLoader() as loader:
                filters = self._load_filters(loader)
                sessions = self._ingest(store, scan, peer, report)
                work_root = self.work_dir or Path(tempfile.mkdtemp(prefix="dcm-service-run-"))
                for group, session in sessions:
                    report.sessions.append(session)
                    if session.stored == 0:
                        continue
                    self._run_session(
                        store, session, group, peer, filters, work_root / session.session_id
                    )
        except BaseException as exc:
            self._record_stop(store, exc)
            raise
        finally:
            watch.close()
            store.close()
        report.duration = time.monotonic() - start
        return report

    def _record_stop(self, store: Store, exc: BaseException) -> None:
        """The run stops early (a signal, or an error of the runner itself): the jobs not
        run yet are ``skipped``, a job still ``running`` is ``failed``, the sessions not
        finished are ``interrupted`` (``failed`` after an error), so none stays active."""
        why = _stop_reason(exc)
        session_status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        for session_id in self._unfinished:
            try:
                for job in store.list_jobs(session_id):
                    if job.status == "pending":
                        store.update_job(
                            job.id, status="skipped", error=f"not run: {why}", finished_at=utcnow()
                        )
                    elif job.status == "running":
                        store.update_job(job.id, status="failed", error=why, finished_at=utcnow())
                store.update_session(session_id, status=session_status)
            except DcmProcessorError as err:
                logger.warning("could not record that session %s stopped: %s", session_id, err)
        self._unfinished.clear()

    def _resolve_peer(self, store: Store) -> Peer | None:
        if self.peer is None:
            return None
        if isinstance(self.peer, Peer):
            return self.peer if self.peer.id else store.put_peer(self.peer)
        return store.get_peer(self.peer)

    def _load_filters(self, loader: EntryLoader) -> dict[str, Callable[..., Any]]:
        filters = {}
        for job in self.manifest.jobs:
            if job.registry is not None and not job.disabled:
                what = f"registryEntry of job {job.name!r}"
                try:
                    filters[job.name] = loader.load(job.registry, what)
                except ServiceError:
                    raise
                except Exception as exc:
                    raise ServiceError(
                        f"cannot import {what} {job.registry_entry!r}: {type(exc).__name__}: {exc}"
                    ) from exc
        return filters

    # --------------------------------------------------------------- ingest
    def _ingest(
        self, store: Store, scan: InputScan, peer: Peer | None, report: RunReport
    ) -> list[tuple[PatientGroup, SessionRun]]:
        from ..dicom.index import IngestConflict, IngestFailure, StoredInstance, iter_ingest

        report.ingest_failed.extend(scan.not_dicom)
        total = scan.dicom_files
        self.observer.ingest_started(total)
        done = 0
        out = []
        peer_id = peer.id if peer else None
        for group in scan.groups:
            session_id = uuid.uuid4().hex
            store.ensure_session(
                session_id,
                peer_id=peer_id,
                meta={"patient": group.label, "service": self.manifest.name},
            )
            store.update_session(session_id, owner=self._owner, heartbeat_at=utcnow())
            self._unfinished.append(session_id)
            self._heartbeat.add(session_id)
            session = SessionRun(
                session_id=session_id, patient_label=group.label, files=len(group.files)
            )
            for outcome in iter_ingest(
                group.files, store=store, peer_id=peer_id, session_id=session_id
            ):
                if isinstance(outcome, StoredInstance):
                    session.stored += 1
                    report.stored += 1
                elif isinstance(outcome, IngestFailure):
                    report.ingest_failed.append((outcome.path, outcome.reason))
                    if isinstance(outcome, IngestConflict):
                        report.patient_conflicts.append((outcome.path, outcome.reason))
                done += 1
                self.observer.ingest_advanced(min(done, total), total)
            out.append((group, session))
        for _, session in out:
            if session.stored == 0:  # nothing of this patient could be stored
                self._finished(session.session_id)
                store.delete_session(session.session_id)
        self.observer.ingest_finished(report.stored, report.ingest_failed)
        if report.stored == 0:
            first = (
                f" (e.g. {report.ingest_failed[0][0]}: {report.ingest_failed[0][1]})"
                if report.ingest_failed
                else ""
            )
            raise InvalidInputError(f"no DICOM instance of the input could be stored{first}")
        return out

    # -------------------------------------------------------------- session
    def _context(self, session_id: str, peer: Peer | None) -> RuntimeContext:
        return RuntimeContext(
            db_provider=self.db_provider,
            db_url=self.db_url,
            db_name=self.db_name,
            session_id=session_id,
            job_service_name=self.manifest.name,
            peer_id=peer.id if peer else None,
        )

    def _hook(
        self,
        store: Store,
        session: SessionRun,
        ctx: RuntimeContext,
        name: str,
        func: Callable[..., Any],
        headers: dict[str, Any],
    ) -> JobRun:
        run = JobRun(
            session.session_id,
            name,
            HOOK_EVENT,
            "session",
            session.session_id,
            session.patient_label,
        )
        record = store.create_job(
            session.session_id, name, HOOK_EVENT, service_name="dcm-processor-service"
        )
        run.job_id = record.id
        self._start(store, run)
        t0 = time.monotonic()
        try:
            with use_context(ctx.replace(job_id=record.id, job_name=name)):
                run.result = func(  # the platform's hook keywords, plus our open store
                    session_id=session.session_id,
                    headers=headers,
                    added_params={},
                    params={},
                    db_provider=self.db_provider,
                    db_name=self.db_name,
                    db_url=self.db_url,
                    job_id=record.id,
                    store=store,
                )
            run.status = SUCCEEDED
        except Exception as exc:
            run.fail(f"{type(exc).__name__}: {exc}", traceback.format_exc())
            logger.debug("%s failed", name, exc_info=True)
        run.finished_at = utcnow()
        run.duration = time.monotonic() - t0
        self._heartbeat.watch(session.session_id)
        with contextlib.suppress(DcmProcessorError):  # post-services deletes its own record
            store.update_job(
                record.id,
                status=run.status,
                finished_at=run.finished_at,
                error=run.stored_error(),
            )
        session.jobs.append(run)
        self.observer.job_finished(run)
        return run

    def _run_session(
        self,
        store: Store,
        session: SessionRun,
        group: PatientGroup,
        peer: Peer | None,
        filters: dict[str, Callable[..., Any]],
        work_dir: Path,
    ) -> None:
        from ..hooks import run_post_services, run_pre_services

        ctx = self._context(session.session_id, peer)
        self._heartbeat.watch(session.session_id)
        self.observer.session_started(session)
        patients = store.list_patients(session_id=session.session_id)
        patient = patients[0] if patients else {}
        pre = self._hook(store, session, ctx, "pre-services", run_pre_services, patient)
        if pre.failed:
            session.kept_reason = "pre-services failed"
        else:
            for node in self._plan(store, session, ctx, filters, patients):
                self._run_node(store, session, ctx, node, work_dir)
        if self.output_dir is not None:
            target = self.output_dir / _safe_dir_name(group.label)
            if target in self._exported:
                target = self.output_dir / f"{_safe_dir_name(group.label)}-{session.session_id[:8]}"
            self._exported.add(target)
            self._export(store, session, target)
        if self.keep_session:
            session.kept_reason = "--keep-session"
        elif session.export_failed and not self.cleanup_on_failure:
            session.kept_reason = (
                session.kept_reason or "export failed: session kept so no result is lost"
            )
        elif not session.ok and not self.cleanup_on_failure:
            session.kept_reason = session.kept_reason or "a job failed: session kept for inspection"
        if session.kept_reason is None:
            post = self._hook(store, session, ctx, "post-services", run_post_services, patient)
            session.cleaned_up = post.status == SUCCEEDED
        else:
            logger.info("session %s kept (%s)", session.session_id, session.kept_reason)
            store.update_session(session.session_id, status="kept")
        self._finished(session.session_id)
        self.observer.session_finished(session)

    def _export(self, store: Store, session: SessionRun, target: Path) -> None:
        """Export the session to ``target``; what cannot be written is reported in
        ``session.export_failed``, never raised (the run's report must not be lost)."""
        session.exported_to = str(target)
        try:
            files = export_session(store, session.session_id, target, failed=session.export_failed)
        except (DcmProcessorError, OSError) as exc:
            reason = mask_secrets(f"{type(exc).__name__}: {exc}")
            session.export_failed.append({"name": str(target), "job_name": "", "reason": reason})
            logger.warning("export of session %s failed: %s", session.session_id, reason)
            files = []
        session.exported_files = [str(p) for p in files]
        failed = f", {len(session.export_failed)} failed" if session.export_failed else ""
        self.observer.message(
            f"exported {len(files)} file(s){failed} of session {session.session_id[:12]} "
            f"to {target}"
        )

    def _finished(self, session_id: str) -> None:
        """``session_id`` is done with (kept, cleaned up or deleted)."""
        self._heartbeat.release(session_id)
        with contextlib.suppress(ValueError):
            self._unfinished.remove(session_id)

    def _start(self, store: Store, run: JobRun) -> None:
        """Record ``run`` as running, owned by this runner, and tell the observer."""
        assert run.job_id is not None
        run.started_at = utcnow()
        run.status = "running"
        store.update_job(
            run.job_id,
            status="running",
            started_at=run.started_at,
            owner=self._owner,
            heartbeat_at=run.started_at,
        )
        self._heartbeat.watch(run.session_id, run.job_id)
        self.observer.job_started(run)

    # ---------------------------------------------------------------- graph
    def _plan(
        self,
        store: Store,
        session: SessionRun,
        ctx: RuntimeContext,
        filters: dict[str, Callable[..., Any]],
        patients: list[dict[str, Any]],
    ) -> list[_Node]:
        """The session's job graph, as the platform's scheduler builds it for a patient:
        per study its series' jobs, then the study's jobs (waiting for every series job
        of the study), then the patient's jobs (waiting for every study job - or, for a
        study without study jobs, its series jobs). Every registry callback runs here,
        before any job does."""
        sid = session.session_id
        session.series = len(store.list_series(session_id=sid))
        nodes: list[_Node] = []
        patient_waits: list[_Node] = []
        for study in store.list_studies(session_id=sid):
            series_nodes: list[_Node] = []
            for series in store.list_series(study_id=str(study["_id"]), session_id=sid):
                series_nodes += self._schedule(
                    store, session, ctx, filters, "stable-series", "series", series, []
                )
            study_nodes = self._schedule(
                store, session, ctx, filters, "stable-study", "study", study, series_nodes
            )
            nodes += series_nodes + study_nodes
            patient_waits += study_nodes or series_nodes
        for patient in patients:
            nodes += self._schedule(
                store, session, ctx, filters, "stable-patient", "patient", patient, patient_waits
            )
        return nodes

    def _schedule(
        self,
        store: Store,
        session: SessionRun,
        ctx: RuntimeContext,
        filters: dict[str, Callable[..., Any]],
        event: str,
        kind: str,
        headers: dict[str, Any],
        waits: list[_Node],
    ) -> list[_Node]:
        """Call the registry callbacks of ``event``'s jobs for one object, drop the jobs
        whose ``dependsOn`` did not pass, and create the remaining ones."""
        jobs = self.manifest.jobs_for(event)
        if not jobs:
            return []
        sid = session.session_id
        label = _label(kind, headers)
        object_id = str(headers.get("_id"))
        added_params: dict[str, Any] = {}
        passed: list[JobSpec] = []
        why_not: dict[str, str] = {}
        for job in sorted(jobs, key=lambda j: (j.sort_position, j.index)):
            func = filters.get(job.name)
            if func is None:  # no registryEntry (local only): every object
                added_params[job.name] = {}
                passed.append(job)
                continue
            try:
                with use_context(ctx.replace(job_event=event, job_name=job.name)):
                    value = func(
                        session_id=sid,
                        job_name=job.name,
                        headers=copy.deepcopy(headers),
                        added_params=added_params,
                        params=copy.deepcopy(job.params),
                    )
                ok, extra = registry_result(value)
            except Exception as exc:
                tb = traceback.format_exc()
                why_not[job.name] = "its registry callback raised"
                self._not_scheduled(
                    session,
                    job,
                    event,
                    label,
                    f"registry callback {job.registry_entry!r} raised {type(exc).__name__}: "
                    f"{exc} (counted as false, as on the platform)",
                    tb,
                )
                logger.warning(
                    "registry callback %r of job %s raised for %s %s - counted as false, as "
                    "the platform does:\n%s",
                    job.registry_entry,
                    job.name,
                    kind,
                    label,
                    tb.rstrip(),
                )
                continue
            if extra is None:
                logger.warning(
                    "registry callback of %r returned %r as params, not a dict: ignored",
                    job.name,
                    value[1],
                )
                extra = {}
            if ok:
                added_params[job.name] = extra
                passed.append(job)
            else:
                why_not[job.name] = "its registry callback returned false"
                self._not_scheduled(session, job, event, label, FILTERED_OUT)
        kept, pruned = prune_dependencies(
            passed, all_jobs=self._by_name, event=event, object_kind=kind, why_not=why_not
        )
        for job in passed:
            if job.name in pruned:
                self._not_scheduled(session, job, event, label, pruned[job.name])
        nodes: list[_Node] = []
        by_name: dict[str, _Node] = {}
        for job in order_jobs(kept, event):
            record = store.create_job(
                sid, job.name, event, service_name=self.manifest.name, params=job.params
            )
            node = _Node(
                run=JobRun(sid, job.name, event, kind, object_id, label, job_id=record.id),
                job=job,
                headers=headers,
                added_params=added_params,
                waits=waits,
                depends=[by_name[d] for d in job.depends_on],
            )
            by_name[job.name] = node
            nodes.append(node)
        return nodes

    def _not_scheduled(
        self,
        session: SessionRun,
        job: JobSpec,
        event: str,
        label: str,
        reason: str,
        tb: str | None = None,
    ) -> None:
        entry = {"job_name": job.name, "event": event, "object": label, "reason": reason}
        if tb:
            entry["traceback"] = tb
        session.not_scheduled.append(entry)
        logger.info("job %s not scheduled for %s: %s", job.name, label, reason)

    def _run_node(
        self, store: Store, session: SessionRun, ctx: RuntimeContext, node: _Node, work_dir: Path
    ) -> None:
        run = node.run
        session.jobs.append(run)
        reason = node.blocked_reason()
        if reason is None:
            self._execute(store, run, node.job, ctx, node.headers, node.added_params, work_dir)
            return
        run.status, run.reason = "skipped", reason
        run.finished_at = utcnow()
        assert run.job_id is not None
        store.update_job(run.job_id, status="skipped", error=reason, finished_at=run.finished_at)
        logger.info(
            "job %s skipped for %s %s: %s", run.job_name, run.object_kind, run.object_label, reason
        )
        self.observer.job_finished(run)

    def _execute(
        self,
        store: Store,
        run: JobRun,
        job: JobSpec,
        ctx: RuntimeContext,
        headers: dict[str, Any],
        added_params: dict[str, Any],
        work_dir: Path,
    ) -> None:
        assert run.job_id is not None
        job_ctx = ctx.replace(job_id=run.job_id, job_event=run.event, job_name=job.name)
        self._start(store, run)
        assert job.worker is not None
        kwargs: dict[str, Any] = {  # exactly the platform's worker keywords
            "job_name": job.name,
            "worker_id": None,  # the platform's default worker: no worker record
            "worker_type": None,
            "service_id": self.manifest.name,
            "event": run.event,
            "session_id": run.session_id,
            "headers": headers,
            "added_params": added_params,
            "params": job.params,
            "db_provider": self.db_provider,
            "db_name": self.db_name,
            "db_url": self.db_url,
            "job_id": run.job_id,
        }
        spec = {
            "entry_point": job.worker.to_spec(),
            "what": f"workerEntry of job {job.name!r}",
            "kwargs": kwargs,
            "log_level": self.job_log_level,
        }
        hazard = next(filter(None, (main_file_hazard(kwargs[k], k) for k in _TEXT_ARGUMENTS)), None)
        if hazard:
            logger.warning(
                "job %s (%s %s): %s - it runs here, but on the platform the worker's generated "
                "main file cannot carry that text (the job would fail, or get a changed value)",
                job.name,
                run.object_kind,
                run.object_label,
                hazard,
            )

        def poll(elapsed: float) -> None:
            try:
                run.progress = store.get_job(run.job_id).progress  # type: ignore[arg-type]
            except DcmProcessorError:
                return
            self.observer.job_progress(run, run.progress, elapsed)

        try:
            outcome = run_job_process(
                spec,
                env=context_environ(job_ctx),
                timeout=job.timeout,
                timeout_text=job.timeout_text,
                work_dir=work_dir,
                name=f"{_safe_dir_name(job.name)}-{run.job_id[:8]}",
                marker=run.job_id,
                on_output=lambda line: self.observer.job_output(run, line),
                on_poll=poll,
                poll_interval=self.poll_interval,
            )
        except BaseException as exc:  # a signal: the job's processes were ended; say so
            with contextlib.suppress(Exception):
                store.update_job(
                    run.job_id,
                    status="failed",
                    finished_at=utcnow(),
                    error=f"{_stop_reason(exc)} - the job's processes were ended",
                )
            raise
        self._heartbeat.watch(run.session_id)
        run.status = outcome.status
        run.result = outcome.result
        run.error = outcome.error
        run.traceback = outcome.traceback
        run.duration = outcome.duration
        run.log_path = str(outcome.log_path) if outcome.log_path else None
        run.finished_at = utcnow()
        detail = run.stored_error()
        if outcome.status != SUCCEEDED and outcome.output_tail and not outcome.traceback:
            detail = bound_text(
                f"{outcome.error}\n--- output tail ---\n" + "\n".join(outcome.output_tail[-20:])
            )
        record = store.update_job(
            run.job_id,
            status=run.status,
            finished_at=run.finished_at,
            error=detail,
        )
        run.progress = record.progress
        logger.info(
            "job %s (%s %s) %s in %.1fs%s",
            job.name,
            run.object_kind,
            run.object_label,
            run.status,
            run.duration,
            f": {run.error}" if run.error else "",
        )
        self.observer.job_finished(run)


def run_service(
    manifest: ServiceManifest,
    inputs: Sequence[str | os.PathLike[str]],
    **options: Any,
) -> RunReport:
    """Run ``manifest``'s jobs on ``inputs``; ``options`` are :class:`Runner`'s."""
    return Runner(manifest, **options).run(inputs)
