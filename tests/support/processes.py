"""Process checks for tests and benchmarks that watch what a job left running."""

from __future__ import annotations

__all__ = ["alive"]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (Linux ``/proc``; a zombie - dead, not yet reaped - is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
