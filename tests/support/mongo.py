"""The ``mongodb`` provider on mongomock, an in-process fake MongoDB server.

No MongoDB server can be installed on the machines these tests run on (Debian has none,
and the PyPI/npm helpers download server binaries at run time), so the provider is
exercised against mongomock. The fake lives in one process: stores (and the platform's
own ``DBManager``) in one test process share it by label, but processes a test spawns
cannot see it — tests that need that skip the provider (``support.stores``).

:class:`MongomockStore` is the real :class:`MongoStore` with only the client replaced;
it is registered as the storage provider ``mongomock`` (test processes only), so the
runtime context (``DCM-PROCESSOR-SERVICE-DB-PROVIDER=mongomock``) and ``open_store``
reach it like any provider. The URL's first host names the fake server.
"""

from __future__ import annotations

import threading
import types
from typing import Any

import mongomock
import mongomock.gridfs

from dcm_processor_service.store.mongodb import MongoStore
from dcm_processor_service.store.registry import ProviderSpec, register_provider

__all__ = ["PROVIDER", "MongomockStore", "drop_database", "mock_client", "register"]

#: The provider name the fake is registered under.
PROVIDER = "mongomock"

_lock = threading.Lock()
_clients: dict[str, Any] = {}


def mock_client(label: str) -> Any:
    """The in-process fake server ``label`` (created on first use).

    GridFS on mongomock needs two patches: mongomock's own
    ``enable_gridfs_integration`` (pymongo's gridfs checks the collection type), and a
    client ``options.timeout`` of ``None`` (pymongo's ``GridFSBucket.delete`` and
    friends read it; mongomock would answer with a collection named "timeout").
    The platform's provider uses GridFSBucket, so its file calls need both.
    """
    with _lock:
        client = _clients.get(label)
        if client is None:
            mongomock.gridfs.enable_gridfs_integration()
            client = mongomock.MongoClient(tz_aware=True)
            client.options = types.SimpleNamespace(timeout=None)
            _clients[label] = client
        return client


def drop_database(label: str, name: str) -> None:
    """Drop database ``name`` of the fake server ``label`` (test clean-up)."""
    with _lock:
        client = _clients.get(label)
    if client is not None:
        client.drop_database(name)


class MongomockStore(MongoStore):
    """``MongoStore`` on the fake server named by the URL's first host."""

    def _connect(self) -> Any:
        return mock_client(self.url.hosts[0])

    def close(self) -> None:  # the fake server is shared: keep it open for the others
        with self._lock:
            self._client = None
            self._closed = True

    def describe(self) -> str:
        return f"{super().describe()} (mongomock, an in-process fake)"


def register() -> None:
    """Make ``open_store("mongomock", "mongodb://<label>/<db>")`` open a
    :class:`MongomockStore` (idempotent)."""
    register_provider(PROVIDER, ProviderSpec("support.mongo", "MongomockStore"))
