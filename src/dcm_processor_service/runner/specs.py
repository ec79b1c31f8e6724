"""A service as the runner sees it: :class:`ServiceManifest` and its :class:`JobSpec` s.

These are what the manifest reader (:mod:`.manifest`) produces from
``dcm-processor.json``, already validated; the scheduling rules (:mod:`.graph`), the
runner and ``dcm-service check`` work on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._errors import ServiceError
from .entries import EntryPoint
from .platform import DEFAULT_SORT_POSITION
from .rules import ManifestProblem

__all__ = ["DEFAULT_TIMEOUT", "JobSpec", "ServiceManifest"]

#: A job's timeout when the manifest gives none.
DEFAULT_TIMEOUT = "1h"


@dataclass(frozen=True)
class JobSpec:
    """One job of a service manifest."""

    name: str
    worker_entry: str
    events: tuple[str, ...]
    registry_entry: str | None = None
    depends_on: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    timeout: float = 3600.0
    timeout_text: str = DEFAULT_TIMEOUT
    sort_position: int | float = DEFAULT_SORT_POSITION
    disabled: bool = False
    index: int = 0
    worker: EntryPoint | None = None
    registry: EntryPoint | None = None
    worker_name: str | None = None
    description: str = ""
    #: Dask worker resources the job needs on a cluster (``resources`` in the manifest).
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def placement(self) -> dict[str, float]:
        """The worker resources the job needs on a cluster: its ``resources``, plus one
        unit of the resource named by the platform's ``worker`` field (a Dask worker
        started with ``--resources NAME=N`` runs up to N such jobs at once)."""
        out = dict(self.resources)
        if self.worker_name:
            out.setdefault(self.worker_name, 1.0)
        return out

    def with_params(self, params: dict[str, Any]) -> JobSpec:
        """A copy with ``params`` merged over the manifest's params."""
        return replace(self, params={**self.params, **params})


@dataclass(frozen=True)
class ServiceManifest:
    """A loaded, validated service manifest. ``findings`` are its platform-only
    problems (see :class:`~.rules.ManifestProblem`)."""

    name: str
    version: str
    path: Path | None
    root: Path
    registry_dir: Path
    module_dir: Path
    jobs: tuple[JobSpec, ...]
    description: str = ""
    findings: tuple[ManifestProblem, ...] = ()

    def job(self, name: str) -> JobSpec:
        """The job called ``name``."""
        for job in self.jobs:
            if job.name == name:
                return job
        raise ServiceError(
            f"service {self.name!r} has no job {name!r}; jobs: {', '.join(j.name for j in self.jobs)}"
        )

    def jobs_for(self, event: str) -> list[JobSpec]:
        """The enabled jobs of ``event`` in manifest order."""
        return [j for j in self.jobs if event in j.events and not j.disabled]

    def with_params(self, overrides: dict[str | None, dict[str, Any]]) -> ServiceManifest:
        """A copy with params overridden: ``overrides[None]`` for every job,
        ``overrides[job_name]`` for one job (applied after the common ones)."""
        unknown = [k for k in overrides if k is not None and k not in {j.name for j in self.jobs}]
        if unknown:
            raise ServiceError(
                f"--param names unknown job(s) {', '.join(map(repr, unknown))}; jobs of "
                f"{self.name!r}: {', '.join(j.name for j in self.jobs)}"
            )
        jobs = tuple(
            j.with_params({**overrides.get(None, {}), **overrides.get(j.name, {})})
            for j in self.jobs
        )
        return replace(self, jobs=jobs)
