"""The store of the running job, opened lazily from the runtime context.

Nothing is opened at import time. The store is cached per (provider, url, name) and
per process, so a job that calls the session helpers a thousand times opens one
connection, and a forked child never reuses its parent's connection.
"""

from __future__ import annotations

import os
import threading

from ._context import RuntimeContext, current_context
from .store.address import StoreAddress
from .store.base import Store

__all__ = ["close_stores", "store_for"]

_cache: dict[tuple[int, str, str, str | None], Store] = {}
_lock = threading.Lock()


def store_for(ctx: RuntimeContext | None = None) -> Store:
    """The store named by ``ctx`` (default: the current context).

    Raises :class:`MissingContextError` naming ``DCM-PROCESSOR-SERVICE-DB-PROVIDER`` or
    ``...-DB-URL`` when they are not set.
    """
    ctx = ctx or current_context()
    provider = ctx.require("db_provider")
    url = ctx.require("db_url")
    key = (os.getpid(), provider, url, ctx.db_name)
    with _lock:
        store = _cache.get(key)
        if store is None:
            store = StoreAddress.from_options(provider, url, ctx.db_name).open()
            _cache[key] = store
        return store


def close_stores() -> None:
    """Close every cached store of this process (tests and the runner use it)."""
    with _lock:
        for key, store in list(_cache.items()):
            if key[0] == os.getpid():
                store.close()
        _cache.clear()
