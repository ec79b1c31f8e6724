"""The service manifest (``dcm-processor.json``) read into typed specs.

A service is a folder holding a ``dcm-processor.json`` manifest and two Python
packages, written the way the platform's template writes them (SPEC §2.2)::

    {
      "name": "threshold-service",
      "version": "1.0.0",
      "summary": "", "tags": ["threshold-service"],
      "service": {
        "registry": "registry",          # package: __init__.py exports the callbacks
        "module": "module",              # package: __init__.py exports the workers
        "jobs": [
          {"jobName": "threshold",
           "registryEntry": "callback",  # a name exported by registry/__init__.py
           "workerEntry": "worker",      # a name exported by module/__init__.py
           "events": ["stable-series"],
           "dependsOn": [],
           "params": {"threshold": 150},
           "timeout": "10m",
           "sortPosition": 1,
           "disabled": false}
        ]
      }
    }

Reading reports **every** problem at once (see :mod:`.rules`): **errors** (the service
cannot run here either: bad JSON, a missing ``jobName``, ``workerEntry`` or ``events``,
an unknown event, a bad timeout, an entry that does not exist, ...) make
:func:`load_manifest` raise :class:`ServiceError` listing them all; **platform
findings** (it runs here, but the platform would refuse the package or never run a
job) are logged as one warning, and ``dcm-service check`` fails on them.

Entries (``workerEntry``, ``registryEntry``) are parsed and checked without running
service code (:mod:`.entries`); the result is a :class:`~.specs.ServiceManifest` of
:class:`~.specs.JobSpec` s.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._context import JOB_EVENTS
from .._errors import ServiceError
from .._validation import validate_name
from .entries import EntryPoint, check_entry, parse_entry
from .graph import dependency_problems
from .platform import DEFAULT_SORT_POSITION, WORKER_PACKAGE, registry_package_name
from .rules import (
    ManifestProblem,
    ProblemList,
    check_entry_form,
    check_events_form,
    check_package_folder,
    check_registry_entry_present,
    check_timeout_format,
    check_version,
    check_worker_block,
)
from .specs import DEFAULT_TIMEOUT, JobSpec, ServiceManifest

__all__ = [
    "MANIFEST_NAME",
    "inspect_manifest",
    "load_manifest",
    "manifest_for_function",
    "manifest_from_dict",
    "parse_timeout",
    "read_manifest_file",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "dcm-processor.json"

_KNOWN_JOB_FIELDS = {
    "jobName",
    "workerEntry",
    "registryEntry",
    "events",
    "dependsOn",
    "params",
    "timeout",
    "sortPosition",
    "disabled",
    "description",
    "worker",
    "resources",
    "channel",
    "priority",
}
_TIMEOUT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|hr|s|m|h|d|w)?", re.IGNORECASE)
_UNITS = {
    None: 1.0,
    "ms": 0.001,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}


def parse_timeout(value: str | int | float | None, what: str = "timeout") -> float:
    """Seconds for a timeout written ``"30s"``, ``"10m"``, ``"1h"``, ``"1h30m"``,
    ``"2d"``, ``"1w"`` or a plain number of seconds. ``None`` gives the default (1 hour)."""
    if value is None:
        value = DEFAULT_TIMEOUT
    if isinstance(value, bool):
        raise ServiceError(
            f"invalid {what} {value!r} - write it like '30s', '10m', '1h' or a number of seconds"
        )
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().replace(" ", "")
        pos, seconds = 0, 0.0
        while pos < len(text):
            match = _TIMEOUT_RE.match(text, pos)
            if match is None or match.end() == pos:
                raise ServiceError(
                    f"invalid {what} {value!r} - write it like '30s', '10m', '1h', '1h30m' "
                    "or a number of seconds"
                )
            unit = match.group(2).lower() if match.group(2) else None
            if unit is None and (pos != 0 or match.end() != len(text)):
                raise ServiceError(f"invalid {what} {value!r} - a unit (s, m, h, d) is missing")
            seconds += float(match.group(1)) * _UNITS[unit]
            pos = match.end()
        if not text:
            raise ServiceError(f"invalid {what} {value!r} - must not be empty")
    if not seconds > 0:
        raise ServiceError(f"invalid {what} {value!r} - must be greater than zero")
    return seconds


def _package_folder(root: Path, service: dict[str, Any], key: str, problems: ProblemList) -> Path:
    """The folder of ``service[key]``. A missing value falls back to the manifest's
    folder (a platform finding: the platform requires both folders)."""
    where = f"service.{key}"
    value = service.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        check_package_folder(problems, key, None, None, root)
        return root
    if not isinstance(value, str):
        problems.error(where, f"must be a string, got {type(value).__name__} {value!r}")
        return root
    folder = (root / value).resolve()
    if not folder.is_dir():
        problems.error(where, f"names folder {value!r}, which does not exist in {root}")
        return root
    check_package_folder(problems, key, value, folder, root)
    return folder


def _entry(
    raw: dict[str, Any],
    key: str,
    at: str,
    base: Path,
    root: Path,
    problems: ProblemList,
    *,
    check: bool,
    package_name: str,
    from_import: bool,
) -> tuple[str | None, EntryPoint | None]:
    where = f"{at}.{key}"
    text = problems.get(raw, key, where, str, required=key == "workerEntry")
    if text is not None and not text.strip():
        if key == "workerEntry":
            problems.error(where, "must not be empty")
        text = None
    if text is None:
        if key == "registryEntry":
            check_registry_entry_present(problems, where, raw.get(key))
        return None, None
    try:
        entry = parse_entry(
            text,
            base,
            extra_paths=[root],
            what=key,
            package_name=package_name,
            from_import=from_import,
        )
    except ServiceError as exc:
        problems.error(where, str(exc))
        return text, None
    if not entry.is_bare:
        check_entry_form(problems, where, key, text, entry.attr)
    if check:
        try:
            check_entry(entry, key)
        except ServiceError as exc:
            problems.error(where, str(exc))
            return text, None
    return text, entry


def _timeout(raw: dict[str, Any], at: str, problems: ProblemList) -> tuple[float, str]:
    where = f"{at}.timeout"
    value = problems.get(raw, "timeout", where, (str, int, float), default=DEFAULT_TIMEOUT)
    try:
        seconds = parse_timeout(value, "timeout")
    except ServiceError as exc:
        problems.error(where, str(exc))
        return parse_timeout(DEFAULT_TIMEOUT), DEFAULT_TIMEOUT
    check_timeout_format(problems, where, value)
    return seconds, str(value)


def _job(
    raw: object,
    i: int,
    root: Path,
    registry_dir: Path,
    module_dir: Path,
    seen: set[str],
    problems: ProblemList,
    source: str,
) -> JobSpec | None:
    at = f"service.jobs[{i}]"
    if not isinstance(raw, dict):
        problems.error(at, f"must be an object, got {type(raw).__name__}")
        return None
    name = problems.get(raw, "jobName", f"{at}.jobName", str, required=True)
    if name is not None:
        try:
            validate_name(name, "job name")
        except ValueError as exc:
            problems.error(f"{at}.jobName", str(exc))
            name = None
    if name is not None:
        if name in seen:
            problems.error(
                f"{at}.jobName", f"{name!r} is used by another job - job names must be unique"
            )
        seen.add(name)
        at = f"{at} ({name})"
    unknown = set(raw) - _KNOWN_JOB_FIELDS
    if unknown:
        logger.warning(
            "%s: %s has unknown field(s) %s (ignored)", source, at, ", ".join(sorted(unknown))
        )
    disabled = problems.get(raw, "disabled", f"{at}.disabled", bool, default=False)
    job_name = name or f"job{i}"
    worker_text, worker = _entry(
        raw,
        "workerEntry",
        at,
        module_dir,
        root,
        problems,
        check=not disabled,
        package_name=WORKER_PACKAGE,
        from_import=True,
    )
    registry_text, registry = _entry(
        raw,
        "registryEntry",
        at,
        registry_dir,
        root,
        problems,
        check=not disabled,
        package_name=registry_package_name(job_name),
        from_import=False,
    )
    events = _events(raw, at, problems)
    deps_raw = problems.get(raw, "dependsOn", f"{at}.dependsOn", (list, str), default=[])
    deps = [deps_raw] if isinstance(deps_raw, str) else list(deps_raw)
    if not all(isinstance(d, str) and d for d in deps):
        problems.error(f"{at}.dependsOn", f"must name jobs (strings), got {deps_raw!r}")
        deps = [d for d in deps if isinstance(d, str) and d]
    params = problems.get(raw, "params", f"{at}.params", dict, default={})
    timeout, timeout_text = _timeout(raw, at, problems)
    sort_position = problems.get(
        raw, "sortPosition", f"{at}.sortPosition", (int, float), default=DEFAULT_SORT_POSITION
    )
    worker_name = problems.get(raw, "worker", f"{at}.worker", str)
    description = problems.get(raw, "description", f"{at}.description", str, default="")
    resources = _resources(raw, at, problems)
    if name is None or worker_text is None or not events:
        return None
    return JobSpec(
        name=name,
        worker_entry=worker_text,
        events=events,
        registry_entry=registry_text,
        depends_on=tuple(dict.fromkeys(deps)),
        params=dict(params),
        timeout=timeout,
        timeout_text=timeout_text,
        sort_position=sort_position,
        disabled=disabled,
        index=i,
        worker=worker,
        registry=registry,
        worker_name=worker_name,
        description=description,
        resources=resources,
    )


def _resources(raw: dict[str, Any], at: str, problems: ProblemList) -> dict[str, float]:
    """A job's ``resources`` (``{"GPU": 1}``): Dask worker resources it needs on a
    cluster - names, each with a positive amount."""
    where = f"{at}.resources"
    value = problems.get(raw, "resources", where, dict, default={})
    out: dict[str, float] = {}
    for key, amount in value.items():
        if (
            not key.strip()
            or isinstance(amount, bool)
            or not isinstance(amount, (int, float))
            or not amount > 0
        ):
            problems.error(
                where,
                f"{key!r}: {amount!r} - write a resource name and a positive amount, "
                'e.g. {"GPU": 1} (a worker advertises it with dask worker --resources GPU=1)',
            )
            continue
        out[key.strip()] = float(amount)
    return out


def _events(raw: dict[str, Any], at: str, problems: ProblemList) -> tuple[str, ...]:
    where = f"{at}.events"
    value = problems.get(raw, "events", where, (list, str), required=True)
    if value is None:
        return ()
    check_events_form(problems, where, value)
    if isinstance(value, str):
        value = [value]
    if not value:
        problems.error(where, f"is empty - give one or more of {', '.join(JOB_EVENTS)}")
        return ()
    bad = [ev for ev in value if ev not in JOB_EVENTS]
    for ev in bad:
        problems.error(where, f"unknown event {ev!r} - known: {', '.join(JOB_EVENTS)}")
    return tuple(dict.fromkeys(ev for ev in value if ev in JOB_EVENTS))


def _top_level(data: dict[str, Any], root: Path, problems: ProblemList) -> tuple[str, str, str]:
    name = problems.get(data, "name", "name", str, required=True)
    if name is not None:
        try:
            validate_name(name, "service name")
        except ValueError as exc:
            problems.error("name", str(exc))
            name = None
    version = check_version(problems, data.get("version"))
    description = data.get("summary") or data.get("description") or ""
    check_worker_block(problems, data.get("worker"), root)
    return name or "", version, str(description)


def inspect_manifest(
    data: object, *, root: Path, source: str = "<manifest>"
) -> tuple[ServiceManifest | None, list[ManifestProblem]]:
    """Validate a manifest given as parsed JSON: ``(manifest, problems)``. The manifest
    is ``None`` when an error leaves nothing to run."""
    problems = ProblemList()
    if not isinstance(data, dict):
        problems.error("", f"the manifest must be a JSON object, got {type(data).__name__}")
        return None, problems.items
    name, version, description = _top_level(data, root, problems)
    service = data.get("service")
    if service is None:
        problems.error(
            "service",
            "missing required field"
            + (
                " - this is a worker package; a service needs 'service'" if "worker" in data else ""
            ),
        )
        return None, problems.items
    if not isinstance(service, dict):
        problems.error("service", f"must be an object, got {type(service).__name__}")
        return None, problems.items
    registry_dir = _package_folder(root, service, "registry", problems)
    module_dir = _package_folder(root, service, "module", problems)
    raw_jobs = problems.get(service, "jobs", "service.jobs", list, required=True)
    if raw_jobs is not None and not raw_jobs:
        problems.error("service.jobs", "is empty - a service needs at least one job")
    jobs: list[JobSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_jobs or []):
        job = _job(raw, i, root, registry_dir, module_dir, seen, problems, source)
        if job is not None:
            jobs.append(job)
    for job_name, message in dependency_problems(jobs):
        job = next(j for j in jobs if j.name == job_name)
        problems.platform(f"service.jobs[{job.index}] ({job_name}).dependsOn", message)
    if problems.errors or not jobs:
        return None, problems.items
    manifest = ServiceManifest(
        name=name,
        version=version,
        path=Path(source) if source.endswith(".json") else None,
        root=root,
        registry_dir=registry_dir,
        module_dir=module_dir,
        jobs=tuple(jobs),
        description=description,
        findings=tuple(problems.items),
    )
    return manifest, problems.items


def _raise_errors(source: str, problems: Sequence[ManifestProblem]) -> None:
    errors = [p for p in problems if not p.platform_only]
    if not errors:
        return
    if len(errors) == 1:
        raise ServiceError(f"{source}: {errors[0]}")
    lines = "\n".join(f"  - {p}" for p in errors)
    raise ServiceError(f"{source}: {len(errors)} problems:\n{lines}")


def read_manifest_file(path: str | os.PathLike[str]) -> tuple[Path, object]:
    """``(manifest file, parsed JSON)`` for a service folder or manifest file; raises
    :class:`ServiceError` naming the file when it is missing or not JSON."""
    p = Path(path).expanduser()
    if p.is_dir():
        file = p / MANIFEST_NAME
        if not file.is_file():
            raise ServiceError(f"{p} is not a service: it has no {MANIFEST_NAME}")
    elif p.is_file():
        file = p
    else:
        raise ServiceError(
            f"service {str(path)!r} not found (give a folder with {MANIFEST_NAME}, or module:function)"
        )
    try:
        return file, json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ServiceError(
            f"{file}: not valid JSON - {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ServiceError(f"{file}: cannot read: {exc}") from None


def load_manifest(path: str | os.PathLike[str]) -> ServiceManifest:
    """Load and validate a service manifest: a folder holding ``dcm-processor.json``,
    or the JSON file itself. Raises :class:`ServiceError` listing every error; logs the
    platform findings as one warning."""
    file, data = read_manifest_file(path)
    return manifest_from_dict(data, root=file.resolve().parent, source=str(file))


def manifest_from_dict(
    data: object, *, root: Path, source: str = "<manifest>", warn: bool = True
) -> ServiceManifest:
    """Validate a manifest given as a dict (``root`` is the folder entries are relative
    to); see :func:`load_manifest`."""
    manifest, problems = inspect_manifest(data, root=root, source=source)
    _raise_errors(source, problems)
    assert manifest is not None
    if warn and manifest.findings:
        logger.warning(
            "%s runs here, but the platform would refuse it or not run every job "
            "(dcm-service check lists this):\n%s",
            source,
            "\n".join(f"  - {p}" for p in manifest.findings),
        )
    return manifest


def manifest_for_function(
    entry: str,
    *,
    event: str = "stable-series",
    job_name: str | None = None,
    timeout: str | int | float | None = None,
    params: dict[str, Any] | None = None,
    service_name: str = "local-service",
    base_dir: str | os.PathLike[str] | None = None,
) -> ServiceManifest:
    """A one-job manifest for a worker given as ``module:function`` or
    ``file.py:function`` (relative to ``base_dir``, default the current folder)."""
    root = Path(base_dir or Path.cwd()).resolve()
    if event not in JOB_EVENTS:
        raise ServiceError(f"unknown event {event!r} - known: {', '.join(JOB_EVENTS)}")
    parsed = parse_entry(entry, root, what="worker entry")
    name = job_name or parsed.attr.split(".")[-1]
    data = {
        "name": service_name,
        "version": "0.0.0",
        "service": {
            "jobs": [
                {
                    "jobName": name,
                    "workerEntry": entry,
                    "events": [event],
                    "params": params or {},
                    "timeout": timeout if timeout is not None else DEFAULT_TIMEOUT,
                }
            ]
        },
    }
    return manifest_from_dict(data, root=root, source=f"worker {entry!r}", warn=False)
