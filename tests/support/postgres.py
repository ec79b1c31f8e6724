"""A throwaway PostgreSQL server for tests and benchmarks.

:class:`PostgresServer` runs ``initdb`` into a temporary directory and starts the
cluster on a free loopback port (``listen_addresses=127.0.0.1``, unix socket in the same
directory, ``fsync=off`` - the data is thrown away). Authentication is what a real
deployment uses over TCP: ``scram-sha-256`` for 127.0.0.1, ``trust`` only on the local
socket (which tests use for administration). ``initdb`` refuses to run as root, so as
root every server command runs as the ``postgres`` user via ``runuser``.

:func:`find_pg_bin` locates the binaries (``$PG_BIN``, ``/usr/lib/postgresql/*/bin``,
then ``PATH``); :func:`require_pg_bin` skips the test when there are none - except in CI
(``CI=true``), where a missing server is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

__all__ = ["PostgresServer", "find_pg_bin", "free_port", "require_pg_bin", "sanitize_db_name"]

SUPERUSER = "postgres"
#: password of the superuser over TCP (scram-sha-256)
SUPERUSER_PASSWORD = "s3cret-superuser-pw"


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb``/``pg_ctl``/``postgres``, or ``None``."""
    env = os.environ.get("PG_BIN")
    if env and (Path(env) / "initdb").exists():
        return Path(env)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(re.search(r"/(\d+)/bin/", p).group(1)),  # type: ignore[union-attr]
    )
    if candidates:
        return Path(candidates[-1]).parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


def require_pg_bin() -> Path:
    """The binaries' directory; skip (or, with ``CI=true``, fail) when there are none."""
    import pytest

    found = find_pg_bin()
    if found is None:
        reason = (
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb, "
            "no $PG_BIN, no initdb on PATH) - install them with apt-get install postgresql"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + " (CI=true: PostgreSQL tests must run in CI)", pytrace=False)
        pytest.skip(reason)
    return found


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (free at the time of the call)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sanitize_db_name(text: str, max_len: int = 63) -> str:
    """A valid, unique PostgreSQL database name derived from ``text`` (e.g. a test id)."""
    base = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "db"
    suffix = uuid.uuid4().hex[:8]
    return f"{base[: max_len - len(suffix) - 4]}_{suffix}"


class PostgresServer:
    """A private PostgreSQL cluster in a temporary directory."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        found = bin_dir or find_pg_bin()
        if found is None:
            raise RuntimeError("PostgreSQL binaries not found (see find_pg_bin)")
        self.bin_dir = found
        self.host = "127.0.0.1"
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="dcm-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "log"
        self._as_postgres = os.geteuid() == 0
        self.superuser = SUPERUSER
        self.password = SUPERUSER_PASSWORD
        self.started = False

    # ------------------------------------------------------------ commands
    def _cmd(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        argv = list(args)
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        proc = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if check and proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n{log}"
            )
        return proc

    def _server_options(self) -> str:
        return (
            f"-c listen_addresses={self.host} -p {self.port} -k {self.root} -c fsync=off"
            " -c full_page_writes=off -c synchronous_commit=off -c max_connections=200"
            " -c shared_buffers=128MB"
        )

    def start(self, attempts: int = 5) -> PostgresServer:
        """initdb (superuser password over TCP, trust on the socket) and start."""
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._cmd(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.superuser,
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-locale",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        for attempt in range(attempts):
            self.port = free_port()
            proc = self._cmd(
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "-o",
                self._server_options(),
                "start",
                check=False,
            )
            if proc.returncode == 0:
                self.started = True
                return self
            if attempt == attempts - 1:
                raise RuntimeError(
                    f"pg_ctl start failed: {proc.stderr.strip()}\n"
                    f"{self.log.read_text(errors='replace')[-2000:]}"
                )
        return self  # pragma: no cover

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart`` (terminates every connection, as an admin restart does)."""
        self._cmd(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-m",
            mode,
            "-o",
            self._server_options(),
            "restart",
        )

    def stop(self) -> None:
        """Stop immediately and delete the cluster."""
        if self.started:
            self._cmd(
                str(self.bin_dir / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
                check=False,
            )
            self.started = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- admin
    def admin_conninfo(self, dbname: str = "postgres") -> str:
        """Superuser over the unix socket (trust)."""
        return f"host={self.root} port={self.port} user={self.superuser} dbname={dbname}"

    def sql(self, *statements: str, dbname: str = "postgres") -> list[tuple[object, ...]]:
        """Run statements in autocommit as the superuser; return the last one's rows."""
        import psycopg

        rows: list[tuple[object, ...]] = []
        with psycopg.connect(self.admin_conninfo(dbname), autocommit=True) as conn:
            for statement in statements:
                cur = conn.execute(statement)  # type: ignore[arg-type]
                rows = cur.fetchall() if cur.description else []
        return rows

    def url(self, dbname: str, user: str | None = None, password: str | None = None) -> str:
        """A ``postgresql://`` URL over TCP (scram-sha-256) for ``dbname``."""
        user = user or self.superuser
        password = self.password if password is None and user == self.superuser else password
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Create an empty database; return its name."""
        self.sql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its clients."""
        with contextlib.suppress(Exception):
            self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until the server accepts connections."""
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.admin_conninfo(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
