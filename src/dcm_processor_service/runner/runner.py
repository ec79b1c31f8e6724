"""The local runner: plays the platform worker's part on one machine.

:func:`run_service` (or :class:`Runner`) takes a service manifest and input DICOM and,
calling the service exactly as the platform does (:mod:`.platform`):

1. groups the input by patient and ingests it into the store, one session per patient,
   with the given peer as the images' source;
2. per session, runs the pre-services hook (:func:`~dcm_processor_service.run_pre_services`);
3. builds the session's job graph as the platform's scheduler does (:mod:`.graph`): for
   each study, for each of its series, then for the study, then for the patient, calls
   the registry callbacks of that event's jobs, drops jobs whose ``dependsOn`` did not
   pass (the report says why), and creates the remaining jobs;
4. hands the graph to the executor (:mod:`.executors`; by default each job in its own
   process on this machine, one after the other) with the platform's environment
   variables, its timeout, and the worker's keywords ``job_name, worker_id,
   worker_type, service_id, event, session_id, headers, added_params, params,
   db_provider, db_name, db_url, job_id``; a job whose predecessor did not succeed is
   skipped with the reason; every job's status and timings go to the store (pending ->
   running -> succeeded / failed / skipped / timed-out);
5. exports the session's files and data (``output_dir``, :mod:`.export`; a file that
   cannot be written is reported and the export goes on), then runs the post-services
   hook (clean-up) — unless ``keep_session``, or a job or the export failed (then, as on
   the platform where the post-services job depends on every job, the session is kept
   for inspection, with status ``kept``; ``cleanup_on_failure`` cleans up anyway).

The registry callbacks run in the runner's process (the platform's scheduler runs them
in its own); the pre/post hooks run in the runner's process too. What the run did is
returned as a :class:`~.report.RunReport`.

The session and job records carry the runner's ``PID@HOST`` and a heartbeat
(:mod:`.ownership`), so a record left behind by a runner that died is recognisable.
SIGTERM, SIGHUP and SIGINT stop a run the same way (:mod:`.stopping`): the running
job's processes are ended, it is recorded ``failed``, the jobs not run yet ``skipped``,
the session ``interrupted``, and :class:`~.stopping.RunInterrupted` (a
``KeyboardInterrupt``) is raised.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._context import RuntimeContext, use_context
from .._errors import DcmProcessorError, InvalidInputError, ServiceError
from .._safe_text import mask_secrets
from ..store.address import StoreAddress
from ..store.base import Store
from ..store.records import JobStatus, Peer, SessionRecord, SessionStatus, utcnow
from ..store.registry import open_store
from .entries import EntryLoader
from .executors.base import Executor
from .executors.local import LocalExecutor
from .export import export_session, safe_dir_name
from .graph import SUCCEEDED, build_session_graph
from .inputs import InputScan, PatientGroup, scan_inputs
from .jobs import JobRecorder, JobSettings, SessionJobs
from .ownership import Heartbeat, this_owner
from .progress import RunObserver
from .report import JobRun, RunReport, SessionRun
from .resume import (
    GRAPH_META,
    RUN_META,
    graph_plan,
    mark_succeeded,
    new_run_id,
    recorded_jobs,
    sessions_to_resume,
)
from .specs import ServiceManifest
from .stopping import stop_on_signals, stop_reason
from .window import SessionWindow

__all__ = ["Runner", "run_service"]

logger = logging.getLogger(__name__)

#: Pseudo-event of the pre/post-services hooks in the job records.
HOOK_EVENT = "session"
#: ``reason`` of a job a resumed run did not run again (it had succeeded).
RESUMED_REASON = "succeeded before the run was resumed"


@dataclass
class SessionItem:
    """A session to run, and what opening it found out (for closing it)."""

    session: SessionRun
    label: str
    peer: Peer | None
    resumed: SessionRecord | None = None
    ctx: RuntimeContext | None = None
    patients: list[dict[str, Any]] = field(default_factory=list)


class Runner:
    """Runs a service on local input, as the platform's worker would.

    ``db_provider``/``db_url``/``db_name`` name the store (the job processes get them in
    their environment, so the URL must be reachable from them: for ``sqlite`` an
    absolute path is used). ``peer`` names a peer of the store (or is a :class:`Peer`).
    ``params`` overrides job params: key ``None`` for every job, a job name for one.
    ``handle_signals``: while :meth:`run` runs in the main thread, SIGTERM and SIGHUP
    stop it as SIGINT does (see :class:`~.stopping.RunInterrupted`). ``executor`` runs
    the jobs (default: a :class:`~.executors.local.LocalExecutor` per run, its work
    folder ``work_dir``, polling every ``poll_interval`` seconds; a
    :class:`~.executors.dask_executor.DaskExecutor` runs them on a cluster). ``run_id``
    names the run in its sessions' meta (default: a new id); :meth:`resume` continues
    a run from the job states in the store (:mod:`.resume`).
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
        executor: Executor | None = None,
        run_id: str | None = None,
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
        self.executor = executor
        self.run_id = run_id or new_run_id()
        self._exported: set[Path] = set()
        self._owner = this_owner()
        self._heartbeat = Heartbeat(self._open_store)
        self._unfinished: list[str] = []  # sessions opened and not yet kept or cleaned up
        self._settings = JobSettings(
            service_name=self.manifest.name,
            db_provider=self.db_provider,
            db_url=self.db_url,
            db_name=self.db_name,
            log_level=job_log_level,
        )

    def _open_store(self) -> Store:
        return open_store(self.db_provider, self.db_url, self.db_name)

    def _recorder(self, store: Store) -> JobRecorder:
        return JobRecorder(store, self._owner, self._heartbeat, self.observer)

    # ------------------------------------------------------------------ run
    def run(self, inputs: Sequence[str | os.PathLike[str]]) -> RunReport:
        """Ingest ``inputs`` (folders, files, DICOMDIRs) and run the service on them."""

        def work(store: Store, report: RunReport, executor: Executor) -> None:
            peer = self._resolve_peer(store)
            report.peer = self._peer_text(peer)
            scan = scan_inputs(inputs)
            report.input_files = scan.total_files
            report.input_skipped = scan.skipped
            with EntryLoader() as loader:
                callbacks = self._load_callbacks(loader)
                sessions = self._ingest(store, scan, peer, report)
                report.sessions.extend(session for _, session in sessions)
                items = [SessionItem(s, g.label, peer) for g, s in sessions if s.stored]
                self.observer.sessions_planned(len(items))
                self._run_sessions(store, items, callbacks, executor)

        return self._guarded(work)

    def resume(self) -> RunReport:
        """Continue run :attr:`run_id` from the job states in the store: its unfinished
        sessions' jobs that did not succeed run (again); nothing that succeeded does
        (see :mod:`.resume`)."""

        def work(store: Store, report: RunReport, executor: Executor) -> None:
            records = sessions_to_resume(store, self.run_id)
            self.observer.sessions_planned(len(records))
            items = []
            for record in records:
                peer = store.get_peer(record.peer_id) if record.peer_id else None
                report.peer = report.peer or self._peer_text(peer)
                session = SessionRun(
                    session_id=record.id,
                    patient_label=str(record.meta.get("patient") or record.id[:12]),
                )
                session.stored = session.files = sum(
                    len(s.get("Instances") or []) for s in store.list_series(session_id=record.id)
                )
                store.update_session(record.id, owner=self._owner, heartbeat_at=utcnow())
                self._unfinished.append(record.id)
                self._heartbeat.add(record.id)
                report.sessions.append(session)
                items.append(SessionItem(session, session.patient_label, peer, record))
            with EntryLoader() as loader:
                callbacks = self._load_callbacks(loader)
                self._run_sessions(store, items, callbacks, executor)
            report.resumed_done = sum(1 for j in report.jobs if j.reason == RESUMED_REASON)

        return self._guarded(work)

    def _guarded(self, work: Callable[[Store, RunReport, Executor], None]) -> RunReport:
        """Run ``work`` with the store open, signals handled, the heartbeat beating; a
        run that stops early leaves no record active (:meth:`_record_stop`)."""
        start = time.monotonic()
        store = self._open_store()
        executor = self.executor or LocalExecutor(self.work_dir, poll_interval=self.poll_interval)
        watch = contextlib.ExitStack()  # signals stop the run; the heartbeat beats
        watch.enter_context(stop_on_signals(self.handle_signals))
        watch.enter_context(self._heartbeat)
        report = RunReport(
            service=self.manifest.name,
            version=self.manifest.version,
            store=store.describe(),
            peer=None,
            output_dir=str(self.output_dir) if self.output_dir else None,
            run_id=self.run_id,
        )
        self.observer.message(f"run {self.run_id} (resume it with --resume {self.run_id})")
        try:
            work(store, report, executor)
        except BaseException as exc:
            self._record_stop(store, exc)
            raise
        finally:
            watch.close()
            store.close()
        report.duration = time.monotonic() - start
        return report

    @staticmethod
    def _peer_text(peer: Peer | None) -> str | None:
        return f"{peer.name} ({peer.aet}@{peer.host}:{peer.port})" if peer else None

    def _record_stop(self, store: Store, exc: BaseException) -> None:
        """The run stops early (a signal, or an error of the runner itself): the jobs not
        run yet are ``skipped``, a job still ``running`` is ``failed``, the sessions not
        finished are ``interrupted`` (``failed`` after an error), so none stays active."""
        why = stop_reason(exc)
        session_status = (
            SessionStatus.INTERRUPTED
            if isinstance(exc, KeyboardInterrupt)
            else SessionStatus.FAILED
        )
        for session_id in self._unfinished:
            try:
                for job in store.list_jobs(session_id):
                    if job.status == JobStatus.PENDING:
                        store.update_job(
                            job.id,
                            status=JobStatus.SKIPPED,
                            error=f"not run: {why}",
                            finished_at=utcnow(),
                        )
                    elif job.status == JobStatus.RUNNING:
                        store.update_job(
                            job.id, status=JobStatus.FAILED, error=why, finished_at=utcnow()
                        )
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

    def _load_callbacks(self, loader: EntryLoader) -> dict[str, Callable[..., Any]]:
        """The registry callbacks of the enabled jobs, by job name, imported here."""
        callbacks = {}
        for job in self.manifest.jobs:
            if job.registry is not None and not job.disabled:
                what = f"registryEntry of job {job.name!r}"
                try:
                    callbacks[job.name] = loader.load(job.registry, what)
                except ServiceError:
                    raise
                except Exception as exc:
                    raise ServiceError(
                        f"cannot import {what} {job.registry_entry!r}: {type(exc).__name__}: {exc}"
                    ) from exc
        return callbacks

    # --------------------------------------------------------------- ingest
    def _ingest(
        self, store: Store, scan: InputScan, peer: Peer | None, report: RunReport
    ) -> list[tuple[PatientGroup, SessionRun]]:
        from ..index.ingest import IngestConflict, IngestFailure, StoredInstance, iter_ingest

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
                meta={"patient": group.label, "service": self.manifest.name, RUN_META: self.run_id},
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

    def _run_sessions(
        self,
        store: Store,
        items: Sequence[SessionItem],
        callbacks: dict[str, Callable[..., Any]],
        executor: Executor,
    ) -> None:
        """Run the sessions of ``items``: one after the other, or - on an executor that
        runs tasks in parallel (its ``sessions_at_once``) - several at once
        (:class:`~.window.SessionWindow`)."""
        window: SessionWindow[SessionItem] = SessionWindow(
            executor,
            lambda item: self._open_session(store, item, callbacks, executor),
            lambda item: self._close_session(store, item),
            int(getattr(executor, "sessions_at_once", 1)),
        )
        window.run(items)

    def _open_session(
        self,
        store: Store,
        item: SessionItem,
        callbacks: dict[str, Callable[..., Any]],
        executor: Executor,
    ) -> SessionJobs | None:
        """Open one session: pre-services hook, job graph, jobs submitted to
        ``executor``; its :class:`SessionJobs` (``None`` when no job is to run). For a
        resumed run (``item.resumed``: the session's record) the hook and the jobs that
        succeeded before are not run again."""
        from ..hooks import run_pre_services

        session, resumed = item.session, item.resumed
        sid = session.session_id
        item.ctx = ctx = self._context(sid, item.peer)
        self._heartbeat.watch(sid)
        self.observer.session_started(session)
        item.patients = patients = [dict(p) for p in store.list_patients(session_id=sid)]
        patient = patients[0] if patients else {}
        if resumed is None or not self._hook_succeeded(store, sid, "pre-services"):
            pre = self._hook(store, session, ctx, "pre-services", run_pre_services, patient)
            if pre.failed:
                session.kept_reason = "pre-services failed"
                return None
        session.series = len(store.list_series(session_id=sid))
        existing = recorded_jobs(resumed) if resumed is not None else None
        nodes = build_session_graph(
            self.manifest, store, session, ctx, callbacks, patients, existing
        )
        store.update_session(sid, meta={GRAPH_META: graph_plan(nodes)})
        done = mark_succeeded(store, nodes) if resumed is not None else []
        for node in done:
            node.run.reason = RESUMED_REASON
        jobs = SessionJobs(self._recorder(store), self._settings, session, ctx, nodes)
        jobs.submit(executor, done)
        return jobs

    def _close_session(self, store: Store, item: SessionItem) -> None:
        """Close one session: export, then post-services (or keep it, and say why)."""
        from ..hooks import run_post_services

        session, label = item.session, item.label
        patient = item.patients[0] if item.patients else {}
        if self.output_dir is not None:
            target = self.output_dir / safe_dir_name(label)
            if target in self._exported:
                target = self.output_dir / f"{safe_dir_name(label)}-{session.session_id[:8]}"
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
            assert item.ctx is not None
            post = self._hook(store, session, item.ctx, "post-services", run_post_services, patient)
            session.cleaned_up = post.status == SUCCEEDED
        else:
            logger.info("session %s kept (%s)", session.session_id, session.kept_reason)
            store.update_session(session.session_id, status=SessionStatus.KEPT)
        self._finished(session.session_id)
        self.observer.session_finished(session)

    @staticmethod
    def _hook_succeeded(store: Store, session_id: str, name: str) -> bool:
        record = store.find_job(session_id, name, HOOK_EVENT)
        return record is not None and record.status == JobStatus.SUCCEEDED

    def _hook(
        self,
        store: Store,
        session: SessionRun,
        ctx: RuntimeContext,
        name: str,
        func: Callable[..., Any],
        headers: dict[str, Any],
    ) -> JobRun:
        """Run the pre- or post-services hook in this process, recorded as a job."""
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
        self._recorder(store).started(run)
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
        self._heartbeat.job_ended(record.id)
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


def run_service(
    manifest: ServiceManifest,
    inputs: Sequence[str | os.PathLike[str]],
    **options: Any,
) -> RunReport:
    """Run ``manifest``'s jobs on ``inputs``; ``options`` are :class:`Runner`'s."""
    return Runner(manifest, **options).run(inputs)
