"""Versions of this package, its dependencies, the dcm2niix binary and the store
drivers: what ``dcm-service --version`` prints for a bug report and what the doctor
checks against the package's requirements."""

from __future__ import annotations

import platform
import re
import sqlite3
import subprocess
from dataclasses import dataclass
from importlib import metadata

from .._errors import MissingDependencyError

__all__ = [
    "DISTRIBUTION",
    "Dcm2niixInfo",
    "dcm2niix_info",
    "distribution_version",
    "requirement_problem",
    "requirements",
    "version_lines",
]

#: Our distribution's name on the package index.
DISTRIBUTION = "dcm-processor-service"
#: What ``--version`` lists, in this order: the libraries a bug report needs.
REPORTED_LIBRARIES = ("pydicom", "pynetdicom", "highdicom", "nibabel", "numpy")
#: The store drivers, by provider (the embedded ``sqlite`` one is Python's ``sqlite3``).
STORE_DRIVERS = {"postgresql": ("psycopg", "psycopg-pool"), "mongodb": ("pymongo",)}

_DCM2NIIX_VERSION = re.compile(r"\bv(\d+\.\d+\.\d+)")
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*([^;]*)(;.*)?$")


def distribution_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or ``None`` when it is not
    installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Dcm2niixInfo:
    """Where the dcm2niix binary is and what it says its version is.

    ``error`` says why it cannot be used (not found, does not run); then ``path`` or
    ``version`` may be ``None``."""

    path: str | None
    version: str | None
    error: str | None = None


def dcm2niix_info(timeout: float = 15.0) -> Dcm2niixInfo:
    """Find the dcm2niix binary the converters use and ask it for its version."""
    from ..imaging.nifti_read import find_dcm2niix

    find_dcm2niix.cache_clear()  # PATH may have changed since a previous call
    try:
        path = find_dcm2niix()
    except MissingDependencyError as exc:
        return Dcm2niixInfo(None, None, str(exc))
    try:
        proc = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Dcm2niixInfo(path, None, f"{path} does not run: {exc}")
    found = _DCM2NIIX_VERSION.search(proc.stdout + proc.stderr)
    if found is None:  # dcm2niix exits 3 after printing its version: the text decides
        return Dcm2niixInfo(path, None, f"{path} printed no version (exit code {proc.returncode})")
    return Dcm2niixInfo(path, found.group(1))


def _release(version: str) -> tuple[int, ...]:
    """The numeric release of a version (``3.0.2`` -> ``(3, 0, 2)``; suffixes dropped)."""
    numbers = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(n) for n in numbers.group(0).split(".")) if numbers else ()


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


_COMPARE = {
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def requirement_problem(installed: str, specifier: str) -> str | None:
    """Why ``installed`` does not satisfy ``specifier`` (``">=3.0,<4"``), or ``None``
    when it does. Release numbers are compared (pre-release tags are ignored)."""
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        found = re.match(r"(>=|<=|==|!=|>|<)\s*(\S+)$", clause)
        if found is None:
            continue  # ~= and arbitrary clauses: not checked here, pip checked them
        op, wanted = found.groups()
        a, b = _padded(_release(installed), _release(wanted))
        if not _COMPARE[op](a, b):
            return f"{installed} does not satisfy {clause}"
    return None


def requirements() -> list[tuple[str, str]]:
    """Our installed distribution's unconditional requirements as ``(name,
    specifier)`` (extras are left out: they are optional)."""
    found: list[tuple[str, str]] = []
    for line in metadata.requires(DISTRIBUTION) or []:
        match = _REQUIREMENT.match(line)
        if match is None or match.group(3):  # an environment marker: an extra's requirement
            continue
        found.append((match.group(1), match.group(2).strip()))
    return found


def _driver_line(provider: str) -> str:
    if provider == "sqlite":
        return f"sqlite3 {sqlite3.sqlite_version} (built in: the sqlite store)"
    installed = [
        f"{name} {version}"
        for name in STORE_DRIVERS[provider]
        if (version := distribution_version(name))
    ]
    if not installed:
        return f"not installed (pip install '{DISTRIBUTION}[{provider}]')"
    return ", ".join(installed)


def version_lines() -> list[tuple[str, str]]:
    """``(component, version)`` rows for ``dcm-service --version``: this package,
    Python, the DICOM/NIfTI libraries, the dcm2niix binary and each store driver."""
    rows = [
        (DISTRIBUTION, distribution_version(DISTRIBUTION) or "unknown (not installed)"),
        ("python", f"{platform.python_version()} ({platform.python_implementation()})"),
    ]
    rows += [(n, distribution_version(n) or "not installed") for n in REPORTED_LIBRARIES]
    info = dcm2niix_info()
    if info.version:
        rows.append(("dcm2niix", f"{info.version} ({info.path})"))
    else:
        rows.append(("dcm2niix", f"unusable: {info.error}"))
    rows += [(f"store driver {p}", _driver_line(p)) for p in ("sqlite", *STORE_DRIVERS)]
    return rows
