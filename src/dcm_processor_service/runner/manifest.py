"""The service manifest (``dcm-processor.json``): validation and entry points.

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

Validation reports **every** problem at once, in two kinds (:class:`ManifestProblem`):

* **errors** - the service cannot run here either (bad JSON, a missing ``jobName``,
  ``workerEntry`` or ``events``, an unknown event, a bad timeout, an entry that does
  not exist, ...): :func:`load_manifest` raises :class:`ServiceError` listing them all;
* **platform findings** - the service runs here, but the platform would refuse the
  package or never run a job (no ``version`` or not semver, ``registry``/``module`` not
  a package, no ``registryEntry``, a dotted or ``file.py:function`` entry, ``events``
  not a list, a ``dependsOn`` that can never pass, a timeout the platform cannot read):
  :func:`load_manifest` logs them as one warning, ``dcm-service check`` fails on them.

Entry points
------------
``name`` (the platform's form)
    A bare name exported by the folder's ``__init__.py``. The registry folder is
    imported as package ``registry_<jobName>`` and the callback looked up with
    ``getattr``; the module folder is imported as package ``service_module`` and the
    worker taken with ``from service_module import <name>``. Relative imports inside the
    folders work; nothing is put on ``sys.path``.

``package.module.function``, ``path/to/file.py:function``, ``package.module:function``
    Local forms (the platform cannot run them): the module is imported with the base
    folder (``module`` or ``registry``), then the manifest's folder, first on
    ``sys.path``; a file is loaded under a private module name with its own folder on
    ``sys.path``. ``dcm-service run mypkg.jobs:segment`` uses these.

Entries are checked without running service code when the manifest is loaded (the
package exports the name, the module or file exists); the function itself is imported
by the runner (registry callbacks, in its own process as the platform's scheduler does)
and by each job process (workers).
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .._context import JOB_EVENTS
from .._errors import ServiceError
from .._validation import validate_name
from .platform import (
    DEFAULT_SORT_POSITION,
    PLATFORM_TIMEOUT_RE,
    SEMVER_RE,
    WORKER_PACKAGE,
    exported_names,
    from_import,
    import_folder_as_package,
    registry_package_name,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "MANIFEST_NAME",
    "EntryLoader",
    "EntryPoint",
    "JobSpec",
    "ManifestProblem",
    "ServiceManifest",
    "inspect_manifest",
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
    "worker",
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


# ------------------------------------------------------------------ entries
@dataclass(frozen=True)
class EntryPoint:
    """A parsed entry: a bare name exported by a package folder (``package``, imported
    as ``package_name``), a module (``module``) or a file (``file``), plus the attribute
    path of the function inside it. ``from_import``: look the name up as ``from
    package import name`` does (workers) rather than with ``getattr`` (registry)."""

    text: str
    attr: str
    module: str | None = None
    file: Path | None = None
    search_path: tuple[str, ...] = ()
    package: Path | None = None
    package_name: str | None = None
    from_import: bool = False

    @property
    def is_bare(self) -> bool:
        """Whether this is the platform's form (a name exported by a package folder)."""
        return self.package is not None

    def describe(self) -> str:
        """The entry as written, with where it was looked up."""
        if self.package is not None:
            where = f"package {str(self.package)!r} imported as {self.package_name!r}"
        else:
            where = str(self.file) if self.file else f"module {self.module!r}"
        return f"{self.text!r} ({where})"

    def to_spec(self) -> dict[str, Any]:
        """A JSON-ready dict (for the job process); :meth:`from_spec` reads it back."""
        return {
            "text": self.text,
            "attr": self.attr,
            "module": self.module,
            "file": str(self.file) if self.file else None,
            "search_path": list(self.search_path),
            "package": str(self.package) if self.package else None,
            "package_name": self.package_name,
            "from_import": self.from_import,
        }

    @classmethod
    def from_spec(cls, data: dict[str, Any]) -> EntryPoint:
        """The entry :meth:`to_spec` described."""
        return cls(
            text=data["text"],
            attr=data["attr"],
            module=data.get("module"),
            file=Path(data["file"]) if data.get("file") else None,
            search_path=tuple(data.get("search_path") or ()),
            package=Path(data["package"]) if data.get("package") else None,
            package_name=data.get("package_name"),
            from_import=bool(data.get("from_import")),
        )


def parse_entry(
    text: object,
    base_dir: Path,
    *,
    extra_paths: Sequence[Path] = (),
    what: str = "entry",
    package_name: str | None = None,
    from_import: bool = False,
) -> EntryPoint:
    """Parse ``text`` relative to ``base_dir``: a bare ``name`` (exported by the
    package ``base_dir``, imported as ``package_name``), ``module.function`` or
    ``file.py:function``."""
    if not isinstance(text, str) or not text.strip():
        raise ServiceError(
            f"invalid {what} {text!r} - write a name exported by the folder's __init__.py"
        )
    text = text.strip()
    if text.isidentifier():
        return EntryPoint(
            text,
            text,
            package=base_dir,
            package_name=package_name or base_dir.name,
            from_import=from_import,
        )
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
        module, _, attr = text.rpartition(".")
    if not module or not all(p.isidentifier() for p in (*module.split("."), attr)):
        raise ServiceError(
            f"invalid {what} {text!r} - write a name exported by the folder's __init__.py"
        )
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
    """Raise :class:`ServiceError` when ``entry`` cannot exist, without running any of
    its code: a package without ``__init__.py`` or whose ``__init__.py`` visibly does
    not export the name, a module or file that is not there."""
    if entry.package is not None:
        init = entry.package / "__init__.py"
        if not init.is_file():
            raise ServiceError(
                f"unknown {what} {entry.text!r} - a bare name is looked up in the package "
                f"{str(entry.package)!r}, which has no __init__.py"
            )
        names = exported_names(init)
        if names is not None and entry.attr not in names:
            hint = f"add 'from .main import {entry.attr}' (or define it there)"
            if (entry.package / f"{entry.attr}.py").is_file():
                hint = f"{entry.attr}.py is a module, not a function: export the function instead"
            raise ServiceError(
                f"unknown {what} {entry.text!r} - {init} does not define or import "
                f"{entry.attr!r}: {hint}"
            )
    elif entry.file is not None:
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
    """Import ``entry`` and return its function. A bare entry imports its package
    folder under ``entry.package_name`` (as the platform does); the other forms put
    their search folders in front of ``sys.path`` (they stay there; use
    :class:`EntryLoader` to undo that)."""
    check_entry(entry, what)
    obj: Any
    if entry.package is not None:
        package = import_folder_as_package(entry.package, entry.package_name or "")
        try:
            obj = (
                from_import(package, entry.attr)
                if entry.from_import
                else getattr(package, entry.attr)
            )
        except (AttributeError, ImportError):
            raise ServiceError(
                f"unknown {what} {entry.text!r} - {package.__file__} does not export {entry.attr!r}"
            ) from None
        if isinstance(obj, types.ModuleType):
            raise ServiceError(
                f"invalid {what} {entry.text!r} - {entry.package_name}.{entry.attr} is a module, "
                "not a function: export the function from __init__.py"
            )
    else:
        for folder in reversed(entry.search_path):
            if folder not in sys.path:
                sys.path.insert(0, folder)
        if entry.file is not None:
            module = _load_file(entry.file)
        else:
            assert entry.module is not None
            module = importlib.import_module(entry.module)
        obj = module
        for part in entry.attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ServiceError(
                    f"unknown {what} {entry.text!r} - "
                    f"{getattr(module, '__file__', module.__name__)} has no attribute {entry.attr!r}"
                ) from None
    if not callable(obj):
        raise ServiceError(f"invalid {what} {entry.text!r} - {entry.attr!r} is not callable")
    func: Callable[..., Any] = obj
    return func


class EntryLoader:
    """Imports entries into *this* process and undoes it on :meth:`close`: packages
    imported under the platform's names, the search folders on ``sys.path`` and the
    modules imported from them leave again, so two services with a ``registry``
    package each can be loaded one after the other."""

    def __init__(self) -> None:
        self._before = set(sys.modules)
        self._folders: set[str] = set()
        self._packages: set[str] = set()
        self._saved_path = list(sys.path)
        self._shadowed: dict[str, types.ModuleType] = {}
        self._cache: dict[EntryPoint, Callable[..., Any]] = {}

    def load(self, entry: EntryPoint, what: str = "entry") -> Callable[..., Any]:
        """The function of ``entry`` (imported once per loader)."""
        if entry in self._cache:
            return self._cache[entry]
        if entry.package is not None:
            self._set_aside(entry.package_name or "")
            self._packages.add(entry.package_name or "")
        else:
            self._folders.update(str(Path(p).resolve()) for p in entry.search_path)
            if entry.module is not None:
                self._unshadow(entry.module.split(".")[0], entry.search_path)
        func = resolve_entry(entry, what)
        self._cache[entry] = func
        return func

    def _set_aside(self, top: str) -> None:
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            if name not in self._shadowed and name in self._before:
                self._shadowed[name] = sys.modules[name]

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

    def _owned(self, name: str, module: types.ModuleType | None) -> bool:
        if name.startswith("_dcm_service_") or any(
            name == top or name.startswith(top + ".") for top in self._packages
        ):
            return True
        path = getattr(module, "__file__", None)
        if not path:
            return False
        resolved = str(Path(path).resolve())
        return any(resolved.startswith(folder + os.sep) for folder in self._folders)

    def close(self) -> None:
        """Forget everything this loader imported and restore ``sys.path``."""
        for name, module in list(sys.modules.items()):
            if (name not in self._before or name in self._shadowed) and self._owned(name, module):
                del sys.modules[name]
        sys.modules.update(self._shadowed)
        self._shadowed.clear()
        self._packages.clear()
        sys.path[:] = self._saved_path
        self._cache.clear()
        importlib.invalidate_caches()

    def __enter__(self) -> EntryLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def loaded_entries() -> Iterator[EntryLoader]:
    """An :class:`EntryLoader` closed at the end of the ``with`` block."""
    loader = EntryLoader()
    try:
        yield loader
    finally:
        loader.close()


# ----------------------------------------------------------------- manifest
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

    def with_params(self, params: dict[str, Any]) -> JobSpec:
        """A copy with ``params`` merged over the manifest's params."""
        return replace(self, params={**self.params, **params})


@dataclass(frozen=True)
class ServiceManifest:
    """A loaded, validated service manifest. ``findings`` are its platform-only
    problems (see :class:`ManifestProblem`)."""

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


_JSON_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "an object",
    bool: "true or false",
}


class _Problems:
    """Collects the problems of one manifest; typed field access that records a
    problem (instead of raising) and returns a default."""

    def __init__(self) -> None:
        self.items: list[ManifestProblem] = []

    def error(self, where: str, message: str) -> None:
        self.items.append(ManifestProblem(where, message))

    def platform(self, where: str, message: str) -> None:
        self.items.append(ManifestProblem(where, message, platform_only=True))

    @property
    def errors(self) -> list[ManifestProblem]:
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


def _package_folder(root: Path, service: dict[str, Any], key: str, problems: _Problems) -> Path:
    """The folder of ``service[key]``. A missing value falls back to the manifest's
    folder (a platform finding: the platform requires both folders)."""
    where = f"service.{key}"
    value = service.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        problems.platform(
            where,
            f"missing - the platform requires the folder of the {key} package; "
            "entries are looked up in the manifest's folder here",
        )
        return root
    if not isinstance(value, str):
        problems.error(where, f"must be a string, got {type(value).__name__} {value!r}")
        return root
    folder = (root / value).resolve()
    if not folder.is_dir():
        problems.error(where, f"names folder {value!r}, which does not exist in {root}")
        return root
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
    return folder


def _entry(
    raw: dict[str, Any],
    key: str,
    at: str,
    base: Path,
    root: Path,
    problems: _Problems,
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
        if key == "registryEntry" and not isinstance(raw.get(key), (int, float, list, dict)):
            problems.platform(
                where,
                "missing - the platform drops a job without a registry callback; here the "
                "job is scheduled for every object of its events",
            )
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
        folder = "module" if key == "workerEntry" else "registry"
        problems.platform(
            where,
            f"{text!r} is not a bare name - the platform looks the entry up as a name "
            f"exported by the {folder} package's __init__.py; export {entry.attr!r} there "
            f'and write "{key}": "{entry.attr}"',
        )
    if check:
        try:
            check_entry(entry, key)
        except ServiceError as exc:
            problems.error(where, str(exc))
            return text, None
    return text, entry


def _timeout(raw: dict[str, Any], at: str, problems: _Problems) -> tuple[float, str]:
    where = f"{at}.timeout"
    value = problems.get(raw, "timeout", where, (str, int, float), default=DEFAULT_TIMEOUT)
    try:
        seconds = parse_timeout(value, "timeout")
    except ServiceError as exc:
        problems.error(where, str(exc))
        return parse_timeout(DEFAULT_TIMEOUT), DEFAULT_TIMEOUT
    if isinstance(value, str) and not PLATFORM_TIMEOUT_RE.match(value.strip()):
        problems.platform(
            where,
            f"{value!r} is not in the platform's format [Nw][Nd][Nh][Nm][Ns] with whole "
            "numbers, e.g. '90s', '10m', '1h30m'",
        )
    return seconds, str(value)


def _job(
    raw: object,
    i: int,
    root: Path,
    registry_dir: Path,
    module_dir: Path,
    seen: set[str],
    problems: _Problems,
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
    )


def _events(raw: dict[str, Any], at: str, problems: _Problems) -> tuple[str, ...]:
    where = f"{at}.events"
    value = problems.get(raw, "events", where, (list, str), required=True)
    if value is None:
        return ()
    if isinstance(value, str):
        problems.platform(where, f"must be a list - write [{json.dumps(value)}]")
        value = [value]
    if not value:
        problems.error(where, f"is empty - give one or more of {', '.join(JOB_EVENTS)}")
        return ()
    bad = [ev for ev in value if ev not in JOB_EVENTS]
    for ev in bad:
        problems.error(where, f"unknown event {ev!r} - known: {', '.join(JOB_EVENTS)}")
    return tuple(dict.fromkeys(ev for ev in value if ev in JOB_EVENTS))


def _top_level(data: dict[str, Any], root: Path, problems: _Problems) -> tuple[str, str, str]:
    name = problems.get(data, "name", "name", str, required=True)
    if name is not None:
        try:
            validate_name(name, "service name")
        except ValueError as exc:
            problems.error("name", str(exc))
            name = None
    version = data.get("version")
    if version is None or (isinstance(version, str) and not version.strip()):
        problems.platform(
            "version", "missing - the platform requires a semantic version, e.g. '0.1.0'"
        )
        version = "0.0.0"
    elif not isinstance(version, str) or not SEMVER_RE.match(version.strip()):
        problems.platform(
            "version", f"{version!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. '1.0.0')"
        )
    description = data.get("summary") or data.get("description") or ""
    worker = data.get("worker")
    if worker is not None:
        if not isinstance(worker, dict):
            problems.platform("worker", "must be an object with 'path' and 'type'")
        elif not str(worker.get("path") or "").strip():
            problems.platform("worker.path", "missing - required when 'worker' is given")
        elif not (root / str(worker["path"])).exists():
            problems.platform(
                "worker.path", f"{worker['path']!r} does not exist next to the manifest"
            )
    return name or "", str(version), str(description)


def inspect_manifest(
    data: object, *, root: Path, source: str = "<manifest>"
) -> tuple[ServiceManifest | None, list[ManifestProblem]]:
    """Validate a manifest given as parsed JSON: ``(manifest, problems)``. The manifest
    is ``None`` when an error leaves nothing to run."""
    problems = _Problems()
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
    from .graph import dependency_problems

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
