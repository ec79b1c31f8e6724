"""The ``postgresql`` provider: one shared, transactional store for many workers.

Many workers on many hosts run jobs of the same sessions at once; they share one
PostgreSQL database. The SQL itself is the shared :mod:`.sql` logic; this module is the
dialect: URL parsing, a small per-process connection pool, transactions, which errors
are retried, clear errors when the server cannot be used, and the blob store.

URL forms (``name``, when given, is the database name and overrides the URL's)::

    postgresql://user:password@host:5432/dbname
    postgres://user@host/dbname?sslmode=require        (any libpq parameter)
    host=db.example user=dcm dbname=dcm                 (libpq keyword form)

Options of this package, given as URL query parameters (removed before connecting):
``blob_dir=/shared/dir`` keeps file bytes in a shared directory instead of the database;
``pool_min``/``pool_max`` (default 1/4 connections per process), ``pool_timeout``
(seconds to wait for a connection, default 15). Unset parts fall back to libpq's
environment variables (``PGHOST``, ``PGUSER``, ``PGPASSWORD``, ...) and ``~/.pgpass``;
a database name from nowhere defaults to ``dcm-processor``. The database itself must
exist (``createdb``); the tables are created on first use.

Transactions are ``REPEATABLE READ``: a unit of work that races a concurrent writer of
the same row fails with a serialization error and is retried as a whole by
:meth:`SQLStore._run` (with backoff), so it never acts on a stale read. Upserts
(``INSERT ... ON CONFLICT``) make concurrent writers of one key converge: the last
commit wins, no duplicate row, no unique violation reaches the caller. A dropped
connection (server restart, admin shutdown, network) is retried the same way - every
unit of work of the shared SQL is idempotent. A unit that is one statement (a read, a
session-data upsert) runs in autocommit mode instead: the statement is its own
transaction, and it costs one round trip instead of three (``BEGIN``, it, ``COMMIT``).

The pool is created lazily in each process that uses the store (a forked child opens
its own; it never touches its parent's sockets). A thread keeps the connection of its
last unit of work for its next one (:mod:`.pg_pins`), and each connection keeps one
cursor for all of them: a short statement then costs little more Python time than in a
hand-written psycopg loop. The schema is created/upgraded on first
use under ``pg_advisory_xact_lock``, so workers starting together do not race on DDL.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from .._errors import (
    ConflictError,
    InvalidInputError,
    StorageError,
    StoreUnavailableError,
)
from .._safe_text import mask_secrets, register_secret
from .blobs import DirectoryBlobStore
from .garbage import GarbageReport
from .pg_pins import ThreadPins
from .postgresql_blobs import BLOB_SCHEMA, PostgresBlobStore
from .sql import SCHEMA_VERSION, SQLStore, Tx
from .sql.record_blobs import BLOB_TABLES
from .sql.schema import apply_versions

__all__ = ["PgSettings", "PostgreSQLStore", "parse_url"]

logger = logging.getLogger(__name__)

DEFAULT_DB_NAME = "dcm-processor"
#: ``pg_advisory_xact_lock`` key serialising schema migrations (b"dcmpsch" as an int)
MIGRATION_LOCK_ID = 0x64636D70736368
#: SQLSTATEs worth retrying besides serialization failure / deadlock: connection
#: exceptions (08xxx), admin/crash shutdown, server starting up, too many connections
_TRANSIENT_STATES = ("57P01", "57P02", "57P03", "53300", "55P03")
_OWN_OPTIONS = ("blob_dir", "pool_min", "pool_max", "pool_timeout")
#: the status of a result with rows
_TUPLES = pq.ExecStatus.TUPLES_OK
_BEGIN_WRITE = "BEGIN ISOLATION LEVEL REPEATABLE READ"
_BEGIN_READ = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
#: ``schema_version.component`` of the blob tables
_BLOB_COMPONENT = "postgresql-blobs"

# Pools inherited from a parent process: kept referenced (never used, never closed) so
# that nothing in the child ever writes to the parent's sockets.
_inherited_pools: list[ConnectionPool[Any]] = []


@dataclass(frozen=True)
class PgSettings:
    """Parsed connection settings (``password`` is never shown in messages)."""

    params: dict[str, Any] = field(repr=False)
    host: str
    port: str
    dbname: str
    user: str
    password: str | None = field(default=None, repr=False)
    blob_dir: str | None = None
    pool_min: int = 1
    pool_max: int = 4
    pool_timeout: float = 15.0

    @property
    def conninfo(self) -> str:
        """The libpq connection string (contains the password: never log it)."""
        return make_conninfo(**self.params)

    def where(self) -> str:
        """``host:port, database 'x', user 'y'`` for messages."""
        return f"{self.host}:{self.port}, database {self.dbname!r}, user {self.user!r}"


def _int_option(options: dict[str, str], key: str, default: int, url: str) -> int:
    try:
        value = int(options.get(key, default))
    except ValueError:
        value = -1
    if value < 0 or (key == "pool_max" and value < 1):
        raise InvalidInputError(
            f"invalid {key}={options.get(key)!r} in PostgreSQL URL {mask_secrets(url)!r} - "
            "must be a whole number (pool_max at least 1)"
        )
    return value


def parse_url(url: str, name: str | None = None) -> PgSettings:
    """Parse a ``postgresql://`` URL or libpq keyword string (plus database ``name``)."""
    if not url or not url.strip():
        raise InvalidInputError(
            "postgresql store URL is empty - give postgresql://user:password@host:port/dbname"
        )
    url = url.strip()
    options: dict[str, str] = {}
    libpq_url = url
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        kept = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key in _OWN_OPTIONS:
                options[key] = value
            else:
                kept.append((key, value))
        libpq_url = urlunsplit(parts._replace(query=urlencode(kept)))
    elif "=" not in url:
        raise InvalidInputError(
            f"postgresql store URL {mask_secrets(url)!r} is neither a postgresql:// URL nor a libpq "
            "'key=value' string - give postgresql://user:password@host:port/dbname"
        )
    try:
        params = conninfo_to_dict(libpq_url)
    except psycopg.ProgrammingError as exc:
        raise InvalidInputError(
            f"invalid PostgreSQL URL {mask_secrets(url)!r}: {str(exc).strip()} - expected "
            "postgresql://user:password@host:port/dbname"
        ) from None
    for port in str(params.get("port") or "5432").split(","):
        if not port.strip().isdigit() or not 0 < int(port) < 65536:
            raise InvalidInputError(
                f"invalid PostgreSQL URL {mask_secrets(url)!r}: port {port!r} is not a number "
                "between 1 and 65535"
            )
    if name:
        params["dbname"] = name
    params.setdefault("dbname", os.environ.get("PGDATABASE") or DEFAULT_DB_NAME)
    params.setdefault("application_name", "dcm-processor-service")
    params.setdefault("connect_timeout", "10")
    try:
        default_user = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        default_user = "postgres"
    pool_min = _int_option(options, "pool_min", 1, url)
    pool_max = _int_option(options, "pool_max", 4, url)
    try:
        pool_timeout = float(options.get("pool_timeout", 15.0))
    except ValueError:
        raise InvalidInputError(
            f"invalid pool_timeout={options['pool_timeout']!r} in PostgreSQL URL "
            f"{mask_secrets(url)!r} - must be a number of seconds"
        ) from None
    return PgSettings(
        params=params,
        host=str(
            params.get("host") or params.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
        ),
        port=str(params.get("port") or os.environ.get("PGPORT") or "5432"),
        dbname=str(params["dbname"]),
        user=str(params.get("user") or os.environ.get("PGUSER") or default_user),
        password=str(params.get("password") or os.environ.get("PGPASSWORD") or "") or None,
        blob_dir=options.get("blob_dir") or None,
        pool_min=min(pool_min, pool_max),
        pool_max=pool_max,
        pool_timeout=pool_timeout,
    )


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """``?`` placeholders -> ``%s`` (a literal ``%`` is escaped). The shared SQL never
    has ``?`` or ``%`` inside string literals."""
    return sql.replace("%", "%%").replace("?", "%s")


class _StoreConnection(psycopg.Connection[Any]):
    """A pooled connection that keeps the cursor its units of work run on: one cursor
    per connection, made once, instead of one per unit of work (a new cursor costs
    about as much Python time as a short statement's round trip)."""

    tx_cursor: psycopg.Cursor[dict[str, Any]] | None = None

    def shared_cursor(self) -> psycopg.Cursor[dict[str, Any]]:
        """The connection's cursor for :class:`_PgTx` (binary results, rows as dicts)."""
        cursor = self.tx_cursor
        if cursor is None or cursor.closed:
            cursor = self.tx_cursor = self.cursor(binary=True, row_factory=dict_row)
        return cursor


class _PgTx(Tx):
    """A transaction on one connection: ``?`` placeholders, rows as dicts, binary
    results (``bytea`` without hex encoding).

    With ``begin``, the transaction is opened lazily: the ``BEGIN`` is pipelined with the
    first statement (one network round trip instead of two); ``begun`` tells the caller
    whether there is anything to commit."""

    def __init__(self, conn: psycopg.Connection[Any], begin: str | None = None) -> None:
        self._conn = conn
        if isinstance(conn, _StoreConnection):
            self._cur = conn.shared_cursor()
        else:
            self._cur = conn.cursor(binary=True, row_factory=dict_row)
        self._begin = begin
        self.begun = begin is None

    def _exec(self, sql: str, params: Sequence[Any]) -> None:
        query = _pg_sql(sql) if params else sql
        args = tuple(params) if params else None
        if self.begun:
            self._cur.execute(query, args)
            return
        self.begun = True
        with self._conn.pipeline():
            self._conn.execute(self._begin)  # type: ignore[arg-type]
            self._cur.execute(query, args)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._exec(sql, params)
        return self._cur.rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self._exec(sql, params)
        # the result's status, not ``description`` (which builds column objects)
        result = self._cur.pgresult
        return self._cur.fetchall() if result is not None and result.status == _TUPLES else []


def _is_connection_error(exc: BaseException) -> bool:
    if not isinstance(exc, psycopg.OperationalError):
        return False
    state = exc.sqlstate
    return state is None or state.startswith("08") or state in _TRANSIENT_STATES


class PostgreSQLStore(SQLStore):
    """Shared store on PostgreSQL (psycopg 3 + psycopg_pool); files as chunked rows
    (or in a shared directory with ``?blob_dir=``)."""

    provider = "postgresql"
    for_update = " FOR UPDATE"

    def __init__(self, url: str, name: str | None = None) -> None:
        self.settings = parse_url(url, name)
        register_secret(self.settings.password)  # masked wherever it would be shown
        self._pool: ConnectionPool[Any] | None = None
        self._pins: ThreadPins | None = None
        self._pool_pid = 0
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()
        self._closed = False
        if self.settings.blob_dir:
            self.blobs = DirectoryBlobStore(self.settings.blob_dir)
        else:
            self.blobs = PostgresBlobStore(
                self._run,
                self._connect,
                self.describe,
                referenced_by=[(table, "blob_key") for table in BLOB_TABLES],
            )
        self._ensure_schema()

    def describe(self) -> str:
        s = self.settings
        return f"postgresql store {s.user}@{s.host}:{s.port}/{s.dbname}"

    # ------------------------------------------------------------ connections
    def _unavailable(
        self, exc: BaseException | None, action: str = "cannot connect to"
    ) -> StoreUnavailableError:
        """A :class:`StoreUnavailableError` naming host, port, database and user, with
        the server's reason and a hint - never the password."""
        reason = mask_secrets(" ".join(str(exc).split())) if exc is not None else "unknown reason"
        s = self.settings
        low = reason.lower()
        if (
            "password" in low
            or "authentication" in low
            or ("role" in low and "does not exist" in low)
        ):
            hint = "check the user name and password of the store URL (or PGPASSWORD / ~/.pgpass)"
        elif "database" in low and "does not exist" in low:
            hint = f"create it first: createdb -h {s.host} -p {s.port} -U {s.user} {s.dbname}"
        elif (
            "refused" in low or "could not connect" in low or "timeout" in low or "timed out" in low
        ):
            hint = "is the server running and accepting TCP connections on that host and port?"
        else:
            hint = "check the store URL and that the server is up"
        if "is the server running" in low:  # libpq asked that already
            hint = "check the host and port of the store URL and that the server is up"
        return StoreUnavailableError(f"{action} PostgreSQL at {s.where()}: {reason} - {hint}")

    def _connect(self) -> psycopg.Connection[Any]:
        """A new dedicated autocommit connection (not pooled); the caller closes it."""
        try:
            return psycopg.connect(self.settings.conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise self._unavailable(exc) from None

    def _get_pool(self) -> ConnectionPool[Any]:
        pid = os.getpid()
        pool = self._pool
        if pool is not None and self._pool_pid == pid:
            return pool
        if self._lock_pid != pid:  # forked: the parent's lock may have been held
            self._lock, self._lock_pid = threading.Lock(), pid
        with self._lock:
            if self._closed:
                raise StorageError(f"{self.describe()} is closed")
            if self._pool is not None and self._pool_pid == pid:
                return self._pool
            if self._pool is not None:
                _inherited_pools.append(self._pool)
            s = self.settings
            pool = ConnectionPool(
                s.conninfo,
                connection_class=_StoreConnection,
                kwargs={"autocommit": True},
                min_size=s.pool_min,
                max_size=s.pool_max,
                timeout=s.pool_timeout,
                open=False,
                name=f"dcm-store-{s.dbname}-{pid}",
            )
            pool.open(wait=False)
            self._pool, self._pool_pid = pool, pid
            self._pins = ThreadPins(pool, s.pool_max // 2) if s.pool_max > 1 else None
            logger.debug(
                "%s: opened a pool of %d-%d connections", self.describe(), s.pool_min, s.pool_max
            )
            return pool

    def _getconn(self, pool: ConnectionPool[Any]) -> psycopg.Connection[Any]:
        """A connection from ``pool``; clear errors when there is none."""
        try:
            return pool.getconn()
        except PoolTimeout as exc:
            # the pool waited pool_timeout for a connection: diagnose with a direct attempt
            try:
                self._connect().close()
            except StoreUnavailableError as unavailable:
                raise unavailable from exc
            raise StoreUnavailableError(
                f"no connection to PostgreSQL at {self.settings.where()} within "
                f"{self.settings.pool_timeout:g}s (pool of {self.settings.pool_max} busy) - "
                "raise pool_max / pool_timeout in the store URL"
            ) from exc
        except PoolClosed as exc:
            raise StorageError(f"{self.describe()} is closed") from exc

    @contextlib.contextmanager
    def _transaction(self, write: bool, single: bool = False) -> Iterator[Tx]:
        pool = self._get_pool()
        pins = self._pins
        # this thread's pinned connection (see pg_pins), else one from the pool
        conn = pins.take() if pins is not None else None
        pinned = conn is not None
        if conn is None:
            conn = self._getconn(pool)
            pinned = pins is not None and pins.keep(conn)
        healthy = True
        try:
            # single: one statement in autocommit mode (its own transaction, one round trip)
            tx = _PgTx(conn, None if single else _BEGIN_WRITE if write else _BEGIN_READ)
            try:
                yield tx
            except BaseException:
                if tx.begun and not single and not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                raise
            if tx.begun and not single:
                conn.execute("COMMIT")
        except psycopg.Error as exc:
            if conn.broken or _is_connection_error(exc):
                # the server went away: the other idle connections are probably dead too
                healthy = False
                self._give_back(pool, pins, conn, pinned, healthy)
                conn = None
                with contextlib.suppress(Exception):
                    pool.check()
            raise
        finally:
            if conn is not None:
                self._give_back(pool, pins, conn, pinned, healthy)

    @staticmethod
    def _give_back(
        pool: ConnectionPool[Any],
        pins: ThreadPins | None,
        conn: psycopg.Connection[Any],
        pinned: bool,
        healthy: bool,
    ) -> None:
        """End a unit of work on ``conn``: a pinned connection stays with its thread
        (unless the unit had a connection error), another goes back to the pool."""
        if pinned and pins is not None:
            pins.done(conn, healthy=healthy)
        else:
            pool.putconn(conn)

    def _is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)):
            return True
        return _is_connection_error(exc)

    def _translate(self, exc: BaseException) -> StorageError:
        if _is_connection_error(exc):
            return self._unavailable(exc, "lost the connection (retries failed) to")
        if isinstance(exc, psycopg.IntegrityError):
            return ConflictError(f"{self.describe()}: {mask_secrets(str(exc).strip())}")
        if isinstance(exc, pg_errors.UndefinedTable):
            return StorageError(
                f"{self.describe()}: {mask_secrets(str(exc).strip())} - the schema is missing; "
                "run migrate() (or open the store again)"
            )
        return StorageError(
            f"{self.describe()}: {type(exc).__name__}: {mask_secrets(str(exc).strip())}"
        )

    # -------------------------------------------------------------- lifecycle
    def _schema_current(self, conn: psycopg.Connection[Any]) -> bool:
        try:
            rows = conn.execute("SELECT component, version FROM schema_version").fetchall()
        except pg_errors.UndefinedTable:
            return False
        versions = {r[0]: r[1] for r in rows}
        return versions.get("core") == SCHEMA_VERSION and (
            self.settings.blob_dir is not None
            or versions.get(_BLOB_COMPONENT) == BLOB_SCHEMA[-1][0]
        )

    def _migrate(self, *, force: bool) -> int:
        """Create/upgrade the schema on a dedicated connection (READ COMMITTED, under
        the advisory lock)."""
        attempts = 5
        for attempt in range(1, attempts + 1):
            conn = self._connect()
            try:
                if not force and self._schema_current(conn):
                    version = SCHEMA_VERSION  # the common case: no lock, no DDL
                else:
                    with conn.transaction():
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
                        tx = _PgTx(conn)
                        version = self._apply_schema(tx)
                        if not self.settings.blob_dir:
                            self._apply_blob_schema(tx)
                return version
            except StorageError:
                raise
            except psycopg.Error as exc:
                if not self._is_transient(exc) or attempt == attempts:
                    raise self._translate(exc) from exc
                logger.debug("%s: transient error during migration: %s", self.describe(), exc)
            finally:
                conn.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def _apply_blob_schema(self, tx: Tx) -> None:
        apply_versions(tx, _BLOB_COMPONENT, BLOB_SCHEMA, self.describe())

    def _ensure_schema(self) -> None:
        """First use: create or upgrade the schema only when it is not current."""
        self._migrate(force=False)

    def _sweep_dead_writers(self, report: GarbageReport) -> None:
        if isinstance(self.blobs, PostgresBlobStore):  # a partial index: cheap
            self.blobs.collect(self._referenced_keys, report, incomplete_only=True)
        else:
            super()._sweep_dead_writers(report)

    def migrate(self) -> int:
        """Create or upgrade the schema (safe from many processes at once) and collect
        garbage (:meth:`collect_garbage`); return the version."""
        version = self._migrate(force=True)
        self.collect_garbage()
        return version

    def _confirm_blob(self, tx: Tx, key: str) -> None:
        if isinstance(self.blobs, PostgresBlobStore):
            self.blobs.confirm(tx, key)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            pins, self._pins = self._pins, None
            self._closed = True
        if pins is not None and self._pool_pid == os.getpid():
            pins.close()
        if isinstance(self.blobs, PostgresBlobStore):
            self.blobs.leases.close()
        if pool is not None and self._pool_pid == os.getpid():
            pool.close(timeout=5.0)
