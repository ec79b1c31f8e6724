"""The service manifest (``dcm-processor.json``) and entry-point resolution.

A service is a directory holding a ``dcm-processor.json`` manifest (SPEC §2.2)::

    {
      "name": "threshold-service",
      "version": "1.0.0",
      "service": {
        "registry": "registry",          # folder of the registry (filter) code
        "module": "module",              # folder of the worker code
        "jobs": [
          {"jobName": "threshold",
           "workerEntry": "threshold.worker",
           "registryEntry": "filters.ct_or_mr",
           "events": ["stable-series"],
           "dependsOn": [],
           "params": {"threshold": 150},
           "timeout": "10m",
           "sortPosition": 0,
           "disabled": false}
        ]
      }
    }

Required: ``name``, ``service``, ``service.jobs`` (non-empty), and per job ``jobName``,
``workerEntry`` and ``events``. Everything else has a default: ``registry``/``module``
the manifest's folder, ``registryEntry`` none (the job is scheduled for every object of
its events), ``dependsOn`` none, ``params`` ``{}``, ``timeout`` ``"1h"``,
``sortPosition`` 0, ``disabled`` false.

Entry points
------------
An entry names a function in one of two forms:

``package.module.function``
    The module is imported with the *base folder* first on ``sys.path`` (``module``
    for ``workerEntry``, ``registry`` for ``registryEntry``), then the manifest's
    folder; installed packages are found too (``dcm_processor_service.hooks.run_pre_services``).
    This is the platform's form: the worker has the service's module folder on its path.

``path/to/file.py:function`` or ``package.module:function``
    Left of the colon: a ``.py`` file (relative to the base folder, or absolute) or a
    dotted module name; right of it: the function, or a dotted attribute path
    (``tasks.py:Segmenter.run``). A file is loaded under a private module name with its
    own folder on ``sys.path``, so it can import its siblings.

Worker entries are checked when the manifest is loaded without running service code
(the module or file must exist); the function itself is looked up in the job process.
Registry entries are imported by the runner when it starts (they run in the runner
process, like the platform's scheduler runs them).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import re
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._context import JOB_EVENTS
from .._errors import ServiceError
from .._validation import validate_name

__all__ = [
    "DEFAULT_TIMEOUT",
    "MANIFEST_NAME",
    "EntryLoader",
    "EntryPoint",
    "JobSpec",
    "ServiceManifest",
    "load_manifest",
    "manifest_for_function",
    "parse_entry",
    "parse_timeout",
    "resolve_entry",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "dcm-processor.json"
DEFAULT_TIMEOUT = "1h"

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
    "channel",
    "priority",
}
_TIMEOUT_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|h|hr|d)?", re.IGNORECASE)
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
}


def parse_timeout(value: str | int | float | None, what: str = "timeout") -> float:
    """Seconds for a timeout written ``"30s"``, ``"10m"``, ``"1h"``, ``"1h30m"``,
    ``"2d"`` or a plain number of seconds. ``None`` gives the default (1 hour)."""
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


# ------------------------------------------------------------------ entries
@dataclass(frozen=True)
class EntryPoint:
    """A parsed entry: either a module (``module``) or a file (``file``), plus the
    attribute path of the function inside it."""

    text: str
    attr: str
    module: str | None = None
    file: Path | None = None
    search_path: tuple[str, ...] = ()

    def describe(self) -> str:
        """The entry as written, with where it was looked up."""
        where = str(self.file) if self.file else f"module {self.module!r}"
        return f"{self.text!r} ({where})"


def parse_entry(
    text: object, base_dir: Path, *, extra_paths: Sequence[Path] = (), what: str = "entry"
) -> EntryPoint:
    """Parse ``text`` (``module.function`` or ``file.py:function``) relative to ``base_dir``."""
    if not isinstance(text, str) or not text.strip():
        raise ServiceError(
            f"invalid {what} {text!r} - write 'module.function' or 'file.py:function'"
        )
    text = text.strip()
    search = tuple(dict.fromkeys(str(p) for p in (base_dir, *extra_paths)))
    if ":" in text:
        left, attr = text.rsplit(":", 1)
        if not left or not attr or not all(p.isidentifier() for p in attr.split(".")):
            raise ServiceError(
                f"invalid {what} {text!r} - write 'file.py:function' or 'module:function'"
            )
        if left.endswith(".py") or "/" in left or os.sep in left:
            path = Path(left).expanduser()
            if not path.is_absolute():
                path = base_dir / path
            return EntryPoint(
                text, attr, file=path.resolve(), search_path=(str(path.resolve().parent), *search)
            )
        module = left
    else:
        if "." not in text:
            raise ServiceError(
                f"invalid {what} {text!r} - name the module too: 'module.function' or 'file.py:function'"
            )
        module, attr = text.rsplit(".", 1)
    if not all(p.isidentifier() for p in (*module.split("."), attr)):
        raise ServiceError(f"invalid {what} {text!r} - not a dotted Python name")
    return EntryPoint(text, attr, module=module, search_path=search)


def _find_module(module: str, search_path: Sequence[str]) -> bool:
    """Whether ``module`` can be imported (from ``search_path`` or ``sys.path``),
    without executing any of it."""
    parts = module.split(".")
    spec = importlib.machinery.PathFinder.find_spec(parts[0], list(search_path))
    if spec is None:
        try:
            spec = importlib.util.find_spec(parts[0])
        except (ImportError, ValueError):
            spec = None
    for part in parts[1:]:
        if spec is None or not spec.submodule_search_locations:
            return False
        spec = importlib.machinery.PathFinder.find_spec(part, list(spec.submodule_search_locations))
    return spec is not None


def check_entry(entry: EntryPoint, what: str) -> None:
    """Raise :class:`ServiceError` when the module or file of ``entry`` does not exist."""
    if entry.file is not None:
        if not entry.file.is_file():
            raise ServiceError(
                f"unknown {what} {entry.text!r} - file {str(entry.file)!r} does not exist"
            )
    elif entry.module is not None and not _find_module(entry.module, entry.search_path):
        raise ServiceError(
            f"unknown {what} {entry.text!r} - no module {entry.module!r} in "
            f"{', '.join(entry.search_path)} or on the Python path"
        )


def _load_file(path: Path) -> types.ModuleType:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_dcm_service_{digest}_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ServiceError(f"cannot load {str(path)!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def resolve_entry(entry: EntryPoint, what: str = "entry") -> Callable[..., Any]:
    """Import ``entry`` and return its function. ``sys.path`` gets the entry's search
    folders in front (they stay there; use :class:`EntryLoader` to undo that)."""
    check_entry(entry, what)
    for folder in reversed(entry.search_path):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    if entry.file is not None:
        module = _load_file(entry.file)
    else:
        assert entry.module is not None
        module = importlib.import_module(entry.module)
    obj: Any = module
    for part in entry.attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ServiceError(
                f"unknown {what} {entry.text!r} - {getattr(module, '__file__', module.__name__)} "
                f"has no attribute {entry.attr!r}"
            ) from None
    if not callable(obj):
        raise ServiceError(f"invalid {what} {entry.text!r} - {entry.attr!r} is not callable")
    func: Callable[..., Any] = obj
    return func


class EntryLoader:
    """Imports entries into *this* process and undoes it on :meth:`close`: the search
    folders leave ``sys.path`` and modules imported from them leave ``sys.modules``, so
    two services with a ``registry`` package each can be loaded one after the other."""

    def __init__(self) -> None:
        self._before = set(sys.modules)
        self._folders: set[str] = set()
        self._saved_path = list(sys.path)
        self._shadowed: dict[str, types.ModuleType] = {}
        self._cache: dict[EntryPoint, Callable[..., Any]] = {}

    def load(self, entry: EntryPoint, what: str = "entry") -> Callable[..., Any]:
        """The function of ``entry`` (imported once per loader)."""
        if entry in self._cache:
            return self._cache[entry]
        self._folders.update(str(Path(p).resolve()) for p in entry.search_path)
        if entry.module is not None:
            self._unshadow(entry.module.split(".")[0], entry.search_path)
        func = resolve_entry(entry, what)
        self._cache[entry] = func
        return func

    def _unshadow(self, top: str, search_path: Sequence[str]) -> None:
        """If ``top`` is already imported from elsewhere but the service has its own
        ``top`` module, set the imported one aside until :meth:`close`."""
        loaded = sys.modules.get(top)
        if loaded is None:
            return
        spec = importlib.machinery.PathFinder.find_spec(top, list(search_path))
        if spec is None or not spec.origin:
            return
        loaded_file = getattr(loaded, "__file__", None)
        if loaded_file and Path(loaded_file).resolve() == Path(spec.origin).resolve():
            return
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            self._shadowed[name] = sys.modules.pop(name)

    def _owned(self, module: types.ModuleType) -> bool:
        path = getattr(module, "__file__", None)
        if not path:
            return False
        resolved = str(Path(path).resolve())
        return any(resolved.startswith(folder + os.sep) for folder in self._folders)

    def close(self) -> None:
        """Forget everything this loader imported and restore ``sys.path``."""
        for name, module in list(sys.modules.items()):
            if name in self._before:
                continue
            if name.startswith("_dcm_service_") or (module is not None and self._owned(module)):
                del sys.modules[name]
        sys.modules.update(self._shadowed)
        self._shadowed.clear()
        sys.path[:] = self._saved_path
        self._cache.clear()
        importlib.invalidate_caches()

    def __enter__(self) -> EntryLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------- manifest
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
    sort_position: int = 0
    disabled: bool = False
    index: int = 0
    worker: EntryPoint | None = None
    registry: EntryPoint | None = None

    def with_params(self, params: dict[str, Any]) -> JobSpec:
        """A copy with ``params`` merged over the manifest's params."""
        return _replace(self, params={**self.params, **params})


def _replace(spec: JobSpec, **changes: Any) -> JobSpec:
    from dataclasses import replace

    return replace(spec, **changes)


@dataclass(frozen=True)
class ServiceManifest:
    """A loaded, validated service manifest."""

    name: str
    version: str
    path: Path | None
    root: Path
    registry_dir: Path
    module_dir: Path
    jobs: tuple[JobSpec, ...]
    description: str = ""

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
        from dataclasses import replace

        return replace(self, jobs=jobs)


class _Reader:
    """Field access with errors that name the file and the JSON path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def get(
        self,
        obj: dict[str, Any],
        key: str,
        path: str,
        kind: type | tuple[type, ...],
        *,
        required: bool,
        default: Any = None,
    ) -> Any:
        if key not in obj or obj[key] is None:
            if required:
                raise ServiceError(f"{self.source}: missing required field '{path}'")
            return default
        value = obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
            raise ServiceError(
                f"{self.source}: field '{path}' must be {names}, got {type(value).__name__} {value!r}"
            )
        return value


_JSON_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
    bool: "true or false",
}


def _folder(root: Path, value: str | None, path: str, source: str) -> Path:
    if value is None:
        return root
    folder = (root / value).resolve()
    if not folder.is_dir():
        raise ServiceError(
            f"{source}: field '{path}' names folder {value!r}, which does not exist in {root}"
        )
    return folder


def load_manifest(path: str | os.PathLike[str]) -> ServiceManifest:
    """Load and validate a service manifest: a folder holding ``dcm-processor.json``,
    or the JSON file itself. Errors name the file and the field."""
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
    source = str(file)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ServiceError(
            f"{source}: not valid JSON - {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ServiceError(f"{source}: cannot read: {exc}") from None
    return manifest_from_dict(data, root=file.resolve().parent, source=source)


def manifest_from_dict(data: object, *, root: Path, source: str = "<manifest>") -> ServiceManifest:
    """Validate a manifest given as a dict (``root`` is the folder entries are relative to)."""
    r = _Reader(source)
    if not isinstance(data, dict):
        raise ServiceError(
            f"{source}: the manifest must be a JSON object, got {type(data).__name__}"
        )
    name = r.get(data, "name", "name", str, required=True)
    try:
        validate_name(name, "service name")
    except ValueError as exc:
        raise ServiceError(f"{source}: field 'name': {exc}") from None
    version = str(
        r.get(data, "version", "version", (str, int, float), required=False, default="0.0.0")
    )
    description = r.get(data, "description", "description", str, required=False, default="")
    service = r.get(data, "service", "service", dict, required=True)
    registry_dir = _folder(
        root,
        r.get(service, "registry", "service.registry", str, required=False),
        "service.registry",
        source,
    )
    module_dir = _folder(
        root,
        r.get(service, "module", "service.module", str, required=False),
        "service.module",
        source,
    )
    raw_jobs = r.get(service, "jobs", "service.jobs", list, required=True)
    if not raw_jobs:
        raise ServiceError(
            f"{source}: field 'service.jobs' is empty - a service needs at least one job"
        )
    jobs: list[JobSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_jobs):
        at = f"service.jobs[{i}]"
        if not isinstance(raw, dict):
            raise ServiceError(f"{source}: '{at}' must be an object, got {type(raw).__name__}")
        job_name = r.get(raw, "jobName", f"{at}.jobName", str, required=True)
        try:
            validate_name(job_name, "job name")
        except ValueError as exc:
            raise ServiceError(f"{source}: field '{at}.jobName': {exc}") from None
        if job_name in seen:
            raise ServiceError(
                f"{source}: '{at}.jobName' {job_name!r} is used by another job - job names must be unique"
            )
        seen.add(job_name)
        at = f"service.jobs[{i}] ({job_name})"
        unknown = set(raw) - _KNOWN_JOB_FIELDS
        if unknown:
            logger.warning(
                "%s: %s has unknown field(s) %s (ignored)", source, at, ", ".join(sorted(unknown))
            )
        worker_text = r.get(raw, "workerEntry", f"{at}.workerEntry", str, required=True)
        registry_text = r.get(raw, "registryEntry", f"{at}.registryEntry", str, required=False)
        events_raw = r.get(raw, "events", f"{at}.events", (list, str), required=True)
        events = [events_raw] if isinstance(events_raw, str) else list(events_raw)
        if not events:
            raise ServiceError(
                f"{source}: field '{at}.events' is empty - give one or more of {', '.join(JOB_EVENTS)}"
            )
        for ev in events:
            if ev not in JOB_EVENTS:
                raise ServiceError(
                    f"{source}: field '{at}.events' has unknown event {ev!r} - known: {', '.join(JOB_EVENTS)}"
                )
        deps_raw = r.get(
            raw, "dependsOn", f"{at}.dependsOn", (list, str), required=False, default=[]
        )
        deps = [deps_raw] if isinstance(deps_raw, str) else list(deps_raw)
        if not all(isinstance(d, str) and d for d in deps):
            raise ServiceError(
                f"{source}: field '{at}.dependsOn' must list job names, got {deps_raw!r}"
            )
        params = r.get(raw, "params", f"{at}.params", dict, required=False, default={})
        timeout_raw = r.get(
            raw,
            "timeout",
            f"{at}.timeout",
            (str, int, float),
            required=False,
            default=DEFAULT_TIMEOUT,
        )
        try:
            timeout = parse_timeout(timeout_raw, f"'{at}.timeout'")
        except ServiceError as exc:
            raise ServiceError(f"{source}: {exc}") from None
        sort_position = r.get(
            raw, "sortPosition", f"{at}.sortPosition", int, required=False, default=0
        )
        disabled = r.get(raw, "disabled", f"{at}.disabled", bool, required=False, default=False)
        try:
            worker = parse_entry(
                worker_text, module_dir, extra_paths=[root], what=f"'{at}.workerEntry'"
            )
            registry = (
                parse_entry(
                    registry_text, registry_dir, extra_paths=[root], what=f"'{at}.registryEntry'"
                )
                if registry_text
                else None
            )
            if not disabled:
                check_entry(worker, f"'{at}.workerEntry'")
                if registry is not None:
                    check_entry(registry, f"'{at}.registryEntry'")
        except ServiceError as exc:
            raise ServiceError(f"{source}: {exc}") from None
        jobs.append(
            JobSpec(
                name=job_name,
                worker_entry=worker_text,
                events=tuple(dict.fromkeys(events)),
                registry_entry=registry_text,
                depends_on=tuple(dict.fromkeys(deps)),
                params=dict(params),
                timeout=timeout,
                timeout_text=str(timeout_raw),
                sort_position=sort_position,
                disabled=disabled,
                index=i,
                worker=worker,
                registry=registry,
            )
        )
    manifest = ServiceManifest(
        name=name,
        version=version,
        path=Path(source) if source.endswith(".json") else None,
        root=root,
        registry_dir=registry_dir,
        module_dir=module_dir,
        jobs=tuple(jobs),
        description=description,
    )
    from .schedule import validate_dependencies

    try:
        validate_dependencies(manifest.jobs)
    except ServiceError as exc:
        raise ServiceError(f"{source}: {exc}") from None
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
    return manifest_from_dict(data, root=root, source=f"worker {entry!r}")


@contextlib.contextmanager
def loaded_entries() -> Iterator[EntryLoader]:
    """An :class:`EntryLoader` closed at the end of the ``with`` block."""
    loader = EntryLoader()
    try:
        yield loader
    finally:
        loader.close()
