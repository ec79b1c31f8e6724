"""Which jobs of one object are scheduled, and in which order (the platform's rules).

For one stable object (a series, a study or the patient) the platform's scheduler:

1. considers the enabled jobs of the event in ``sortPosition`` order (default 1,
   manifest order breaking ties) and calls each job's registry callback;
2. keeps a job only when every job its ``dependsOn`` names (a list, or one name as a
   string) was itself kept - repeated until nothing changes (:func:`prune_dependencies`).
   ``dependsOn`` only ever sees jobs of the *same* event and object: a dependency on a
   job of another event, a disabled job, an unknown job, or a cycle never passes, so
   the job is never scheduled. :func:`dependency_problems` finds these in a manifest.

The kept jobs run in ``dependsOn`` order (:func:`order_jobs`: a topological order,
``sortPosition`` then manifest order breaking ties). The order between objects (every
series of a study before the study, every study before the patient) is the runner's
job graph (:mod:`.runner`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

from .._context import JOB_EVENTS
from .._errors import ServiceError
from .manifest import JobSpec

__all__ = ["SUCCEEDED", "TERMINAL", "dependency_problems", "order_jobs", "prune_dependencies"]

SUCCEEDED = "succeeded"
#: Job states after which a job does not change any more.
TERMINAL = ("succeeded", "failed", "skipped", "timed-out")


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
