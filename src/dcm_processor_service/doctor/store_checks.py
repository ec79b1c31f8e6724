"""The doctor's checks of the store: reachable, migrated (read, never changed),
writable (a throwaway session, removed again), free space, and the clock of the
database server against ours.

Nothing here creates a store or its schema: a store that does not exist yet is
reported (it is created on first use), and the write probe only runs on a store whose
schema is there. The probe's session, data and file are removed before returning.
"""

from __future__ import annotations

import io
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from .._errors import DcmProcessorError
from .._safe_text import mask_secrets
from ..store.address import StoreAddress, is_sqlite
from ..store.base import JobRef, Store
from ..store.sql.schema import CORE, SCHEMA_VERSION
from .findings import Finding, Status

__all__ = [
    "CLOCK_SKEW_FAIL_S",
    "CLOCK_SKEW_WARN_S",
    "FREE_SPACE_FAIL_BYTES",
    "FREE_SPACE_WARN_BYTES",
    "StoreProbe",
    "provider_kind",
]

#: Free space below which jobs are likely to fail (NIfTI, SEG, exports are written).
FREE_SPACE_FAIL_BYTES = 512 * 1024**2
FREE_SPACE_WARN_BYTES = 5 * 1024**3
#: Clock skew against the database server: timestamps of jobs and leases come from
#: each machine's clock, so workers on several machines must agree.
CLOCK_SKEW_WARN_S = 1.0
CLOCK_SKEW_FAIL_S = 30.0

_MIGRATE_FIX = "run dcm-service db init (with the same store options) to create or upgrade it"


def provider_kind(provider: str) -> str:
    """``sqlite``, ``postgresql`` or ``mongodb`` for a provider name or alias
    (``pg``, ``postgres``, ``mongo``); other names are returned lower-cased."""
    key = provider.strip().lower()
    if is_sqlite(key):
        return "sqlite"
    if key in ("pg", "postgres", "postgresql"):
        return "postgresql"
    if key in ("mongo", "mongodb"):
        return "mongodb"
    return key


def _existing_parent(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _gib(n: float) -> str:
    return f"{n / 1024**3:.2f} GiB"


class StoreProbe:
    """Runs the store checks for one :class:`StoreAddress`; :meth:`run` returns the
    findings, :attr:`store` is the opened store (for the peer checks) or ``None``."""

    def __init__(self, address: StoreAddress, timeout: float = 10.0) -> None:
        self.address = address
        self.kind = provider_kind(address.provider)
        self.timeout = timeout
        self.where = f"{self.kind} store {mask_secrets(address.url)}"
        self.store: Store | None = None
        self._schema_present = False
        self._server_answered = False

    # ------------------------------------------------------------------ driver
    def run(self) -> list[Finding]:
        """All store checks, in order; later ones are skipped when an earlier one says
        they cannot run (an unreachable store is not probed for writes)."""
        findings: list[Finding] = []
        check: Callable[[], list[Finding]]
        for check in (self._schema, self._open, self._writable, self._free_space, self._clock):
            findings += check()
        return findings

    def close(self) -> None:
        """Close the opened store (if any)."""
        if self.store is not None:
            self.store.close()
            self.store = None

    # ------------------------------------------------------------------ schema
    def _schema(self) -> list[Finding]:
        if self.kind == "sqlite":
            return self._sqlite_schema()
        if self.kind == "postgresql":
            return self._postgresql_schema()
        self._schema_present = True  # MongoDB: collections are created on use
        return [
            Finding(
                "store/schema",
                Status.SKIP,
                f"{self.where}: {self.kind} has no schema version to check",
            )
        ]

    def _schema_finding(self, version: int | None) -> Finding:
        details = {"version": version, "expected": SCHEMA_VERSION}
        if version is None:
            return Finding(
                "store/schema",
                Status.WARN,
                f"{self.where} has no schema yet (it is created on first use)",
                _MIGRATE_FIX,
                details,
            )
        self._schema_present = True
        if version > SCHEMA_VERSION:
            return Finding(
                "store/schema",
                Status.FAIL,
                f"{self.where}: schema version {version} is newer than this package "
                f"supports ({SCHEMA_VERSION}) - a newer dcm-processor-service wrote it",
                "upgrade this package on this node: pip install --upgrade dcm-processor-service",
                details,
            )
        if version < SCHEMA_VERSION:
            return Finding(
                "store/schema",
                Status.WARN,
                f"{self.where}: schema version {version}, this package's is {SCHEMA_VERSION} "
                "(it is upgraded on first use)",
                _MIGRATE_FIX,
                details,
            )
        return Finding(
            "store/schema",
            Status.OK,
            f"{self.where}: schema version {version} (current)",
            details=details,
        )

    def _sqlite_path(self) -> Path:
        from ..store.sqlite import sqlite_path

        return sqlite_path(self.address.url, self.address.name)

    def _sqlite_schema(self) -> list[Finding]:
        path = self._sqlite_path()
        if not path.is_file():
            parent = _existing_parent(path.parent)
            if not os.access(parent, os.W_OK | os.X_OK):
                return [
                    Finding(
                        "store/schema",
                        Status.FAIL,
                        f"{self.where}: {path} does not exist and {parent} is not writable",
                        f"give a --store folder this user can write, or fix the permissions of {parent}",
                        {"path": str(path)},
                    )
                ]
            return [self._schema_finding(None)]
        try:
            uri = f"file:{path}?mode=ro"
            with closing(sqlite3.connect(uri, uri=True, timeout=self.timeout)) as conn:
                row = conn.execute(
                    "SELECT version FROM schema_version WHERE component = ?", (CORE,)
                ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return [self._schema_finding(None)]
            return [
                Finding(
                    "store/schema",
                    Status.FAIL,
                    f"{self.where}: cannot read {path}: {exc}",
                    f"check that {path} is a dcm-service store this user can read",
                )
            ]
        except sqlite3.DatabaseError as exc:
            return [
                Finding(
                    "store/schema",
                    Status.FAIL,
                    f"{self.where}: {path} is not a database: {exc}",
                    f"move {path} away (it is not a store) or point --store elsewhere",
                )
            ]
        return [self._schema_finding(int(row[0]) if row else None)]

    def _pg_connect(self) -> Any:
        import psycopg

        from ..store.postgresql import parse_url

        settings = parse_url(self.address.url, self.address.name)
        return psycopg.connect(settings.conninfo, connect_timeout=max(1, int(self.timeout)))

    def _postgresql_schema(self) -> list[Finding]:
        try:
            import psycopg
        except ImportError:
            return []  # the import check reports the missing driver
        try:
            with closing(self._pg_connect()) as conn:
                try:
                    row = conn.execute(
                        "SELECT version FROM schema_version WHERE component = %s", (CORE,)
                    ).fetchone()
                except psycopg.errors.UndefinedTable:
                    row = None
                self._server_answered = True
        except psycopg.Error as exc:
            return [self._unreachable(exc)]
        except DcmProcessorError as exc:  # a malformed URL
            return [self._unreachable(exc)]
        return [self._schema_finding(int(row[0]) if row else None)]

    def _unreachable(self, exc: BaseException) -> Finding:
        text = mask_secrets(" ".join(str(exc).split()))
        if self.kind == "postgresql":
            fix = (
                "check that the PostgreSQL server is running and listening on the URL's host "
                "and port, that the user, password (or PGPASSWORD) and database are right, "
                "and that pg_hba.conf admits this host"
            )
        elif self.kind == "mongodb":
            fix = "check that the MongoDB server is running and that the URL (host, port, credentials) is right"
        else:
            fix = "check the store options (--store, --db-provider, --db-url) and the file's permissions"
        return Finding(
            "store/reachable", Status.FAIL, f"{self.where} is not reachable: {text}", fix
        )

    # ------------------------------------------------------------------ open
    def _open(self) -> list[Finding]:
        if self.kind == "sqlite" and not self._sqlite_path().is_file():
            return [
                Finding(
                    "store/reachable",
                    Status.SKIP,
                    f"{self.where} does not exist yet - nothing to open",
                )
            ]
        if not self._schema_present and self.kind == "postgresql":
            if not self._server_answered:
                return []  # the schema check reported it unreachable
            return [
                Finding(
                    "store/reachable",
                    Status.OK,
                    f"{self.where} answers (not opened further: it has no schema yet, "
                    "and the doctor leaves it unchanged)",
                )
            ]
        started = time.perf_counter()
        try:
            store = self.address.open()
            store.list_peers()  # a round trip: opening alone may connect lazily
        except Exception as exc:  # a driver may raise anything on connect
            return [self._unreachable(exc)]
        self.store = store
        elapsed = time.perf_counter() - started
        return [
            Finding(
                "store/reachable",
                Status.OK,
                f"{store.describe()} answers ({elapsed * 1000:.0f} ms)",
                details={"elapsed_s": round(elapsed, 4)},
            )
        ]

    def _writable(self) -> list[Finding]:
        if self.store is None or not self._schema_present:
            return []
        session_id = f"dcm-service-doctor-{uuid.uuid4().hex}"
        store = self.store
        try:
            store.ensure_session(session_id, meta={"purpose": "dcm-service doctor write probe"})
            try:
                job = store.create_job(session_id, "doctor-probe", "stable-series")
                owner = JobRef(session_id, job.id, job.name, job.event)
                store.set_data(owner, "probe", '"ok"')
                record = store.put_file(
                    owner, "probe.txt", io.BytesIO(b"doctor probe\n"), content_type="text/plain"
                )
                with store.open_file(record) as handle:
                    if handle.read() != b"doctor probe\n":
                        raise RuntimeError("the probe file read back different bytes")
            finally:
                store.delete_session_files(session_id)
                store.delete_session_data(session_id)
                store.delete_session(session_id)
        except Exception as exc:
            return [
                Finding(
                    "store/writable",
                    Status.FAIL,
                    f"{self.where}: writing a probe session failed: {mask_secrets(str(exc))}",
                    "check the store's permissions (file and folder owner and mode for "
                    "sqlite; GRANTs of the database user for postgresql) and free space",
                )
            ]
        return [
            Finding(
                "store/writable",
                Status.OK,
                f"{self.where}: wrote, read back and removed a probe session and file",
            )
        ]

    # ------------------------------------------------------------------ space
    def _space_folder(self) -> Path | None:
        if self.kind == "sqlite":
            return _existing_parent(self._sqlite_path().parent)
        if self.kind == "postgresql":
            from ..store.postgresql import parse_url

            blob_dir = parse_url(self.address.url, self.address.name).blob_dir
            return _existing_parent(Path(blob_dir)) if blob_dir else None
        return None

    def _free_space(self) -> list[Finding]:
        try:
            folder = self._space_folder()
        except DcmProcessorError:
            return []  # a malformed URL: reported by the reachability check
        if folder is None:
            return [
                Finding(
                    "store/free-space",
                    Status.SKIP,
                    f"{self.where}: the data lives on the database server - check its disk there",
                )
            ]
        usage = shutil.disk_usage(folder)
        details = {"path": str(folder), "free_bytes": usage.free, "total_bytes": usage.total}
        text = f"{_gib(usage.free)} free of {_gib(usage.total)} at {folder}"
        if usage.free < FREE_SPACE_FAIL_BYTES:
            return [
                Finding(
                    "store/free-space",
                    Status.FAIL,
                    f"only {text}",
                    f"free space on that file system (at least {_gib(FREE_SPACE_WARN_BYTES)} "
                    "recommended), or move the store",
                    details,
                )
            ]
        if usage.free < FREE_SPACE_WARN_BYTES:
            return [
                Finding(
                    "store/free-space",
                    Status.WARN,
                    f"only {text}",
                    "free space on that file system soon; stores grow with every session",
                    details,
                )
            ]
        return [Finding("store/free-space", Status.OK, text, details=details)]

    # ------------------------------------------------------------------ clock
    def _clock(self) -> list[Finding]:
        if self.kind == "sqlite":
            return [
                Finding(
                    "store/clock",
                    Status.SKIP,
                    "the embedded sqlite store runs on this machine's clock (no skew possible)",
                )
            ]
        if self.kind != "postgresql" or self.store is None:
            if self.store is not None:
                return [
                    Finding(
                        "store/clock",
                        Status.SKIP,
                        f"{self.where}: clock skew is measured for postgresql stores only",
                    )
                ]
            return []
        try:
            with closing(self._pg_connect()) as conn:
                before = time.time()
                row = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
                after = time.time()
        except Exception as exc:
            return [self._unreachable(exc)]
        server = float(row[0])
        skew = server - (before + after) / 2
        details = {"skew_s": round(skew, 4), "round_trip_s": round(after - before, 4)}
        text = f"{self.where}: server clock {'ahead of' if skew > 0 else 'behind'} ours by {abs(skew):.3f} s"
        fix = "synchronise both machines' clocks with NTP (timedatectl set-ntp true, chrony)"
        if abs(skew) > CLOCK_SKEW_FAIL_S:
            return [Finding("store/clock", Status.FAIL, text, fix, details)]
        if abs(skew) > CLOCK_SKEW_WARN_S:
            return [Finding("store/clock", Status.WARN, text, fix, details)]
        return [Finding("store/clock", Status.OK, text, details=details)]
