"""Entry points: the functions a manifest names, parsed, checked and imported.

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

:func:`check_entry` checks an entry without running service code (the package exports
the name, the module or file exists): the manifest reader does that when a manifest is
loaded. :func:`resolve_entry` imports the function: the runner does that for registry
callbacks (in its own process, as the platform's scheduler does), each job process for
its worker. :class:`EntryLoader` imports entries into this process and forgets them
again.

Only the standard library and :mod:`.platform` are imported here: the job process
imports this module before it runs any service code.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import ServiceError
from .platform import exported_names, from_import, import_folder_as_package

__all__ = ["EntryLoader", "EntryPoint", "check_entry", "parse_entry", "resolve_entry"]


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
