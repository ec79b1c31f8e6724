"""Executors: where and how the runner's jobs run (see :mod:`.base` for the seam).

:class:`LocalExecutor` (:mod:`.local`) runs each job in its own process on this
machine, one after the other; :class:`DaskExecutor` (:mod:`.dask_executor`) on a Dask
distributed cluster (``distributed`` is imported only when it is used). Names are
imported lazily.
"""

from __future__ import annotations

from ..._lazy import lazy_attributes

__all__ = ["DaskExecutor", "Executor", "JobListener", "JobOutcome", "JobTask", "LocalExecutor"]

_WHERE = {
    "DaskExecutor": "dask_executor",
    "Executor": "base",
    "JobListener": "base",
    "JobOutcome": "base",
    "JobTask": "base",
    "LocalExecutor": "local",
}

__getattr__, __dir__ = lazy_attributes(__name__, _WHERE, globals())
