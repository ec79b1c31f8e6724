"""The ground the SQL providers (SQLite, PostgreSQL) share: transactions and values.

Both dialects speak the same SQL: ``?`` placeholders (translated by the PostgreSQL
transaction wrapper), ``INSERT ... ON CONFLICT ... DO UPDATE``, ``RETURNING``, JSON kept
as text, timestamps as ISO-8601 UTC text (they sort as strings). A provider supplies
connections and transactions (:meth:`SQLCore._transaction`), which errors are transient
(:meth:`SQLCore._is_transient`), the blob store, and ``FOR UPDATE`` where the dialect
has row locks.

Every unit of work runs through :meth:`SQLCore._run`, which retries the whole unit on a
transient error (a locked SQLite file, a PostgreSQL serialization failure or dropped
connection) so callers never see those.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from ..._errors import StorageError
from ..base import Store
from ..blobs import BlobStore
from ..records import utcnow

__all__ = ["SQLCore", "Tx", "dumps", "new_id", "now_text", "optional_timestamp", "timestamp"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def new_id() -> str:
    """A new record id (32 hex digits)."""
    return uuid.uuid4().hex


def now_text() -> str:
    """The current UTC time as stored: ISO-8601 text."""
    return utcnow().isoformat()


def timestamp(value: str) -> datetime:
    """A stored ISO-8601 timestamp as an aware datetime."""
    return datetime.fromisoformat(value)


def optional_timestamp(value: str | None) -> datetime | None:
    """:func:`timestamp` of a column that may be empty."""
    return datetime.fromisoformat(value) if value else None


def dumps(value: Any) -> str:
    """JSON text as stored: compact, keys sorted, no NaN."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str, allow_nan=False)


class Tx(abc.ABC):
    """A transaction: run SQL with ``?`` placeholders, rows as dicts."""

    @abc.abstractmethod
    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run a statement; return the affected row count."""

    @abc.abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a query; return all rows."""

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        """The first row, or ``None``."""
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def row(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any]:
        """The first row of a query that must return one (a row this transaction has
        just written); :class:`StorageError` if it did not."""
        found = self.one(sql, params)
        if found is None:
            raise StorageError(f"a row written in this transaction is missing: {sql}")
        return found


class SQLCore(Store):
    """Retried units of work over a dialect's :class:`Tx`."""

    #: appended to SELECTs that read a row before changing it (``" FOR UPDATE"``)
    for_update = ""
    #: how many times a unit of work is retried on a transient error
    max_attempts = 30

    blobs: BlobStore

    # --------------------------------------------------------------- dialect
    @abc.abstractmethod
    def _transaction(
        self, write: bool, single: bool = False
    ) -> contextlib.AbstractContextManager[Tx]:
        """A transaction that commits on success and rolls back on error. ``single``:
        the work is one statement, atomic on its own - it runs without ``BEGIN`` and
        ``COMMIT`` (two fewer round trips to a server)."""

    @abc.abstractmethod
    def _is_transient(self, exc: BaseException) -> bool:
        """Whether retrying the unit of work may succeed."""

    @abc.abstractmethod
    def _translate(self, exc: BaseException) -> StorageError:
        """A package error for a driver error that was not transient."""

    def _run_durable(self, work: Callable[[Tx], T]) -> T:
        """:meth:`_run` a write whose commit must survive a crash of the machine when it
        returns (a group commit's records). Server databases commit durably anyway."""
        return self._run(work)

    def _run(self, work: Callable[[Tx], T], *, write: bool = True, single: bool = False) -> T:
        """Run ``work`` in a transaction, retrying transient failures with backoff.
        ``single``: ``work`` runs exactly one statement (see :meth:`_transaction`)."""
        delay = 0.005
        for attempt in range(1, self.max_attempts + 1):
            try:
                with self._transaction(write, single) as tx:
                    return work(tx)
            except StorageError:
                raise
            except Exception as exc:
                if not self._is_transient(exc) or attempt == self.max_attempts:
                    raise self._translate(exc) from exc
                logger.debug("transient store error (attempt %d): %s", attempt, exc)
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        raise AssertionError("unreachable")  # pragma: no cover
