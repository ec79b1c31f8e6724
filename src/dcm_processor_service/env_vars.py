"""The original ``dcm_processor_service.env_vars``: the job's runtime context.

Re-exports of the package's accessors (SPEC §2.1). Unlike the original, an accessor
whose variable is unset raises :class:`~dcm_processor_service.MissingContextError`
naming it instead of returning ``None``; ``get_db_info()`` still returns ``None`` for an
unset part.
"""

from __future__ import annotations

from . import (
    get_db_info,
    get_job_event,
    get_job_id,
    get_job_name,
    get_job_service_name,
    get_peer_id,
    get_session_id,
)

__all__ = [
    "get_db_info",
    "get_job_event",
    "get_job_id",
    "get_job_name",
    "get_job_service_name",
    "get_peer_id",
    "get_session_id",
]
