"""Who runs a session or job record, whether it is still alive, and the heartbeat.

The runner stamps each session record it opens, and each job record it starts, with
its **owner** (``PID@HOST`` of the runner process) and keeps their ``heartbeat_at``
fresh from a background thread (:class:`Heartbeat`, every :data:`HEARTBEAT_INTERVAL`
seconds for the session and job being worked on, every 30 s for sessions waiting their
turn, through its own store connection, so a long hook or export in the main thread
does not stop it). A record left ``open``/``running`` by a
runner that died is then recognisable (:func:`judge`):

* owner on **this host**: stale as soon as the owner process is gone; also when the pid
  lives but the heartbeat is older than :data:`STALE_AFTER` (the pid was reused);
* owner on **another host**: stale when the heartbeat is older than :data:`STALE_AFTER`;
* no owner (written by the platform or by an older version): never judged stale.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from ..store.base import Store
from ..store.records import JobRecord, JobStatus, SessionRecord, SessionStatus, utcnow
from .processes import end_processes, pid_alive

__all__ = [
    "ACTIVE_JOB_STATES",
    "ACTIVE_SESSION_STATES",
    "HEARTBEAT_INTERVAL",
    "QUEUED_EVERY",
    "STALE_AFTER",
    "Heartbeat",
    "Liveness",
    "abandon_session",
    "judge",
    "judge_record",
    "this_owner",
]

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of the runner.
HEARTBEAT_INTERVAL: Final = 5.0
#: Sessions waiting for their turn beat every this many heartbeats (30 s).
QUEUED_EVERY: Final = 6
#: A heartbeat older than this (seconds) marks the record stale.
STALE_AFTER: Final = 120.0
#: Statuses in which a record needs a live owner.
ACTIVE_SESSION_STATES: Final = (SessionStatus.OPEN, SessionStatus.RUNNING)
ACTIVE_JOB_STATES: Final = (JobStatus.PENDING, JobStatus.RUNNING)


def this_owner() -> str:
    """``PID@HOST`` of this process."""
    return f"{os.getpid()}@{socket.gethostname()}"


def _split(owner: str) -> tuple[int | None, str]:
    pid, _, host = owner.partition("@")
    return (int(pid) if pid.isdigit() else None), host


@dataclass(frozen=True)
class Liveness:
    """What :func:`judge` found out about a record's owner."""

    stale: bool
    reason: str | None = None
    heartbeat_age: float | None = None
    #: an active record whose owner is alive (a live runner works on it)
    live: bool = False


def judge(
    status: str,
    owner: str | None,
    heartbeat_at: datetime | None,
    *,
    active: tuple[str, ...] = ACTIVE_SESSION_STATES,
    now: datetime | None = None,
    stale_after: float = STALE_AFTER,
) -> Liveness:
    """Whether a record in ``status``, owned by ``owner`` with its last heartbeat at
    ``heartbeat_at``, was left behind by a runner that is gone (see the module doc)."""
    age = (now or utcnow()) - heartbeat_at if heartbeat_at is not None else None
    seconds = age.total_seconds() if age is not None else None
    if status not in active or not owner:
        return Liveness(False, None, seconds)
    pid, host = _split(owner)
    if host == socket.gethostname() and pid is not None and not pid_alive(pid):
        return Liveness(True, f"its runner {owner} is gone", seconds)
    if seconds is None or seconds > stale_after:
        last = "never" if seconds is None else f"{seconds:.0f}s ago"
        return Liveness(True, f"no heartbeat from its runner {owner} (last {last})", seconds)
    return Liveness(False, None, seconds, live=True)


def judge_record(record: SessionRecord | JobRecord) -> Liveness:
    """:func:`judge` for a session or job record."""
    active = ACTIVE_SESSION_STATES if isinstance(record, SessionRecord) else ACTIVE_JOB_STATES
    return judge(record.status, record.owner, record.heartbeat_at, active=active)


def abandon_session(
    store: Store, session: SessionRecord, life: Liveness, *, grace: float = 3.0
) -> dict[str, object]:
    """Settle a stale session: end the processes its running jobs left (those carrying
    their marker; only possible on the runner's own host), mark those jobs ``failed``
    and its pending jobs ``skipped`` (error ``abandoned: <why>``), and the session
    ``abandoned``. Returns ``processes_ended``, ``jobs_abandoned`` and, when the runner
    ran on another host, a ``note`` saying so."""
    why = f"abandoned: {life.reason or 'its runner is gone'}"
    _, host = _split(session.owner or "")
    here = host == socket.gethostname()
    ended = jobs = 0
    for job in store.list_jobs(session.id):
        if job.status not in ACTIVE_JOB_STATES:
            continue
        if job.status == JobStatus.RUNNING and here:
            ended += end_processes(None, job.id, grace=grace)
        status = JobStatus.FAILED if job.status == JobStatus.RUNNING else JobStatus.SKIPPED
        store.update_job(job.id, status=status, error=why, finished_at=utcnow())
        jobs += 1
    store.update_session(session.id, status=SessionStatus.ABANDONED)
    out: dict[str, object] = {"processes_ended": ended, "jobs_abandoned": jobs}
    if not here:
        out["note"] = f"its runner ran on {host!r}: end what it left running there"
    logger.info("session %s abandoned (%s): %d process(es) ended", session.id, why, ended)
    return out


class Heartbeat:
    """A thread that keeps the ``heartbeat_at`` of a run's records fresh, through its
    own store from ``open_store``: the session being worked on and its running jobs
    every ``interval`` seconds, the run's other sessions (waiting for their turn) every
    :data:`QUEUED_EVERY` intervals. Usable as a context manager, once per run."""

    def __init__(
        self, open_store: Callable[[], Store], interval: float = HEARTBEAT_INTERVAL
    ) -> None:
        self._open_store = open_store
        self._interval = interval
        self._lock = threading.Lock()
        self._sessions: set[str] = set()
        self._session: str | None = None
        self._jobs: dict[str, str] = {}  # running job -> its session
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, session_id: str) -> None:
        """Beat for ``session_id`` from now on (slowly until it is :meth:`watch`-ed)."""
        with self._lock:
            self._sessions.add(session_id)

    def watch(self, session_id: str, job_id: str | None = None) -> None:
        """Beat for ``session_id`` (being worked on) every interval, and for ``job_id``
        (running) until :meth:`job_ended`."""
        with self._lock:
            self._session = session_id
            self._sessions.add(session_id)
            if job_id is not None:
                self._jobs[job_id] = session_id

    def job_ended(self, job_id: str) -> None:
        """Stop beating for ``job_id`` (its record is final)."""
        with self._lock:
            self._jobs.pop(job_id, None)

    def release(self, session_id: str) -> None:
        """Stop beating for ``session_id`` (it is finished, or about to be deleted)."""
        with self._lock:
            self._sessions.discard(session_id)
            if self._session == session_id:
                self._session = None
            for job_id in [j for j, s in self._jobs.items() if s == session_id]:
                del self._jobs[job_id]

    def __enter__(self) -> Heartbeat:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runner-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with self._lock:
            self._sessions.clear()
            self._session = None
            self._jobs.clear()

    def _beat(self, store: Store, tick: int) -> None:
        with self._lock:
            session, jobs, others = self._session, sorted(self._jobs), sorted(self._sessions)
        now = utcnow()
        targets = others if tick % QUEUED_EVERY == 0 else [session] if session else []
        for session_id in targets:
            store.update_session(session_id, heartbeat_at=now)
        for job_id in jobs:
            store.update_job(job_id, heartbeat_at=now)

    def _loop(self) -> None:
        store: Store | None = None
        tick = 0
        try:
            while not self._stop.wait(self._interval):
                tick += 1
                try:
                    store = store or self._open_store()
                    self._beat(store, tick)
                except Exception as exc:  # a missed beat is not fatal; the next one retries
                    logger.debug("runner heartbeat failed: %s", exc)
        finally:
            if store is not None:
                store.close()
