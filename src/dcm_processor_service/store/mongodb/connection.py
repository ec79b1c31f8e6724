"""The connection half of the MongoDB store: one client per process, retries of
transient failures, and driver errors translated into the package's error tree.

Server selection times out after :data:`DEFAULT_SERVER_SELECTION_TIMEOUT_MS` unless the
URL sets ``serverSelectionTimeoutMS``; an unreachable server raises
:class:`~dcm_processor_service.StoreUnavailableError` naming host, port and database,
never the password.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import bson.errors
import pymongo
import pymongo.errors

from ..._errors import (
    ConflictError,
    DcmProcessorError,
    InvalidInputError,
    StorageError,
    StoreUnavailableError,
)
from ..base import Store
from .url import MongoURL

__all__ = ["DEFAULT_DB_NAME", "DEFAULT_SERVER_SELECTION_TIMEOUT_MS", "MongoConnection"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Database used when neither the ``name`` argument nor the URL names one.
DEFAULT_DB_NAME = "dcm-processor"
#: How long to look for a server before failing (pymongo's own default is 30 s).
DEFAULT_SERVER_SELECTION_TIMEOUT_MS = 5000


class MongoConnection(Store):
    """Client handling shared by the parts of :class:`~.store.MongoStore`."""

    provider = "mongodb"
    #: how many times an operation is retried after a dropped connection / failover
    max_attempts = 5
    #: how many times an upsert that lost a unique-index race is retried
    max_upsert_attempts = 10

    def __init__(self, url: str, name: str | None = None) -> None:
        self.url = MongoURL(url)
        self.db_name = name or self.url.database or DEFAULT_DB_NAME
        #: ``platform`` (default) or ``exclusive`` (URL option ``layout``)
        self.layout = self.url.layout
        self._client: Any = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._closed = False

    def describe(self) -> str:
        where = self.url.host_list()
        if self.url.scheme == "mongodb+srv":
            where = f"mongodb+srv://{where}"
        return f"mongodb store {self.db_name!r} at {where}"

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments given to :class:`pymongo.MongoClient` besides the URL
        (URL options win: a short server-selection timeout only when the URL sets none)."""
        options: dict[str, Any] = {
            "tz_aware": True,
            "connect": False,
            "appname": "dcm-processor-service",
        }
        if "serverselectiontimeoutms" not in self.url.options:
            options["serverSelectionTimeoutMS"] = DEFAULT_SERVER_SELECTION_TIMEOUT_MS
        if "connecttimeoutms" not in self.url.options:
            options["connectTimeoutMS"] = DEFAULT_SERVER_SELECTION_TIMEOUT_MS
        return options

    def _db(self) -> Any:
        """The database handle of this process (a forked child opens its own client)."""
        if self._closed:
            raise StorageError(f"{self.describe()} is closed")
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = self._connect()
                self._pid = os.getpid()
            return self._client[self.db_name]

    def _connect(self) -> Any:
        """A new client (tests override this to use an in-process fake)."""
        try:
            return pymongo.MongoClient(self.url.driver_url(), **self.client_options())
        except (pymongo.errors.InvalidURI, ValueError, TypeError) as exc:
            # ``from None``: the driver's error may quote the URL with its password
            raise InvalidInputError(
                f"invalid mongodb store 'url' value {self.url.redact(self.url.url)!r} - "
                f"{self.url.redact(str(exc))}"
            ) from None
        except pymongo.errors.ConfigurationError as exc:
            raise StoreUnavailableError(
                f"cannot open {self.describe()}: {self.url.redact(str(exc))}"
            ) from None

    @property
    def database(self) -> Any:
        """The underlying :class:`pymongo.database.Database` (for inspection and admin)."""
        return self._db()

    def close(self) -> None:
        with self._lock:
            if self._client is not None and self._pid == os.getpid():
                self._client.close()
            self._client = None
            self._closed = True

    def _translate(self, exc: BaseException) -> StorageError:
        """A package error for a driver error (messages never include the password)."""
        text = self.url.redact(str(exc))
        if isinstance(exc, pymongo.errors.ServerSelectionTimeoutError):
            reason = text.split(", Timeout:")[0]
            timeout = self.url.options.get(
                "serverselectiontimeoutms", str(DEFAULT_SERVER_SELECTION_TIMEOUT_MS)
            )
            return StoreUnavailableError(
                f"cannot reach {self.describe()}: no server answered within {timeout} ms "
                f"({reason}) - check that MongoDB runs there and the URL's host and port; "
                "a slow network may need a larger serverSelectionTimeoutMS in the URL"
            )
        if isinstance(exc, pymongo.errors.ConnectionFailure):
            return StoreUnavailableError(f"lost the connection to {self.describe()}: {text}")
        if isinstance(exc, pymongo.errors.ConfigurationError):  # e.g. SRV record not found
            return StoreUnavailableError(f"cannot open {self.describe()}: {text}")
        if isinstance(exc, pymongo.errors.OperationFailure) and exc.code in (13, 18):
            user = f"user {self.url.username!r}" if self.url.username else "no user"
            return StoreUnavailableError(
                f"{self.describe()} refused access ({user}; password not shown): {text}"
            )
        return StorageError(f"{self.describe()}: {type(exc).__name__}: {text}")

    def _run(self, work: Callable[[Any], T], *, retry: bool = True) -> T:
        """Run ``work(db)``; retry a dropped connection / primary change (``retry``), and
        translate driver errors into the package's error tree."""
        delay = 0.05
        attempts = self.max_attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                return work(self._db())
            except DcmProcessorError:
                raise
            except pymongo.errors.ServerSelectionTimeoutError as exc:
                raise self._translate(exc) from exc
            except pymongo.errors.AutoReconnect as exc:
                if attempt == attempts:
                    raise self._translate(exc) from exc
                logger.debug("%s: transient error (attempt %d): %s", self.describe(), attempt, exc)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except pymongo.errors.PyMongoError as exc:
                raise self._translate(exc) from exc
            except (bson.errors.InvalidDocument, OverflowError) as exc:
                raise StorageError(
                    f"{self.describe()}: value cannot be stored as BSON: {exc}"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _converging(self, what: str, work: Callable[[Any], T]) -> T:
        """Run ``work(db)``, repeating it when it lost a unique-key race to a concurrent
        writer (``DuplicateKeyError``, only possible in layout ``exclusive``): the second
        time it finds the winner's document and updates it."""

        def attempt(db: Any) -> T:
            for n in range(1, self.max_upsert_attempts + 1):
                try:
                    return work(db)
                except pymongo.errors.DuplicateKeyError as exc:
                    if n == self.max_upsert_attempts:
                        raise ConflictError(
                            f"{self.describe()}: {what} kept colliding with a unique key "
                            f"({self.url.redact(str(exc))})"
                        ) from exc
                    time.sleep(0.001 * n)
            raise AssertionError("unreachable")  # pragma: no cover

        return self._run(attempt)
