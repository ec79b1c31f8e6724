"""Job ordering and dependency rules.

Events run in the platform's order — every stable series, then every stable study, then
the patient (:data:`~dcm_processor_service.JOB_EVENTS`). Within one event and one object,
the scheduled jobs run in ``dependsOn`` order (a topological order); jobs that do not
depend on each other keep ``sortPosition`` order, then manifest order.

A dependency on a job of the *same* event means "that job, for this same object"; it
must have been scheduled (its registry callback returned true) and must have succeeded,
otherwise the dependent is skipped with the reason. A dependency on a job of an *earlier*
event (a study job depending on a series job) means "every run of that job in this
session so far succeeded, and there was at least one". A dependency on a job that runs
only in a later event, on an unknown job, or a cycle, is a manifest error.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Mapping, Sequence

from .._context import JOB_EVENTS
from .._errors import ServiceError
from .manifest import JobSpec

__all__ = ["SUCCEEDED", "TERMINAL", "blocked_reason", "order_jobs", "validate_dependencies"]

logger = logging.getLogger(__name__)

SUCCEEDED = "succeeded"
#: Job states after which a job does not change any more.
TERMINAL = ("succeeded", "failed", "skipped", "timed-out")


def _rank(event: str) -> int:
    return JOB_EVENTS.index(event)


def validate_dependencies(jobs: Sequence[JobSpec]) -> None:
    """Check every ``dependsOn``: known job, not itself, not only in a later event, and
    no cycle within an event. Raises :class:`ServiceError` naming the jobs."""
    by_name = {j.name: j for j in jobs}
    for job in jobs:
        for dep in job.depends_on:
            if dep == job.name:
                raise ServiceError(f"job {job.name!r} dependsOn itself")
            if dep not in by_name:
                raise ServiceError(
                    f"job {job.name!r} dependsOn unknown job {dep!r}; jobs: {', '.join(by_name)}"
                )
            target = by_name[dep]
            for event in job.events:
                if event not in target.events and min(map(_rank, target.events)) > _rank(event):
                    raise ServiceError(
                        f"job {job.name!r} ({event}) dependsOn {dep!r}, which runs only on "
                        f"{', '.join(target.events)} - after it"
                    )
            if target.disabled and not job.disabled:
                logger.warning(
                    "job %r dependsOn disabled job %r: it will be skipped", job.name, dep
                )
    for event in JOB_EVENTS:
        members = [j for j in jobs if event in j.events]
        ordered = order_jobs(members, event, strict=False)
        if len(ordered) != len(members):
            cycle = sorted({j.name for j in members} - {j.name for j in ordered})
            raise ServiceError(
                f"dependsOn cycle between jobs {', '.join(map(repr, cycle))} ({event})"
            )


def order_jobs(jobs: Iterable[JobSpec], event: str, *, strict: bool = True) -> list[JobSpec]:
    """``jobs`` (of ``event``) in dependency order, ``sortPosition`` then manifest order
    breaking ties. Dependencies outside ``jobs`` are ignored here (see
    :func:`blocked_reason`). With ``strict``, a cycle raises; otherwise the jobs on it
    are left out."""
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


def blocked_reason(
    job: JobSpec,
    event: str,
    *,
    all_jobs: Mapping[str, JobSpec],
    scheduled: Iterable[str],
    outcomes: Mapping[str, str],
    history: Mapping[str, Sequence[str]],
    object_kind: str,
) -> str | None:
    """Why ``job`` must be skipped, or ``None`` when its dependencies are met.

    ``scheduled``: jobs of this event and object whose registry callback returned true;
    ``outcomes``: status of the jobs already run for this object; ``history``: statuses
    of every run so far in the session, by job name (for dependencies on earlier events).
    """
    scheduled = set(scheduled)
    for dep in job.depends_on:
        target = all_jobs[dep]
        if target.disabled:
            return f"dependency {dep!r} is disabled"
        if event in target.events:
            if dep not in scheduled:
                return f"dependency {dep!r} was not scheduled for this {object_kind}"
            status = outcomes.get(dep)
            if status != SUCCEEDED:
                return f"dependency {dep!r} {status or 'did not run'}"
        else:
            runs = history.get(dep, ())
            if not runs:
                return (
                    f"dependency {dep!r} ({', '.join(target.events)}) did not run in this session"
                )
            bad = [s for s in runs if s != SUCCEEDED]
            if bad:
                return f"dependency {dep!r} {bad[0]} in this session"
    return None
