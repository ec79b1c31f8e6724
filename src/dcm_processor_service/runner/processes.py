"""Finding and ending every process a job started.

A job process is the leader of a new process group (and session), and its environment
carries :data:`MARKER_VARIABLE` set to the job's id. Its descendants inherit both, so
they are found two ways:

* the **process group**: every descendant that did not move to another group;
* the **marker**: on Linux, every process of ours whose environment holds the job's
  marker - this finds descendants that left the group (``setsid``, double-forked
  daemons) too. It is the cgroup-free tracking Jenkins' process-tree killer uses: a
  process that both leaves the group and replaces its whole environment (``setsid env
  -i ...``) escapes it, and so do processes of other users.

:func:`end_processes` sends SIGTERM to all of them, waits up to a grace period, then
sends SIGKILL to whatever is left (repeating for a moment, to catch forks racing the
kill). Without ``/proc`` (not Linux) only the process group is ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["MARKER_VARIABLE", "end_processes", "group_members", "marked_processes", "pid_alive"]

#: Environment variable that marks every process of a job (value: the job id; outside
#: the DCM-PROCESSOR-SERVICE-* namespace of the platform's context variables).
MARKER_VARIABLE: Final = "DCM_SERVICE_JOB_MARKER"

_PROC = Path("/proc")
_POLL: Final = 0.05
#: After SIGKILL, how long to keep killing processes that still appear (racing forks).
_KILL_ROUNDS: Final = 40


def _has_proc() -> bool:
    return (_PROC / "self" / "stat").exists()


def _stat(pid: int) -> tuple[str, int] | None:
    """``(state, process group)`` of ``pid`` from ``/proc/PID/stat``, or ``None``."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    return fields[0], int(fields[2])


def _pids() -> list[int]:
    try:
        return [int(p.name) for p in _PROC.iterdir() if p.name.isdigit()]
    except OSError:
        return []


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (exited, not yet reaped)."""
    if _has_proc():
        state = _stat(pid)
        return state is not None and state[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    if not _has_proc():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    out = []
    for pid in _pids():
        state = _stat(pid)
        if state is not None and state[1] == pgid and state[0] != "Z":
            out.append(pid)
    return out


def marked_processes(marker: str) -> list[int]:
    """Processes whose environment sets :data:`MARKER_VARIABLE` to ``marker`` (Linux;
    only processes whose environment this process may read)."""
    if not marker or not _has_proc():
        return []
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    own = os.getpid()
    out = []
    for pid in _pids():
        if pid == own:
            continue
        try:
            environ = (_PROC / str(pid) / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            out.append(pid)
    return out


def end_processes(
    pgid: int | None,
    marker: str | None,
    *,
    grace: float,
    reap: Callable[[], object] | None = None,
) -> int:
    """End process group ``pgid`` and every process marked ``marker``: SIGTERM, up to
    ``grace`` seconds to exit, then SIGKILL. ``reap`` is called while waiting (the
    caller reaps its own child there). Returns how many processes were signalled."""
    signalled: set[int] = set()

    def targets() -> set[int]:
        found = set(group_members(pgid)) if pgid else set()
        if marker:
            found.update(marked_processes(marker))
        found.discard(os.getpid())
        return found

    def send(sig: int) -> set[int]:
        if pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        found = targets()
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        signalled.update(found)
        return found

    if not send(signal.SIGTERM):
        return 0
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not targets():
            return len(signalled)
        time.sleep(_POLL)
    for _ in range(_KILL_ROUNDS):
        kill = getattr(signal, "SIGKILL", signal.SIGTERM)
        send(kill)
        if reap is not None:
            reap()
        if not targets():
            break
        time.sleep(_POLL)
    return len(signalled)
