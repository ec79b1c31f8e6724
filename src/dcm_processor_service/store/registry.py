"""Storage provider registry: provider name -> implementation, by import path.

Like pydicom's decoder plugins, providers are registered as ``(module, class)`` so a
driver (psycopg, pymongo) is imported only when its provider is chosen; a missing driver
names the extra to install, and an unknown provider name lists the known ones.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass

from .._errors import MissingDependencyError, UnknownProviderError
from .._safe_text import mask_secrets
from .base import Store

__all__ = ["ProviderSpec", "known_providers", "open_store", "register_provider"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProviderSpec:
    """Where a provider lives and which extra provides its driver."""

    module: str
    cls: str
    extra: str | None = None


_PROVIDERS: dict[str, ProviderSpec] = {
    "sqlite": ProviderSpec("dcm_processor_service.store.sqlite", "SQLiteStore"),
    "postgresql": ProviderSpec(
        "dcm_processor_service.store.postgresql", "PostgreSQLStore", "postgresql"
    ),
    "mongodb": ProviderSpec("dcm_processor_service.store.mongodb", "MongoStore", "mongodb"),
}
_ALIASES: dict[str, str] = {"mongo": "mongodb", "postgres": "postgresql", "pg": "postgresql"}


def register_provider(name: str, spec: ProviderSpec, *aliases: str) -> None:
    """Register (or replace) a provider under ``name`` and optional aliases."""
    _PROVIDERS[name.lower()] = spec
    for alias in aliases:
        _ALIASES[alias.lower()] = name.lower()


def known_providers() -> list[str]:
    """Registered provider names and aliases, sorted."""
    return sorted({*_PROVIDERS, *_ALIASES})


def _resolve(name: str) -> tuple[str, ProviderSpec]:
    key = (name or "").strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return key, _PROVIDERS[key]
    except KeyError:
        raise UnknownProviderError(
            f"unknown storage provider {name!r} - known providers: {', '.join(known_providers())}"
        ) from None


def open_store(provider: str, url: str, name: str | None = None) -> Store:
    """Create the store for ``provider`` at ``url`` (database ``name``).

    Raises :class:`UnknownProviderError` for an unregistered name and
    :class:`MissingDependencyError` when the provider's driver is not installed.
    """
    key, spec = _resolve(provider)
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if spec.extra and exc.name and not exc.name.startswith("dcm_processor_service"):
            raise MissingDependencyError(
                f"storage provider {key!r} needs the {exc.name!r} package - install it with "
                f"pip install 'dcm-processor-service[{spec.extra}]'"
            ) from exc
        raise
    cls: type[Store] = getattr(module, spec.cls)
    logger.debug("opening %s store at %s", key, mask_secrets(url))
    return cls(url, name)  # type: ignore[call-arg]
