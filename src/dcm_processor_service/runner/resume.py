"""Resuming a run from the job states in the store (``dcm-service run --resume RUN``).

Every run has an id (:func:`new_run_id`), written into the meta of each session it
opens (``run``), with the session's job graph once it is built (``graph``: job id,
event, job name and object id of every scheduled job, :func:`graph_plan`). A run
whose runner died (or was stopped) leaves its unfinished sessions in the store -
finished ones were cleaned up. Resuming it:

1. finds the run's unfinished sessions (:func:`sessions_to_resume`); a session whose
   runner still lives (same host: its process exists; elsewhere: a fresh heartbeat)
   is refused, so two runners never work on one session;
2. per session, runs the pre-services hook only if it did not succeed, builds the job
   graph again - the registry callbacks run again, each job reuses its record
   (:func:`recorded_jobs`) - and marks the jobs whose record says ``succeeded`` as
   done (:func:`mark_succeeded`): they are not run again;
3. runs the other jobs, exports and cleans up as a run does.

The promise is *at least once*: a job that was running when the runner died runs
again (its record did not say ``succeeded``), so the steps a job takes must be safe to
repeat (session data and files replace; a C-STORE of the same SOP Instance UID
replaces the instance on the PACS).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from .._errors import InvalidInputError, ServiceError
from ..store.base import Store
from ..store.records import JobStatus, SessionRecord
from .graph import JobNode
from .ownership import judge_record

__all__ = [
    "GRAPH_META",
    "RUN_META",
    "graph_plan",
    "mark_succeeded",
    "new_run_id",
    "recorded_jobs",
    "sessions_to_resume",
]

logger = logging.getLogger(__name__)

#: Session meta key holding the id of the run that opened it.
RUN_META = "run"
#: Session meta key holding the session's job graph (see :func:`graph_plan`).
GRAPH_META = "graph"


def new_run_id() -> str:
    """A new run id (12 hex digits)."""
    return uuid.uuid4().hex[:12]


def graph_plan(nodes: Sequence[JobNode]) -> list[list[str]]:
    """``[job id, event, job name, object id]`` of each node (kept in the session's
    meta, so a resumed run finds every job's record again)."""
    return [[n.key, n.run.event, n.run.job_name, str(n.run.object_id)] for n in nodes]


def recorded_jobs(session: SessionRecord) -> dict[tuple[str, str, str], str]:
    """``(event, job name, object id) -> job id`` of the session's recorded graph."""
    out: dict[tuple[str, str, str], str] = {}
    for item in session.meta.get(GRAPH_META) or []:
        if isinstance(item, list) and len(item) == 4:
            job_id, event, name, object_id = map(str, item)
            out[(event, name, object_id)] = job_id
    return out


def sessions_to_resume(store: Store, run_id: str) -> list[SessionRecord]:
    """The unfinished sessions of run ``run_id``, oldest first. Refuses a run none of
    whose sessions is left, and a session another runner still works on."""
    if not run_id or not run_id.strip():
        raise InvalidInputError("--resume: give the id of the run to resume (RUN_ID)")
    sessions = store.list_sessions()
    mine = [s for s in sessions if s.meta.get(RUN_META) == run_id]
    if not mine:
        others = sorted({str(s.meta[RUN_META]) for s in sessions if s.meta.get(RUN_META)})
        raise InvalidInputError(
            f"--resume {run_id!r}: no unfinished session of that run in {store.describe()} - "
            "the run finished (its sessions were cleaned up) or the id is wrong; runs with "
            f"unfinished sessions: {', '.join(others) or 'none'}"
        )
    for session in mine:
        life = judge_record(session)
        if life.live:
            raise ServiceError(
                f"--resume {run_id!r}: session {session.id} is still worked on by runner "
                f"{session.owner} (heartbeat {life.heartbeat_age or 0:.0f}s ago) - stop that "
                "runner first, or wait until its heartbeat is stale"
            )
    return mine


def mark_succeeded(store: Store, nodes: Sequence[JobNode]) -> list[JobNode]:
    """Mark the nodes whose record says ``succeeded`` as done (filled in from the
    record, not to run again); returns them."""
    done = []
    for node in nodes:
        record = store.get_job(node.key)
        if record.status != JobStatus.SUCCEEDED:
            continue
        run = node.run
        run.status = JobStatus.SUCCEEDED
        run.started_at, run.finished_at = record.started_at, record.finished_at
        run.progress = dict(record.progress)
        if record.started_at and record.finished_at:
            run.duration = (record.finished_at - record.started_at).total_seconds()
        done.append(node)
    logger.info("%d of %d job(s) had succeeded before the resume", len(done), len(nodes))
    return done
