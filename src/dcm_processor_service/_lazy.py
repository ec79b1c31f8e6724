"""Lazy attributes for a package ``__init__`` (PEP 562).

Heavy modules (numpy, pydicom, highdicom, pynetdicom) are imported when one of their
names is first used, not when the package is imported: every job process imports the
package, and most jobs need only a part of it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, where: Mapping[str, str], namespace: dict[str, Any], owner: str | None = None
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` (or for module ``owner`` of it): name
    ``n`` is imported from submodule ``where[n]`` of ``package`` on first access and
    cached in ``namespace`` (the module's globals)."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {owner or package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
