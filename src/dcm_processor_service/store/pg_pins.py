"""Pool connections pinned to threads: the PostgreSQL store's fast path for many short
units of work (``set_session_data`` in a loop).

Taking a connection from the pool and returning it costs about as much Python time as
a short statement's round trip. So a thread keeps the pool connection it used last
(its *pin*) for its next unit of work instead of returning it - at most ``limit``
threads at a time (half the pool), so the other threads always find connections in the
pool. A pin goes back to the pool when:

- its thread ends (the thread's pin is dropped with the thread's local data);
- it is found closed, broken or inside a transaction when its thread comes back (a
  server restart: the retry of the unit of work then takes a fresh connection);
- the unit of work failed with a connection error;
- the store is closed.

A forked child never uses (nor closes: closing would end the parent's session on the
shared socket) a connection pinned in its parent: pins remember their process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from typing import Any

from psycopg import pq
from psycopg_pool import ConnectionPool

__all__ = ["ThreadPins"]

#: connections pinned in a parent process, met in a forked child: kept referenced, never
#: used or closed (closing would end the parent's session on the shared socket)
_inherited: list[Any] = []


class _Pin:
    """One thread's pinned connection."""

    __slots__ = ("__weakref__", "busy", "conn", "release")

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.busy = True
        self.release: weakref.finalize[Any, Any] | None = None


def _give_back(
    pins: weakref.ReferenceType[ThreadPins], pool: ConnectionPool[Any], conn: Any, pid: int
) -> None:
    """Return a pinned connection to its pool (once: the pin's finalizer)."""
    if os.getpid() != pid:  # in a forked child: not ours to return, nor to close
        _inherited.append(conn)
        return
    owner = pins()
    if owner is not None:
        owner.unpinned()
    with contextlib.suppress(Exception):  # the pool is gone (interpreter exit)
        pool.putconn(conn)


class ThreadPins:
    """The pinned connections of one pool (made with the pool, in its process): at most
    ``limit`` threads' at a time."""

    def __init__(self, pool: ConnectionPool[Any], limit: int) -> None:
        self.pool = pool
        self.limit = limit
        self.pid = os.getpid()
        self._local = threading.local()
        self._lock = threading.Lock()
        self._count = 0
        self._pins: weakref.WeakSet[_Pin] = weakref.WeakSet()
        self._closed = False

    def take(self) -> Any | None:
        """This thread's pinned connection, now busy; ``None`` when the thread has none
        it can use (it then takes one from the pool, and may :meth:`keep` it)."""
        pin: _Pin | None = getattr(self._local, "pin", None)
        if pin is None or pin.busy:  # none, or a unit of work inside another one
            return None
        if pin.release is None:  # returned by close()
            self._local.pin = None
            return None
        conn = pin.conn
        if (
            conn.closed
            or conn.broken
            or conn.pgconn.transaction_status != pq.TransactionStatus.IDLE
        ):
            self._drop(pin)
            return None
        pin.busy = True
        return conn

    def keep(self, conn: Any) -> bool:
        """Pin ``conn`` (just taken from the pool by this thread) to this thread, busy,
        if fewer than ``limit`` threads have a pin; whether it did."""
        if getattr(self._local, "pin", None) is not None:
            return False  # a unit of work inside another one: this thread's pin is busy
        with self._lock:
            if self._closed or self._count >= self.limit:
                return False
            self._count += 1
        pin = _Pin(conn)
        # the pin is dropped with the thread's local data when the thread ends
        pin.release = weakref.finalize(
            pin, _give_back, weakref.ref(self), self.pool, conn, self.pid
        )
        self._pins.add(pin)
        self._local.pin = pin
        return True

    def done(self, conn: Any, *, healthy: bool) -> None:
        """The unit of work on this thread's pinned ``conn`` ended; ``healthy``: without
        a connection error (the pin stays), else the connection goes back to the pool
        (which discards a broken one)."""
        pin: _Pin | None = getattr(self._local, "pin", None)
        if pin is None or pin.conn is not conn:
            return
        pin.busy = False
        if not healthy or self._closed:
            self._drop(pin)

    def unpinned(self) -> None:
        """A pin went back to the pool (its finalizer)."""
        with self._lock:
            self._count -= 1

    def _drop(self, pin: _Pin) -> None:
        if getattr(self._local, "pin", None) is pin:
            self._local.pin = None
        release, pin.release = pin.release, None
        if release is not None:
            release()

    def close(self) -> None:
        """Return the pins not in use to the pool now, the others when their unit of
        work ends; pin nothing more."""
        self._closed = True
        for pin in list(self._pins):
            if not pin.busy:
                release, pin.release = pin.release, None
                if release is not None:
                    release()
