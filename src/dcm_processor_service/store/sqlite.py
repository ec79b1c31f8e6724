"""The ``sqlite`` provider: the embedded default store.

One SQLite database in WAL mode plus a blob directory beside it (``<db>.blobs``).
Zero set-up, one machine, many processes: each process (and thread) has its own
connection; writers take the database lock up front (``BEGIN IMMEDIATE``) so lock
upgrades never deadlock, a busy timeout waits for the lock, and a locked database is
retried by the shared store logic — callers never see "database is locked".

URL forms: ``sqlite:///abs/path/store.db``, ``sqlite://relative/store.db``, a plain file
path, or a directory (the database is then ``<dir>/<name>.sqlite3``, ``name`` defaulting
to ``dcm-processor``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .._errors import StorageError, StoreUnavailableError
from .address import DEFAULT_SQLITE_NAME, sqlite_location
from .blobs import DirectoryBlobStore
from .file_modes import private_file
from .sql import SCHEMA_VERSION, SQLStore, Tx

__all__ = ["SQLiteStore", "sqlite_path"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def sqlite_path(url: str, name: str | None = None) -> Path:
    """The database file a ``sqlite`` URL (and database name) designates: the URL read
    by :func:`~dcm_processor_service.store.address.sqlite_location`; a folder holds
    ``<name>.sqlite3``."""
    path, is_folder = sqlite_location(url)
    if is_folder or path.is_dir():
        path = path / f"{name or DEFAULT_SQLITE_NAME}.sqlite3"
    return path


class _SQLiteTx(Tx):
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        return self._conn.execute(sql, tuple(params)).rowcount

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self._conn.execute(sql, tuple(params))
        cols = [c[0] for c in cur.description or ()]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]


class SQLiteStore(SQLStore):
    """Embedded store: SQLite (WAL) + a blob directory beside the database."""

    provider = "sqlite"
    blobs: DirectoryBlobStore

    def __init__(self, url: str, name: str | None = None, *, fsync: bool = True) -> None:
        self.path = sqlite_path(url, name)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot create the folder of sqlite store {self.path}: {exc.strerror or exc}"
            ) from exc
        try:
            private_file(self.path)  # owner-only: -wal and -shm inherit its mode
        except OSError as exc:
            raise StoreUnavailableError(
                f"cannot create {self.describe()}: {exc.strerror or exc}"
            ) from exc
        self.blobs = DirectoryBlobStore(self.path.with_name(self.path.name + ".blobs"), fsync=fsync)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._ensure_schema()

    def describe(self) -> str:
        return f"sqlite store {self.path}"

    # ------------------------------------------------------------ connections
    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError(f"{self.describe()} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        try:
            conn = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout = 60000")
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                self._retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"))
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            raise StoreUnavailableError(f"cannot open {self.describe()}: {exc}") from exc
        self._local.conn, self._local.pid = conn, os.getpid()
        with self._lock:
            self._connections.append(conn)
        return conn

    @staticmethod
    def _retry_locked(action: Any, attempts: int = 200) -> None:
        import time

        for attempt in range(attempts):
            try:
                action()
                return
            except sqlite3.OperationalError as exc:
                if ("locked" not in str(exc) and "busy" not in str(exc)) or attempt == attempts - 1:
                    raise
                time.sleep(0.01)

    @contextlib.contextmanager
    def _transaction(self, write: bool, single: bool = False) -> Iterator[Tx]:
        conn = self._connection()
        if single:  # autocommit: the one statement is its own transaction
            yield _SQLiteTx(conn)
            return
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield _SQLiteTx(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _run_durable(self, work: Callable[[Tx], T]) -> T:
        # WAL with synchronous=NORMAL survives a crash of the process, not of the
        # machine; a group commit is worth the one WAL fsync of synchronous=FULL
        conn = self._connection()
        conn.execute("PRAGMA synchronous = FULL")
        try:
            return self._run(work)
        finally:
            conn.execute("PRAGMA synchronous = NORMAL")

    def _is_transient(self, exc: BaseException) -> bool:
        text = str(exc).lower()
        return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)

    def _translate(self, exc: BaseException) -> StorageError:
        if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
            return StoreUnavailableError(f"cannot open {self.describe()}: {exc}")
        return StorageError(f"{self.describe()}: {type(exc).__name__}: {exc}")

    # -------------------------------------------------------------- lifecycle
    def _ensure_schema(self) -> int:
        """Create or upgrade the schema - under the write lock only when it is not
        current (the common case is one read)."""
        try:
            row = self._run(
                lambda tx: tx.one("SELECT version FROM schema_version WHERE component = 'core'"),
                write=False,
            )
        except StorageError:  # no schema_version table yet
            row = None
        if row is not None and int(row["version"]) == SCHEMA_VERSION:
            return SCHEMA_VERSION
        return self._run(self._apply_schema)

    def migrate(self) -> int:
        version = self._ensure_schema()
        self.collect_garbage()
        return version

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()
        self._closed = True
