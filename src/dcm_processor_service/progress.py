"""Progress reporting from inside a running job.

A long job tells whoever watches it how far it got: the local runner shows it live
(``dcm-service run`` polls the store while the job process runs), and anything that
reads the job record (``dcm-service sessions show``, a dashboard) sees it too.

::

    from dcm_processor_service import heartbeat, report_progress

    def worker(session_id, job_name, headers, params, added_params, **kwargs):
        report_progress(0, stage="convert", message="DICOM -> NIfTI")
        ...
        for i, chunk in enumerate(chunks):
            process(chunk)
            report_progress(100 * (i + 1) / len(chunks), stage="segment")
        heartbeat()  # "still alive" without a new percentage

Progress is stored with the job (``Store.update_job(job_id, progress={...})``, merged
into what was there). Outside a job (no ``DCM-PROCESSOR-SERVICE-JOB-ID``, e.g. when the
function is called from a notebook) both functions log at debug level and do nothing,
so a service can call them unconditionally.

Writes are throttled: a call that only moves ``percent`` (same stage, same message,
below 100) within :data:`MIN_INTERVAL` seconds of the previous write is not written.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, Final

from ._context import current_context
from ._errors import InvalidInputError
from .store.records import utcnow

__all__ = ["MIN_INTERVAL", "heartbeat", "report_progress"]

logger = logging.getLogger(__name__)

#: Minimum seconds between two writes that only change the percentage.
MIN_INTERVAL: Final = 0.25

_lock = threading.Lock()
_last: dict[str, tuple[float, Any, Any]] = {}  # job id -> (monotonic time, stage, message)


def _job_store() -> tuple[str, Any] | None:
    ctx = current_context()
    if ctx.job_id is None or ctx.db_provider is None or ctx.db_url is None:
        return None
    from ._runtime import store_for  # the store is opened lazily, on first report

    return ctx.job_id, store_for(ctx)


def report_progress(
    percent: float | None = None,
    stage: str | None = None,
    message: str | None = None,
    **extra: Any,
) -> dict[str, Any] | None:
    """Record the running job's progress.

    ``percent`` is 0-100 (clamped; ``None`` keeps the previous value), ``stage`` a short
    name of the current step (``"convert"``, ``"segment"``), ``message`` a line of text
    for humans. ``extra`` keys (JSON-serialisable) are stored alongside.

    Returns the progress values written, or ``None`` when nothing was written (outside
    a job, or throttled).

    Raises:
        InvalidInputError: ``percent`` is not a number (or is NaN).
        StorageError: the store failed to record it.
    """
    if percent is not None:
        try:
            value = float(percent)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"invalid 'percent' value {percent!r} - must be a number between 0 and 100"
            ) from None
        if math.isnan(value):
            raise InvalidInputError(
                "invalid 'percent' value nan - must be a number between 0 and 100"
            )
        percent = round(min(100.0, max(0.0, value)), 2)
    target = _job_store()
    if target is None:
        logger.debug(
            "progress outside a job (no job id in the context): %s %s %s", percent, stage, message
        )
        return None
    job_id, store = target
    now = time.monotonic()
    with _lock:
        last = _last.get(job_id)
        only_percent = (
            last is not None
            and not extra
            and stage in (None, last[1])
            and message in (None, last[2])
            and (percent is None or percent < 100)
        )
        if only_percent and last is not None and now - last[0] < MIN_INTERVAL:
            return None
        _last[job_id] = (
            now,
            stage if stage is not None else (last[1] if last else None),
            message if message is not None else (last[2] if last else None),
        )
    progress: dict[str, Any] = dict(extra)
    if percent is not None:
        progress["percent"] = percent
    if stage is not None:
        progress["stage"] = str(stage)
    if message is not None:
        progress["message"] = str(message)
    stamp = utcnow().isoformat()
    progress["updated_at"] = stamp
    progress["heartbeat"] = stamp
    store.update_job(job_id, progress=progress)
    logger.debug("job %s progress %s", job_id, progress)
    return progress


def heartbeat() -> dict[str, Any] | None:
    """Record that the running job is alive (stores ``progress.heartbeat``, a UTC
    timestamp). Returns what was written, or ``None`` outside a job."""
    target = _job_store()
    if target is None:
        logger.debug("heartbeat outside a job (no job id in the context)")
        return None
    job_id, store = target
    progress = {"heartbeat": utcnow().isoformat()}
    store.update_job(job_id, progress=progress)
    return progress
