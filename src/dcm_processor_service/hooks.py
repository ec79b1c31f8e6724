"""The standard pre-/post-services hooks the worker runs around a session's jobs.

``run_pre_services`` opens the session in the store (idempotent). ``run_post_services``
cleans the session up: its data, its files, the original images its ingest stored, then
the session record and its jobs. Both accept the worker's callback arguments
``(session_id, job_name, headers, params, added_params, **kwargs)``; the session id is
taken from the first argument, the ``session_id`` keyword, or the runtime context. Both
are idempotent: running the post hook twice is a no-op the second time.
"""

from __future__ import annotations

import logging
from typing import Any

from ._context import current_context
from ._runtime import store_for
from .store.base import Store
from .store.records import SessionStatus

__all__ = ["CleanupReport", "run_post_services", "run_pre_services"]

logger = logging.getLogger(__name__)

CleanupReport = dict[str, int]


def _session_id(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if args and isinstance(args[0], str) and args[0]:
        return args[0]
    if kwargs.get("session_id"):
        return str(kwargs["session_id"])
    return current_context().require("session_id")


def run_pre_services(*args: Any, store: Store | None = None, **kwargs: Any) -> dict[str, Any]:
    """Open (or re-open) the session in the store and mark it running.

    The session id is the first positional argument, else ``session_id=``, else the
    job's context. Returns ``{"session_id", "status"}``.

    Raises:
        MissingContextError: no session id given and none in the environment.
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
    """
    session_id = _session_id(args, kwargs)
    store = store or store_for()
    ctx = current_context()
    store.ensure_session(session_id, peer_id=ctx.peer_id)
    session = store.update_session(session_id, status=SessionStatus.RUNNING)
    logger.info("pre-services: session %s open", session_id)
    return {"session_id": session.id, "status": session.status}


def run_post_services(*args: Any, store: Store | None = None, **kwargs: Any) -> CleanupReport:
    """Remove the session's data, files and stored images, then the session itself.
    Returns how many of each were removed (all zero on a second run).

    Raises:
        MissingContextError: no session id given and none in the environment.
        StorageError: the store failed (:class:`StoreUnavailableError` when it cannot be reached).
    """
    session_id = _session_id(args, kwargs)
    store = store or store_for()
    report = {
        "data": store.delete_session_data(session_id),
        "files": store.delete_session_files(session_id),
        "instances": store.delete_session_instances(session_id),
        "session": int(store.delete_session(session_id)),
    }
    logger.info(
        "post-services: session %s cleaned up (%d values, %d files, %d instances)",
        session_id,
        report["data"],
        report["files"],
        report["instances"],
    )
    return report
