"""The Dask executor: the runner's jobs as tasks on a Dask distributed cluster.

:class:`DaskExecutor` implements the executor seam (:mod:`.base`) on a
:class:`distributed.Client`. Each job becomes one Dask task running
:func:`~.dask_worker.run_on_worker` on a worker: the job in its own process there,
exactly as the local runner runs it. Independent jobs run at the same time, as many
as the workers have threads.

* **Dependencies**: a task is handed to Dask once every task it comes ``after``
  succeeded (a task whose predecessor did not succeed is ``skipped`` without being
  sent). The runner holds the graph, so a finished job is never computed again when
  the worker holding its (small) result dies.
* **Placement**: a task's ``resources`` (the job's manifest ``resources`` and its
  platform ``worker`` name, see :attr:`~..specs.JobSpec.placement`) become Dask
  worker resources: it runs only on a worker started with ``--resources``
  advertising them. When no worker of the cluster advertises them, the job fails at
  once with an error saying so; a job that waits longer than ``placement_wait``
  seconds for a worker able to take it fails too - the run never hangs on it.
* **Faults**: when a worker dies mid-job (its job process dies with it), Dask runs
  the task again on another worker, up to the scheduler's
  ``distributed.scheduler.allowed-failures``; every start is a Dask event on the
  run's topic, so the outcome carries the ``attempts`` and the ``worker``.
* **Environment**: a job gets its worker's environment plus the run's
  ``DCM-PROCESSOR-SERVICE-*`` variables; nothing else of the runner's environment
  travels.
* **Progress**: the runner hears ``job_started`` when a worker starts the job and
  ``job_running`` every poll interval while it runs (it reads the job's progress from
  the store). The job's output stays in its log on the worker; the outcome carries
  its last lines.

Stopping the run (:meth:`cancel`) cancels the tasks not finished; a job already
running on a worker runs to its end there (Dask cannot interrupt a running task).
"""

from __future__ import annotations

import collections
import logging
import queue
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..._context import ENV_PREFIX
from ...store.records import JobStatus
from .base import SKIPPED, JobListener, JobOutcome, JobTask, check_after
from .dask_cluster import ship_service, worker_resources
from .dask_worker import ShippedService, run_on_worker

__all__ = ["DaskExecutor", "unmet_resources"]

logger = logging.getLogger(__name__)

#: Seconds between two checks that every waiting task still has a worker able to take it.
_PLACEMENT_CHECK = 2.0


def unmet_resources(needs: dict[str, float], workers: dict[str, dict[str, float]]) -> str | None:
    """Why no worker of ``workers`` (address -> resources) can run a task needing
    ``needs``, or ``None`` when one can."""
    if any(all(res.get(k, 0.0) >= v for k, v in needs.items()) for res in workers.values()):
        return None
    wanted = ", ".join(f"{k}={v:g}" for k, v in needs.items())
    if not workers:
        return "the cluster has no worker"
    offered = "; ".join(
        f"{addr}: {', '.join(f'{k}={v:g}' for k, v in res.items()) or 'no resources'}"
        for addr, res in sorted(workers.items())
    )
    return (
        f"no worker of the cluster advertises {wanted} (workers: {offered}) - start one with "
        f"'dask worker SCHEDULER --resources \"{wanted.replace(', ', ' ')}\"'"
    )


class DaskExecutor:
    """Runs the submitted tasks on the Dask cluster of ``client`` (see the module doc).

    ``service_root``: the service folder, zipped and uploaded to the workers once
    (``None``: the entries must be importable on the workers as they are).
    ``poll_interval``: seconds between two :meth:`JobListener.job_running` calls.
    ``placement_wait``: seconds a task may wait for a worker able to run it.
    ``sessions_at_once``: how many sessions the runner keeps open (their jobs
    submitted) at a time (default: twice the cluster's worker threads, at least 2).
    """

    def __init__(
        self,
        client: Any,
        *,
        service_root: str | Path | None = None,
        poll_interval: float = 1.0,
        placement_wait: float = 60.0,
        sessions_at_once: int | None = None,
    ) -> None:
        self.client = client
        self.poll_interval = poll_interval
        self.placement_wait = placement_wait
        self._sessions_at_once = sessions_at_once
        self._service_root = Path(service_root) if service_root is not None else None
        self._service: ShippedService | None = None
        self._nonce = uuid.uuid4().hex[:8]
        self._topic = f"dcm-service-run-{self._nonce}"
        self._events: queue.Queue[tuple[str, str]] = queue.Queue()
        self._tasks: dict[str, JobTask] = {}
        self._waiting: dict[str, JobTask] = {}  # submitted, predecessors not ended
        self._futures: dict[str, Any] = {}  # handed to Dask, not ended
        self._sent_at: dict[str, float] = {}
        self._status: dict[str, str] = {}  # key -> status of the tasks that ended
        self._ready: collections.deque[tuple[str, JobOutcome]] = collections.deque()
        self._announced: set[str] = set()
        self._started: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self._last_check = 0.0
        self._subscribed = False

    @property
    def sessions_at_once(self) -> int:
        """Sessions the runner keeps open at a time (see the class doc)."""
        if self._sessions_at_once is None:
            info = self.client.scheduler_info(n_workers=-1).get("workers") or {}
            threads = sum(int(w.get("nthreads") or 1) for w in info.values())
            self._sessions_at_once = max(2, 2 * threads)
        return self._sessions_at_once

    @property
    def dashboard_link(self) -> str | None:
        """The address of the cluster's dashboard (if it has one)."""
        return getattr(self.client, "dashboard_link", None)

    # ------------------------------------------------------------------ seam
    def submit(self, task: JobTask) -> None:
        """Accept ``task``: it goes to Dask once the tasks it comes after succeeded."""
        check_after(task, self._tasks)
        self._tasks[task.key] = task
        self._waiting[task.key] = task
        self._advance(task.key)

    def outcomes(self, listener: JobListener) -> Iterator[tuple[str, JobOutcome]]:
        """Give back each task's outcome as it ends (a task after those it comes after)."""
        while True:
            while self._ready:
                key, outcome = self._ready.popleft()
                if outcome.status != SKIPPED and key not in self._announced:
                    self._announce(listener, key)
                yield key, outcome
            if not self._futures:
                return
            try:
                kind, key = self._events.get(timeout=self.poll_interval)
            except queue.Empty:
                self._tick(listener)
                continue
            if kind == "started":
                self._attempts[key] = self._attempts.get(key, 0) + 1
                if key in self._futures and key not in self._announced:
                    self._announce(listener, key)
            elif kind == "done" and key in self._futures:
                self._drain_starts(listener)
                self._end(key, self._collect(key, self._futures.pop(key)))

    def cancel(self) -> None:
        """Cancel every task not ended; forget the waiting ones."""
        futures = list(self._futures.values())
        self._futures.clear()
        self._waiting.clear()
        self._ready.clear()
        if futures:
            try:
                self.client.cancel(futures)
            except Exception as exc:  # the cluster may be gone already
                logger.warning("could not cancel the cluster's tasks: %s", exc)

    # ------------------------------------------------------------- internals
    def _advance(self, key: str) -> None:
        """Send ``key`` to Dask if its predecessors succeeded, skip it if one did not."""
        task = self._waiting[key]
        states = [self._status.get(k) for k in task.after]
        if any(s is not None and s != JobStatus.SUCCEEDED for s in states):
            del self._waiting[key]
            self._end(key, JobOutcome(status=SKIPPED))
        elif all(s == JobStatus.SUCCEEDED for s in states):
            del self._waiting[key]
            self._send(task)

    def _send(self, task: JobTask) -> None:
        if task.resources:
            why = unmet_resources(task.resources, worker_resources(self.client))
            if why is not None and "no worker of the cluster advertises" in why:
                self._end(task.key, JobOutcome(status=JobStatus.FAILED, error=f"not placed: {why}"))
                return
        self._subscribe()
        # only the run's DCM-PROCESSOR-SERVICE-* variables travel: the job gets the
        # worker's own environment around them, never the runner's (paths, secrets)
        task = replace(task, env={k: v for k, v in task.env.items() if k.startswith(ENV_PREFIX)})
        if self._service is None and self._service_root is not None:
            self._service = ship_service(self.client, self._service_root)
        future = self.client.submit(
            run_on_worker,
            task,
            self._service,
            self._topic,
            key=f"{task.name}-{self._nonce}",
            resources=dict(task.resources) or None,
            pure=False,
        )
        self._futures[task.key] = future
        self._sent_at[task.key] = time.monotonic()
        future.add_done_callback(lambda _f, key=task.key: self._events.put(("done", key)))

    def _subscribe(self) -> None:
        if not self._subscribed:
            self.client.subscribe_topic(self._topic, self._on_event)
            self._subscribed = True

    def _on_event(self, event: tuple[float, Any]) -> None:
        """A worker started a task (called in the client's event loop thread)."""
        message = event[1] if isinstance(event, tuple) else event
        if isinstance(message, dict) and message.get("key"):
            self._events.put(("started", str(message["key"])))

    def _drain_starts(self, listener: JobListener) -> None:
        """Count the start events already queued (they may trail the task's result)."""
        rest = []
        while True:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                break
            if item[0] == "started":
                self._attempts[item[1]] = self._attempts.get(item[1], 0) + 1
                if item[1] in self._futures and item[1] not in self._announced:
                    self._announce(listener, item[1])
            else:
                rest.append(item)
        for item in rest:
            self._events.put(item)

    def _announce(self, listener: JobListener, key: str) -> None:
        self._announced.add(key)
        self._started[key] = time.monotonic()
        listener.job_started(key)

    def _collect(self, key: str, future: Any) -> JobOutcome:
        attempts = max(1, self._attempts.get(key, 0))
        if future.status == "finished":
            outcome: JobOutcome = future.result()
            outcome.attempts = attempts
            return outcome
        if future.status == "cancelled":
            error = "the cluster cancelled the job (the scheduler lost it or the client left)"
        else:
            exc = future.exception()
            if type(exc).__name__ == "KilledWorker":
                error = (
                    f"the job's worker died {attempts} time(s) while running it - the cluster "
                    "gave up (the scheduler's distributed.scheduler.allowed-failures); see the "
                    "workers' logs (out of memory? killed?)"
                )
            else:
                error = f"the job could not run on the worker: {type(exc).__name__}: {exc}"
        return JobOutcome(status=JobStatus.FAILED, error=error, attempts=attempts)

    def _end(self, key: str, outcome: JobOutcome) -> None:
        self._status[key] = outcome.status
        self._ready.append((key, outcome))
        for other in [k for k, t in self._waiting.items() if key in t.after]:
            if other in self._waiting:
                self._advance(other)

    def _tick(self, listener: JobListener) -> None:
        now = time.monotonic()
        for key in list(self._futures):
            if key in self._started:
                listener.job_running(key, now - self._started[key])
        if now - self._last_check < _PLACEMENT_CHECK:
            return
        self._last_check = now
        waiting = [
            k
            for k in self._futures
            if k not in self._started and now - self._sent_at[k] > self.placement_wait
        ]
        if not waiting:
            return
        workers = worker_resources(self.client)
        for key in waiting:
            why = unmet_resources(self._tasks[key].resources, workers)
            if why is None:
                continue
            future = self._futures.pop(key)
            self.client.cancel([future])
            self._end(
                key,
                JobOutcome(
                    status=JobStatus.FAILED,
                    error=f"not placed within {self.placement_wait:g}s: {why}",
                ),
            )
