"""PostgreSQL: pool connections pinned to threads (store/pg_pins.py) - reused by their
thread, returned when the thread ends or the store closes, replaced after a server
restart, never used nor closed by a forked child; threads beyond the limit share the
rest of the pool. Real PostgreSQL server (tests/support/postgres.py)."""

from __future__ import annotations

import gc
import os
import threading
import time
from typing import Any

from dcm_processor_service.store import open_store
from dcm_processor_service.store.base import JobRef
from support.postgres import PostgresServer
from support.processes import in_forked_child

OWNER = JobRef("s", "j", "j", "stable-series")


def backend_pid(store: Any) -> int:
    """The server process serving this thread's next unit of work."""
    return int(store._run(lambda tx: tx.one("SELECT pg_backend_pid() AS pid"), single=True)["pid"])


def sessions(server: PostgresServer, url: str) -> int:
    """How many connections the server has to the database of ``url``."""
    db = url.rsplit("/", 1)[1].split("?")[0]
    return int(
        server.sql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'")[0][0]  # type: ignore[arg-type]
    )


def test_a_thread_keeps_its_connection_between_units_of_work(pg_db: str) -> None:
    store = open_store("postgresql", pg_db)
    try:
        first = backend_pid(store)
        for i in range(20):
            store.set_data(OWNER, f"k{i}", str(i))
            assert store.get_data(OWNER, f"k{i}") == str(i)
        assert backend_pid(store) == first
        # a unit of work inside another one (the pin is busy) takes a pool connection
        nested = store._run(lambda tx: (tx.one("SELECT 1 AS x"), backend_pid(store)))[1]
        assert nested != first
        assert backend_pid(store) == first
    finally:
        store.close()


def test_ended_threads_return_their_pins_and_more_threads_than_pins_work(
    postgres_server: PostgresServer, pg_db: str
) -> None:
    """8 threads at once on a pool of 4 (2 pins): every unit of work succeeds (no
    thread waits for a connection pinned by an idle one), and once the threads ended
    every connection is back in the pool."""
    store = open_store("postgresql", pg_db + "?pool_max=4&pool_timeout=5")
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        try:
            start.wait(10)
            for i in range(30):
                store.set_data(OWNER, f"t{t}-{i}", str(i))
                assert store.get_data(OWNER, f"t{t}-{i}") == str(i)
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        gc.collect()
        pins = store._pins  # type: ignore[attr-defined]
        assert pins is not None and pins._count == 0
        stats = store._pool.get_stats()  # type: ignore[attr-defined]
        assert stats["pool_available"] == stats["pool_size"] <= 4
        assert len(store.list_data("s")) == 8 * 30
    finally:
        store.close()


def test_close_returns_pinned_connections(postgres_server: PostgresServer, pg_db: str) -> None:
    store = open_store("postgresql", pg_db)
    store.set_data(OWNER, "k", "v")  # this thread pins a connection
    assert sessions(postgres_server, pg_db) >= 1
    store.close()
    deadline = time.monotonic() + 10
    while sessions(postgres_server, pg_db) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sessions(postgres_server, pg_db) == 0


def test_pinned_connection_after_a_server_restart(restartable_server: PostgresServer) -> None:
    """The server ends every connection: the next unit of work finds its pinned one
    dead, gets a new one (retried, invisible to the caller) and pins that."""
    url = restartable_server.url(restartable_server.create_database("pins_restart"))
    store = open_store("postgresql", url)
    try:
        store.set_data(OWNER, "before", "1")
        before = backend_pid(store)
        restartable_server.restart()
        store.set_data(OWNER, "after", "2")
        assert store.get_data(OWNER, "before") == "1"
        assert store.get_data(OWNER, "after") == "2"
        after = backend_pid(store)
        assert after != before
        assert backend_pid(store) == after  # pinned again
    finally:
        store.close()


def test_forked_child_neither_uses_nor_closes_the_parents_pin(pg_db: str) -> None:
    store = open_store("postgresql", pg_db)
    store.set_data(OWNER, "parent", "1")
    parent_backend = backend_pid(store)
    read, write = os.pipe()

    def child() -> int:  # same store object: its own pool and pins
        os.close(read)
        store.set_data(OWNER, "child", "2")
        child_backend = backend_pid(store)
        gc.collect()  # the parent's pin object is dropped here: it must not close it
        ok = child_backend != parent_backend and store.get_data(OWNER, "parent") == "1"
        os.write(write, str(child_backend).encode())
        return 0 if ok else 3

    code = in_forked_child(child)
    os.close(write)
    child_backend = int(os.read(read, 64) or b"0")
    os.close(read)
    try:
        assert code == 0
        assert child_backend not in (0, parent_backend)
        # the parent's pinned session is still the same, alive one
        assert backend_pid(store) == parent_backend
        assert store.get_data(OWNER, "child") == "2"
    finally:
        store.close()
