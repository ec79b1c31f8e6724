"""The platform's rules for a service, and the problems a manifest has, all at once.

A manifest has problems of two kinds (:class:`ManifestProblem`):

* **errors** - the service cannot run here either (bad JSON, a missing ``jobName``,
  ``workerEntry`` or ``events``, an unknown event, a bad timeout, an entry that does
  not exist, ...): the manifest reader (:mod:`.manifest`) records them as it reads;
* **platform findings** - the service runs here, but the platform would refuse the
  package or never run a job. Each rule of the platform's package validation and
  scheduler that this package knows is a ``check_*`` function here, with the message
  that says what to change:

  - ``version`` missing or not a semantic version (:func:`check_version`);
  - a ``worker`` block without an existing ``path`` (:func:`check_worker_block`);
  - ``registry``/``module`` missing, outside the manifest's folder, or not a package
    (:func:`check_package_folder`);
  - no ``registryEntry`` (:func:`check_registry_entry_present`), or an entry that is
    not a bare name exported by the package (:func:`check_entry_form`);
  - ``events`` not a list (:func:`check_events_form`);
  - a timeout the platform's job queue cannot read (:func:`check_timeout_format`);
  - a ``dependsOn`` that can never pass (:func:`~.graph.dependency_problems`, found
    by the scheduling rules themselves);
  - params holding text the worker's generated main file cannot carry
    (:func:`check_params_text`, a ``dcm-service check`` finding).

:class:`ProblemList` collects both kinds while a manifest is read, so that every
problem is reported at once rather than the first one raised.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .platform import PLATFORM_TIMEOUT_RE, SEMVER_RE, main_file_hazard

__all__ = [
    "ManifestProblem",
    "ProblemList",
    "check_entry_form",
    "check_events_form",
    "check_package_folder",
    "check_params_text",
    "check_registry_entry_present",
    "check_timeout_format",
    "check_version",
    "check_worker_block",
]


@dataclass(frozen=True)
class ManifestProblem:
    """One problem of a manifest: ``where`` (the JSON path, with the job's name),
    ``message`` (what is wrong and how to fix it) and ``platform_only`` (True: it runs
    here, but the platform would refuse the package or not run the job)."""

    where: str
    message: str
    platform_only: bool = False

    @property
    def severity(self) -> str:
        """``"error"`` or ``"platform"``."""
        return "platform" if self.platform_only else "error"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message

    def to_dict(self) -> dict[str, str]:
        """JSON-ready dict."""
        return {"where": self.where, "message": self.message, "severity": self.severity}


_JSON_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
    bool: "true or false",
}


class ProblemList:
    """Collects the problems of one manifest; typed field access that records a
    problem (instead of raising) and returns a default."""

    def __init__(self) -> None:
        self.items: list[ManifestProblem] = []

    def error(self, where: str, message: str) -> None:
        """Record an error (the service cannot run here either)."""
        self.items.append(ManifestProblem(where, message))

    def platform(self, where: str, message: str) -> None:
        """Record a platform finding (it runs here; the platform would not)."""
        self.items.append(ManifestProblem(where, message, platform_only=True))

    @property
    def errors(self) -> list[ManifestProblem]:
        """The errors recorded so far."""
        return [p for p in self.items if not p.platform_only]

    def get(
        self,
        obj: dict[str, Any],
        key: str,
        where: str,
        kind: type | tuple[type, ...],
        *,
        required: bool = False,
        default: Any = None,
    ) -> Any:
        """``obj[key]`` when it is of ``kind`` (JSON ``true``/``false`` only counts as
        ``bool``); otherwise record an error at ``where`` (also when ``required`` and
        missing) and return ``default``."""
        if key not in obj or obj[key] is None:
            if required:
                self.error(where, "missing required field")
            return default
        value = obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
            self.error(where, f"must be {names}, got {type(value).__name__} {value!r}")
            return default
        return value


# ------------------------------------------------------------ platform rules
def check_version(problems: ProblemList, version: object) -> str:
    """The platform requires a semantic version; returns the version to use here."""
    if version is None or (isinstance(version, str) and not version.strip()):
        problems.platform(
            "version", "missing - the platform requires a semantic version, e.g. '0.1.0'"
        )
        return "0.0.0"
    if not isinstance(version, str) or not SEMVER_RE.match(version.strip()):
        problems.platform(
            "version", f"{version!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. '1.0.0')"
        )
    return str(version)


def check_worker_block(problems: ProblemList, worker: object, root: Path) -> None:
    """A ``worker`` block needs a ``path`` that exists next to the manifest."""
    if worker is None:
        return
    if not isinstance(worker, dict):
        problems.platform("worker", "must be an object with 'path' and 'type'")
    elif not str(worker.get("path") or "").strip():
        problems.platform("worker.path", "missing - required when 'worker' is given")
    elif not (root / str(worker["path"])).exists():
        problems.platform("worker.path", f"{worker['path']!r} does not exist next to the manifest")


def check_package_folder(
    problems: ProblemList, key: str, value: str | None, folder: Path | None, root: Path
) -> None:
    """``service.registry``/``service.module`` (``key``) must name a package folder
    inside the manifest's folder. ``value`` ``None``: it is missing (entries are then
    looked up in the manifest's folder here); ``folder`` is where ``value`` leads."""
    where = f"service.{key}"
    if value is None:
        problems.platform(
            where,
            f"missing - the platform requires the folder of the {key} package; "
            "entries are looked up in the manifest's folder here",
        )
        return
    if folder is None:
        return
    try:
        folder.relative_to(root.resolve())
    except ValueError:
        problems.platform(
            where, f"{value!r} is outside the manifest's folder: the platform refuses it"
        )
    if not (folder / "__init__.py").is_file():
        example = "callback" if key == "registry" else "worker"
        problems.platform(
            where,
            f"folder {value!r} has no __init__.py - the platform imports it as a package "
            f"(write one that exports the entries, e.g. 'from .main import {example}')",
        )


def check_registry_entry_present(problems: ProblemList, where: str, raw_value: object) -> None:
    """The platform drops a job without a ``registryEntry`` (``raw_value`` is what the
    manifest holds there; a value of the wrong type is an error already)."""
    if not isinstance(raw_value, (int, float, list, dict)):
        problems.platform(
            where,
            "missing - the platform drops a job without a registry callback; here the "
            "job is scheduled for every object of its events",
        )


def check_entry_form(problems: ProblemList, where: str, key: str, text: str, attr: str) -> None:
    """An entry (``key``: ``workerEntry``/``registryEntry``, written ``text``) that is not
    a bare name: the platform only looks names up in the package's ``__init__.py``."""
    folder = "module" if key == "workerEntry" else "registry"
    problems.platform(
        where,
        f"{text!r} is not a bare name - the platform looks the entry up as a name "
        f"exported by the {folder} package's __init__.py; export {attr!r} there "
        f'and write "{key}": "{attr}"',
    )


def check_events_form(problems: ProblemList, where: str, events: object) -> None:
    """The platform reads ``events`` as a list: one event written as a string is not."""
    if isinstance(events, str):
        problems.platform(where, f"must be a list - write [{json.dumps(events)}]")


def check_timeout_format(problems: ProblemList, where: str, value: object) -> None:
    """The platform's job queue reads a timeout as ``[Nw][Nd][Nh][Nm][Ns]``."""
    if isinstance(value, str) and not PLATFORM_TIMEOUT_RE.match(value.strip()):
        problems.platform(
            where,
            f"{value!r} is not in the platform's format [Nw][Nd][Nh][Nm][Ns] with whole "
            "numbers, e.g. '90s', '10m', '1h30m'",
        )


def check_params_text(problems: ProblemList, where: str, params: dict[str, Any]) -> None:
    """The worker's generated main file carries params as JSON inside a Python string
    literal: a double quote, a control character or a backslash cannot pass."""
    hazard = main_file_hazard(params, "params")
    if hazard:
        problems.platform(
            where,
            f"{hazard} - the platform's worker passes params inside its generated "
            "main file as JSON in a Python string literal, which cannot carry it "
            "(the job fails, or a backslash changes the value)",
        )
