"""A session's job graph, built as the platform's scheduler builds it for one patient.

The graph of a session (one patient)::

    pre-services -> every series' jobs -> each study's jobs -> the patient's jobs -> post-services

:func:`build_session_graph` calls the registry callbacks (in the runner's process, as
the platform's scheduler calls them in its own), drops the jobs that did not pass, and
creates the others as :class:`JobNode` s: each series' jobs wait for the pre-services
hook (the runner runs the graph only when the hook succeeded), each study's jobs for
every series job of the study, the patient's jobs for every study job (or, for a study
without study jobs, its series jobs). The post-services hook waits for everything (the
runner runs it last). A job runs only when everything it waits for and every job its
``dependsOn`` names succeeded (:meth:`JobNode.blocked_reason`).

For one stable object (a series, a study or the patient) the platform's scheduler:

1. considers the enabled jobs of the event in ``sortPosition`` order (default 1,
   manifest order breaking ties) and calls each job's registry callback;
2. keeps a job only when every job its ``dependsOn`` names (a list, or one name as a
   string) was itself kept - repeated until nothing changes (:func:`prune_dependencies`).
   ``dependsOn`` only ever sees jobs of the *same* event and object: a dependency on a
   job of another event, a disabled job, an unknown job, or a cycle never passes, so
   the job is never scheduled. :func:`dependency_problems` finds these in a manifest.

The kept jobs run in ``dependsOn`` order (:func:`order_jobs`: a topological order,
``sortPosition`` then manifest order breaking ties).
"""

from __future__ import annotations

import copy
import heapq
import logging
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._context import JOB_EVENTS, RuntimeContext, use_context
from .._errors import ServiceError
from ..store.base import Store
from ..store.records import JobStatus
from .platform import registry_result
from .report import FILTERED_OUT, JobRun, SessionRun
from .specs import JobSpec, ServiceManifest

__all__ = [
    "SUCCEEDED",
    "JobNode",
    "build_session_graph",
    "dependency_problems",
    "object_label",
    "order_jobs",
    "prune_dependencies",
]

logger = logging.getLogger(__name__)

SUCCEEDED = JobStatus.SUCCEEDED


def dependency_problems(jobs: Sequence[JobSpec]) -> list[tuple[str, str]]:
    """``(job name, message)`` for every ``dependsOn`` that can never pass: on itself,
    on an unknown or disabled job, on a job that does not run on one of the job's
    events, or on a cycle. Such a job is never scheduled (for that event)."""
    by_name = {j.name: j for j in jobs}
    out: list[tuple[str, str]] = []
    for job in jobs:
        if job.disabled:
            continue
        for dep in job.depends_on:
            target = by_name.get(dep)
            if dep == job.name:
                out.append((job.name, "depends on itself - the job is never scheduled"))
            elif target is None:
                out.append(
                    (
                        job.name,
                        f"names unknown job {dep!r} (jobs: {', '.join(by_name)}) - "
                        "the job is never scheduled",
                    )
                )
            elif target.disabled:
                out.append((job.name, f"names disabled job {dep!r} - the job is never scheduled"))
            else:
                missing = [ev for ev in job.events if ev not in target.events]
                if missing:
                    out.append(
                        (
                            job.name,
                            f"names {dep!r}, which does not run on {', '.join(missing)} - "
                            "dependsOn only sees jobs of the same event, so the job is never "
                            f"scheduled on {', '.join(missing)} (a study job already waits for "
                            "every series job of its study, a patient job for every study job)",
                        )
                    )
    for event in JOB_EVENTS:
        members = {j.name: j for j in jobs if event in j.events and not j.disabled}
        cycle = sorted(name for name in members if _on_cycle(name, members))
        for name in cycle:
            out.append(
                (
                    name,
                    f"is part of a dependsOn cycle ({', '.join(map(repr, cycle))}, {event}) - "
                    "none of these jobs is ever scheduled",
                )
            )
    return list(dict.fromkeys(out))


def _on_cycle(start: str, members: Mapping[str, JobSpec]) -> bool:
    """Whether ``start`` can reach itself through ``dependsOn`` within ``members``."""
    stack = [d for d in members[start].depends_on if d in members and d != start]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name == start:
            return True
        if name in seen:
            continue
        seen.add(name)
        stack.extend(d for d in members[name].depends_on if d in members)
    return False


def prune_dependencies(
    passed: Sequence[JobSpec],
    *,
    all_jobs: Mapping[str, JobSpec],
    event: str,
    object_kind: str,
    why_not: Mapping[str, str] | None = None,
) -> tuple[list[JobSpec], dict[str, str]]:
    """The platform's ``dependsOn`` rule: of the jobs whose registry callback passed,
    keep those whose every dependency was kept, until nothing changes.

    Returns ``(kept, pruned)``: ``kept`` in the order they were accepted, ``pruned``
    maps each dropped job to the reason (naming the dependency and why it did not
    pass; ``why_not`` gives that reason for jobs of this event that did not pass their
    registry callback).
    """
    kept: list[JobSpec] = []
    kept_names: set[str] = set()
    remaining = list(passed)
    while True:
        waiting = []
        for job in remaining:
            if all(dep in kept_names for dep in job.depends_on):
                kept.append(job)
                kept_names.add(job.name)
            else:
                waiting.append(job)
        if len(waiting) == len(remaining):
            break
        remaining = waiting
    pruned: dict[str, str] = {}
    left = {j.name for j in remaining}
    for job in remaining:
        dep = next(d for d in job.depends_on if d not in kept_names)
        pruned[job.name] = f"dependsOn {dep!r}, which " + _why(
            dep, all_jobs, event, object_kind, left, why_not or {}
        )
    return kept, pruned


def _why(
    dep: str,
    all_jobs: Mapping[str, JobSpec],
    event: str,
    object_kind: str,
    left: set[str],
    why_not: Mapping[str, str],
) -> str:
    target = all_jobs.get(dep)
    if target is None:
        return "is not a job of this service"
    if target.disabled:
        return "is disabled"
    if event not in target.events:
        return f"does not run on {event} (dependsOn only sees jobs of the same event)"
    if dep in why_not:
        return f"was not scheduled for this {object_kind} ({why_not[dep]})"
    if dep in left:
        return f"was not scheduled for this {object_kind} either"
    return f"was not scheduled for this {object_kind}"


def order_jobs(jobs: Iterable[JobSpec], event: str, *, strict: bool = True) -> list[JobSpec]:
    """``jobs`` (of ``event``) in dependency order, ``sortPosition`` then manifest order
    breaking ties. Dependencies outside ``jobs`` are ignored here. With ``strict``, a
    cycle raises; otherwise the jobs on it are left out."""
    members = {j.name: j for j in jobs}
    deps = {
        name: {d for d in j.depends_on if d in members and event in members[d].events}
        for name, j in members.items()
    }
    dependents: dict[str, list[str]] = {name: [] for name in members}
    for name, ds in deps.items():
        for d in ds:
            dependents[d].append(name)
    waiting = {name: len(ds) for name, ds in deps.items()}
    ready = [(j.sort_position, j.index, name) for name, j in members.items() if not waiting[name]]
    heapq.heapify(ready)
    out: list[JobSpec] = []
    while ready:
        _, _, name = heapq.heappop(ready)
        out.append(members[name])
        for nxt in dependents[name]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                heapq.heappush(ready, (members[nxt].sort_position, members[nxt].index, nxt))
    if strict and len(out) != len(members):
        cycle = sorted(set(members) - {j.name for j in out})
        raise ServiceError(f"dependsOn cycle between jobs {', '.join(map(repr, cycle))} ({event})")
    return out


# ------------------------------------------------------------ session graph
@dataclass
class JobNode:
    """One scheduled job of a session's graph: it runs when everything it ``waits``
    for (the platform's graph: series jobs before their study's jobs, ...) and every
    job it ``depends`` on (its ``dependsOn``, same object) succeeded."""

    run: JobRun
    job: JobSpec
    headers: dict[str, Any]
    added_params: dict[str, Any]
    waits: list[JobNode]
    depends: list[JobNode]

    @property
    def key(self) -> str:
        """The job's id (its record in the store)."""
        assert self.run.job_id is not None
        return self.run.job_id

    @property
    def after(self) -> tuple[str, ...]:
        """The ids of the jobs that must succeed before this one runs."""
        return tuple(dict.fromkeys(n.key for n in (*self.depends, *self.waits)))

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


def object_label(kind: str, record: dict[str, Any]) -> str:
    """A short label of a series, study or patient record, for progress and reports."""
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


def build_session_graph(
    manifest: ServiceManifest,
    store: Store,
    session: SessionRun,
    ctx: RuntimeContext,
    callbacks: Mapping[str, Callable[..., Any]],
    patients: Sequence[dict[str, Any]],
    existing: Mapping[tuple[str, str, str], str] | None = None,
) -> list[JobNode]:
    """The session's job graph, as the platform's scheduler builds it for a patient:
    per study its series' jobs, then the study's jobs (waiting for every series job
    of the study), then the patient's jobs (waiting for every study job - or, for a
    study without study jobs, its series jobs), in the order they are to run.

    ``callbacks`` are the registry callbacks by job name (a job without one is
    scheduled for every object). Every callback runs here, in this process, before any
    job does; the jobs that are not scheduled are listed in ``session.not_scheduled``
    with the reason. Each node's job record is created (``pending``) in ``store`` -
    or, when ``existing`` maps its ``(event, job name, object id)`` to a job id (a
    resumed run, see :mod:`.resume`), that record is used again."""
    return _GraphBuilder(manifest, store, session, ctx, callbacks, existing or {}).build(patients)


class _GraphBuilder:
    def __init__(
        self,
        manifest: ServiceManifest,
        store: Store,
        session: SessionRun,
        ctx: RuntimeContext,
        callbacks: Mapping[str, Callable[..., Any]],
        existing: Mapping[tuple[str, str, str], str],
    ) -> None:
        self.manifest = manifest
        self.existing = existing
        self.store = store
        self.session = session
        self.ctx = ctx
        self.callbacks = callbacks
        self.all_jobs = {j.name: j for j in manifest.jobs}

    def build(self, patients: Sequence[dict[str, Any]]) -> list[JobNode]:
        sid = self.session.session_id
        nodes: list[JobNode] = []
        patient_waits: list[JobNode] = []
        for study in self.store.list_studies(session_id=sid):
            series_nodes: list[JobNode] = []
            for series in self.store.list_series(study_id=str(study["_id"]), session_id=sid):
                series_nodes += self.schedule("stable-series", "series", dict(series), [])
            study_nodes = self.schedule("stable-study", "study", dict(study), series_nodes)
            nodes += series_nodes + study_nodes
            patient_waits += study_nodes or series_nodes
        for patient in patients:
            nodes += self.schedule("stable-patient", "patient", patient, patient_waits)
        return nodes

    def schedule(
        self, event: str, kind: str, headers: dict[str, Any], waits: list[JobNode]
    ) -> list[JobNode]:
        """Call the registry callbacks of ``event``'s jobs for one object, drop the jobs
        whose ``dependsOn`` did not pass, and create the remaining ones."""
        jobs = self.manifest.jobs_for(event)
        if not jobs:
            return []
        sid = self.session.session_id
        label = object_label(kind, headers)
        object_id = str(headers.get("_id"))
        added_params: dict[str, Any] = {}
        passed: list[JobSpec] = []
        why_not: dict[str, str] = {}
        for job in sorted(jobs, key=lambda j: (j.sort_position, j.index)):
            func = self.callbacks.get(job.name)
            if func is None:  # no registryEntry (local only): every object
                added_params[job.name] = {}
                passed.append(job)
                continue
            try:
                with use_context(self.ctx.replace(job_event=event, job_name=job.name)):
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
                self.not_scheduled(
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
                self.not_scheduled(job, event, label, FILTERED_OUT)
        kept, pruned = prune_dependencies(
            passed, all_jobs=self.all_jobs, event=event, object_kind=kind, why_not=why_not
        )
        for job in passed:
            if job.name in pruned:
                self.not_scheduled(job, event, label, pruned[job.name])
        nodes: list[JobNode] = []
        by_name: dict[str, JobNode] = {}
        for job in order_jobs(kept, event):
            record = self.store.create_job(
                sid,
                job.name,
                event,
                job_id=self.existing.get((event, job.name, object_id)),
                service_name=self.manifest.name,
                params=job.params,
            )
            node = JobNode(
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

    def not_scheduled(
        self, job: JobSpec, event: str, label: str, reason: str, tb: str | None = None
    ) -> None:
        entry = {"job_name": job.name, "event": event, "object": label, "reason": reason}
        if tb:
            entry["traceback"] = tb
        self.session.not_scheduled.append(entry)
        logger.info("job %s not scheduled for %s: %s", job.name, label, reason)
