"""How the dcm-processor platform loads and calls a service, in one place.

These are interface facts read from the platform's own packages (``dcm-processor``
2.0.1, ``dcm-processor-job-scheduler`` 0.0.1, ``dcm-processor-worker`` 0.0.1,
``dcm-processor-db-provider`` 0.0.1); the runner, the job process and
``dcm-service check`` all use them, so a service behaves the same here and there:

* The **registry folder** is imported as a package named ``registry_<jobName>`` and
  the job's ``registryEntry`` is looked up with ``getattr`` on it. The callback is
  called with the keywords :data:`REGISTRY_KEYWORDS` and returns ``bool`` or
  ``(bool, dict)``; an exception counts as false.
* The **module folder** is imported as a package named :data:`WORKER_PACKAGE`
  (``service_module``) and the worker does ``from service_module import
  <workerEntry>``; it is called with the keywords :data:`WORKER_KEYWORDS` (the
  scheduler's job arguments plus the ``job_id`` the job store adds) and its return
  value is written to a result file with ``json.dump``.
* The **pre-/post-services hooks** get :data:`HOOK_KEYWORDS`.
* Jobs are considered in ``sortPosition`` order, default :data:`DEFAULT_SORT_POSITION`.
* A job ``timeout`` is read as ``[Nw][Nd][Nh][Nm][Ns]`` (:data:`PLATFORM_TIMEOUT_RE`).
* The worker's generated main file carries the job's arguments as JSON inside a Python
  string literal, so a text value with a double quote or a control character (a
  newline, a tab) stops the job there, and a backslash silently changes the value
  (:func:`main_file_hazard`).

Only the standard library is imported here: the job process imports this module
before it runs any service code.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import sys
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

__all__ = [
    "DEFAULT_SORT_POSITION",
    "HOOK_KEYWORDS",
    "PLATFORM_TIMEOUT_RE",
    "REGISTRY_KEYWORDS",
    "SEMVER_RE",
    "WORKER_KEYWORDS",
    "WORKER_PACKAGE",
    "exported_names",
    "from_import",
    "import_folder_as_package",
    "main_file_hazard",
    "registry_package_name",
    "registry_result",
    "signature_problem",
]

#: Keywords of a registry callback call (the scheduler's callback check).
REGISTRY_KEYWORDS: Final = ("session_id", "job_name", "headers", "added_params", "params")
#: Keywords of the pre-/post-services hook calls.
HOOK_KEYWORDS: Final = (
    "session_id",
    "headers",
    "added_params",
    "params",
    "db_provider",
    "db_name",
    "db_url",
    "job_id",
)
#: Keywords of a worker call: the scheduler's job arguments plus ``job_id`` - the job's
#: identity, then the same keywords as a hook's, in the same order.
WORKER_KEYWORDS: Final = (
    "job_name",
    "worker_id",
    "worker_type",
    "service_id",
    "event",
    *HOOK_KEYWORDS,
)
#: The package name the worker gives the service's module folder.
WORKER_PACKAGE: Final = "service_module"
#: ``sortPosition`` of a job that does not set one.
DEFAULT_SORT_POSITION: Final = 1
#: A timeout the platform's job queue can read: weeks, days, hours, minutes, seconds.
PLATFORM_TIMEOUT_RE: Final = re.compile(r"^(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?$")
#: Semantic version, as the platform's package validation checks ``version``.
SEMVER_RE: Final = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


def registry_package_name(job_name: str) -> str:
    """The package name the scheduler imports a job's registry folder under."""
    return f"registry_{job_name}"


def registry_result(value: Any) -> tuple[bool, dict[str, Any] | None]:
    """A registry callback's return read as the scheduler reads it: a list or tuple
    is ``(bool(value[0]), value[1])`` (an empty one is false), anything else is
    ``bool(value)``. The second item is the dict for ``added_params``, or ``None``
    when the callback returned something else there (the scheduler then uses ``{}``)."""
    if isinstance(value, (list, tuple)):
        ok = bool(value[0]) if value else False
        if len(value) < 2:
            return ok, {}
        return ok, dict(value[1]) if isinstance(value[1], dict) else None
    return bool(value), {}


def import_folder_as_package(folder: Path, name: str) -> types.ModuleType:
    """Import ``folder`` (which holds an ``__init__.py``) as a package called ``name``,
    so that relative imports inside it work, without putting anything on ``sys.path``.
    A package of that name imported before is replaced (with its submodules)."""
    init = folder / "__init__.py"
    if not init.is_file():
        raise ImportError(
            f"{str(folder)!r} is not a package: it has no __init__.py (the platform imports "
            f"it as package {name!r})",
            name=name,
        )
    for loaded in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
        del sys.modules[loaded]
    spec = importlib.util.spec_from_file_location(
        name, init, submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has one
        raise ImportError(f"cannot import {str(folder)!r} as package {name!r}", name=name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        for loaded in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
            del sys.modules[loaded]
        raise
    return module


def from_import(package: types.ModuleType, name: str) -> Any:
    """What ``from <package> import <name>`` gives: the attribute, else the submodule
    of that name; :class:`ImportError` naming the package's ``__init__.py`` otherwise."""
    try:
        return getattr(package, name)
    except AttributeError:
        pass
    try:
        return importlib.import_module(f"{package.__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{package.__name__}.{name}":
            raise
    raise ImportError(
        f"cannot import name {name!r} from {package.__name__!r} ({package.__file__}) - "
        f"export it from that __init__.py, e.g. 'from .main import {name}'",
        name=name,
    )


def exported_names(init_file: Path) -> set[str] | None:
    """Names ``init_file`` binds at module level (definitions, assignments, imports),
    read without running it; ``None`` when that cannot be told statically (a star
    import, a module ``__getattr__``, or a file that does not parse)."""
    try:
        tree = ast.parse(init_file.read_text(encoding="utf-8"), str(init_file))
    except (OSError, SyntaxError, ValueError):
        return None
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return None if "__getattr__" in names else names


def signature_problem(func: Callable[..., Any], keywords: Sequence[str]) -> str | None:
    """Why ``func`` cannot be called with exactly ``keywords`` as keyword arguments,
    or ``None`` when it can (or its signature cannot be read)."""
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(**dict.fromkeys(keywords))
    except TypeError as exc:
        return str(exc)
    return None


_HAZARDS: Final = (('"', "a double quote"), ("\\", "a backslash"))


def main_file_hazard(value: Any, where: str = "") -> str | None:
    """Where ``value`` (a job argument: params, headers, ...) holds text the platform's
    generated main file cannot carry - a double quote or a control character (the job
    fails there) or a backslash (the value arrives changed) - e.g. ``"params['title']
    contains a double quote"``; ``None`` when there is none."""
    if isinstance(value, str):
        for char, name in _HAZARDS:
            if char in value:
                return f"{where or 'the value'} contains {name}"
        if any(ord(c) < 0x20 for c in value):
            return f"{where or 'the value'} contains a control character (newline, tab, ...)"
        return None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = main_file_hazard(key, f"{where} key") if isinstance(key, str) else None
        found = found or main_file_hazard(item, f"{where}[{key!r}]")
        if found:
            return found
    return None
