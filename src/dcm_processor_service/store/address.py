"""Where a store is: one frozen ``(provider, url, name)`` value, built one way.

The CLI (from ``--store``/``--db-*``), the runner (from its arguments) and a job (from
its ``DCM-PROCESSOR-SERVICE-DB-*`` environment, through the runtime context) all name a
store by provider, URL and database name. Each builds a :class:`StoreAddress` with
:meth:`StoreAddress.from_options`, so the three agree on:

- **the SQLite path**: a ``sqlite`` URL in any form the provider accepts
  (``sqlite:///abs/x.db``, ``sqlite://rel/x.db``, ``sqlite:rel/x.db``, a plain path,
  ``~/x.db``, a folder) becomes one absolute path; a folder written with a trailing
  separator keeps it. The job processes run in another working directory and still
  reach the same file. How such a URL is read is :func:`sqlite_location`, which the
  ``sqlite`` provider uses too;
- **the SQLite database name**: ``dcm-processor`` when none is given (what the store
  uses anyway; the job processes see it in their environment);
- **secrets**: the URL's password is registered for masking before anything can log it,
  and ``repr()`` shows the URL masked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .._errors import ConfigError, InvalidInputError
from .._safe_text import mask_secrets, register_url_password

if TYPE_CHECKING:
    from .base import Store

__all__ = ["DEFAULT_SQLITE_NAME", "StoreAddress", "is_sqlite", "sqlite_location"]

#: The database name of a ``sqlite`` store when none is given (``<folder>/<name>.sqlite3``).
DEFAULT_SQLITE_NAME = "dcm-processor"

_SQLITE_PREFIXES = ("sqlite:///", "sqlite://", "sqlite:")


def is_sqlite(provider: str | None) -> bool:
    """Whether ``provider`` names the embedded ``sqlite`` provider (the default)."""
    return (provider or "sqlite").strip().lower() == "sqlite"


def sqlite_location(url: str) -> tuple[Path, bool]:
    """The path a ``sqlite`` URL names (``~`` expanded, relative paths left relative),
    and whether it was written as a folder (ends with a separator).

    Raises :class:`InvalidInputError` for an empty URL and for ``:memory:``, which the
    job processes could not share.
    """
    if not url:
        raise InvalidInputError("sqlite store URL is empty - give a file path or sqlite:///path")
    raw = url
    for prefix in _SQLITE_PREFIXES:
        if raw.startswith(prefix):
            raw = ("/" if prefix == "sqlite:///" else "") + raw[len(prefix) :]
            break
    if raw in ("", ":memory:"):
        raise InvalidInputError(
            f"sqlite store URL {url!r} - an in-memory database cannot be shared between the "
            "job processes; give a file path"
        )
    return Path(raw).expanduser(), raw.endswith(("/", os.sep))


@dataclass(frozen=True, repr=False)
class StoreAddress:
    """A store's provider, URL and database name, normalised (see the module doc)."""

    provider: str
    url: str
    name: str | None = None

    @classmethod
    def from_options(
        cls,
        provider: str | None = None,
        url: str | None = None,
        name: str | None = None,
        *,
        folder: str | os.PathLike[str] | None = None,
    ) -> StoreAddress:
        """The address of ``provider`` (default ``sqlite``) at ``url``, database ``name``,
        as options or environment variables give them; without ``url``, the embedded
        SQLite store in ``folder``.

        Raises :class:`ConfigError` when there is no URL and the provider is not
        ``sqlite`` (or there is no folder either), :class:`InvalidInputError` for a
        ``sqlite`` URL that names no file.
        """
        if not url:
            if not is_sqlite(provider):
                raise ConfigError(
                    f"storage provider {provider!r} needs a store URL - give its "
                    "address (e.g. postgresql://user@host/db)"
                )
            if folder is None:
                raise ConfigError("no store given - give a store URL or the store's folder")
            url = os.fspath(folder) + os.sep
        register_url_password(url)  # masked in every message and log line from now on
        provider = provider or "sqlite"
        if is_sqlite(provider):
            path, is_folder = sqlite_location(url)
            url = str(path.resolve()) + (os.sep if is_folder else "")
            if name is None:
                name = DEFAULT_SQLITE_NAME
        return cls(provider, url, name)

    def open(self) -> Store:
        """Open the store (see :func:`~dcm_processor_service.store.registry.open_store`)."""
        from .registry import open_store

        return open_store(self.provider, self.url, self.name)

    def __repr__(self) -> str:
        return (
            f"StoreAddress(provider={self.provider!r}, url={mask_secrets(self.url)!r}, "
            f"name={self.name!r})"
        )
