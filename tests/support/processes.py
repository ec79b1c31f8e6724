"""Process checks for tests and benchmarks that watch what a job left running."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

__all__ = ["alive", "in_forked_child"]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (Linux ``/proc``; a zombie - dead, not yet reaped - is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def in_forked_child(child: Callable[[], int]) -> int:
    """Run ``child()`` in a forked copy of this process and return its exit code:
    what ``child`` returns, 1 when it raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = child()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
