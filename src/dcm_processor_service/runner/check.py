"""``dcm-service check SERVICE``: would the platform accept this service and run it?

Checks, and reports every problem at once:

* the manifest, with the platform's package rules and the runner's (see
  :mod:`.rules`: errors and platform findings);
* each enabled job's ``registryEntry`` imports the way the platform's scheduler imports
  it (the registry folder as package ``registry_<jobName>``) and accepts the scheduler's
  keywords; its ``workerEntry`` imports the way the platform's worker imports it
  (``from service_module import <name>``) and accepts the worker's keywords;
* its ``params`` hold no text the platform's generated main file cannot carry.

Importing runs the service's module-level code, in this process; everything imported
is forgotten again afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .entries import EntryLoader, EntryPoint
from .manifest import inspect_manifest, read_manifest_file
from .platform import REGISTRY_KEYWORDS, WORKER_KEYWORDS, signature_problem
from .rules import ManifestProblem, ProblemList, check_params_text

__all__ = ["CheckReport", "check_service"]


@dataclass
class CheckReport:
    """What :func:`check_service` found: ``problems`` (none: the platform accepts the
    service and can run every job) and ``passed`` (one line per check that passed)."""

    manifest_path: Path
    name: str | None = None
    version: str | None = None
    jobs: int = 0
    problems: list[ManifestProblem] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem of either kind."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``dcm-service check --json`` prints)."""
        return {
            "manifest": str(self.manifest_path),
            "name": self.name,
            "version": self.version,
            "jobs": self.jobs,
            "ok": self.ok,
            "problems": [p.to_dict() for p in self.problems],
            "passed": list(self.passed),
        }


def _check_entry(
    loader: EntryLoader,
    entry: EntryPoint,
    where: str,
    keywords: tuple[str, ...],
    caller: str,
    report: CheckReport,
) -> None:
    try:
        func = loader.load(entry, f"'{where}'")
    except Exception as exc:
        report.problems.append(
            ManifestProblem(where, f"cannot import {entry.text!r}: {type(exc).__name__}: {exc}")
        )
        return
    problem = signature_problem(func, keywords)
    if problem is not None:
        report.problems.append(
            ManifestProblem(
                where,
                f"{entry.text!r} cannot be called the way the {caller} calls it ({problem}) - "
                f"it passes the keywords {', '.join(keywords)}: accept them (add **kwargs)",
            )
        )
        return
    target = f"{entry.package_name}.{entry.attr}" if entry.is_bare else entry.text
    report.passed.append(
        f"{where}: {target} imports and accepts the {caller}'s {len(keywords)} keywords"
    )


def check_service(path: str | os.PathLike[str]) -> CheckReport:
    """Check the service at ``path`` (a folder with ``dcm-processor.json``, or the
    manifest file). Raises :class:`~dcm_processor_service.ServiceError` only when there
    is no manifest to read or it is not JSON."""
    file, data = read_manifest_file(path)
    report = CheckReport(manifest_path=file)
    manifest, problems = inspect_manifest(data, root=file.resolve().parent, source=str(file))
    report.problems.extend(problems)
    if isinstance(data, dict):
        report.name = data.get("name") if isinstance(data.get("name"), str) else None
        report.version = str(data["version"]) if data.get("version") is not None else None
    if manifest is None:
        return report
    report.jobs = len(manifest.jobs)
    report.passed.append(
        f"manifest: {len(manifest.jobs)} job(s), "
        + ("no platform finding" if not manifest.findings else "see the problems")
    )
    with EntryLoader() as loader:
        for job in manifest.jobs:
            if job.disabled:
                report.passed.append(f"{job.name}: disabled (the platform drops it)")
                continue
            at = f"service.jobs[{job.index}] ({job.name})"
            found = ProblemList()
            check_params_text(found, f"{at}.params", job.params)
            report.problems.extend(found.items)
            if job.registry is not None:
                _check_entry(
                    loader,
                    job.registry,
                    f"{at}.registryEntry",
                    REGISTRY_KEYWORDS,
                    "scheduler",
                    report,
                )
            if job.worker is not None:
                _check_entry(
                    loader, job.worker, f"{at}.workerEntry", WORKER_KEYWORDS, "worker", report
                )
    return report
