"""The original ``dcm_processor_service.post_services``: the hook the worker runs after
a session's jobs - it cleans the session up (``callback`` and ``run_clean_up_service``
are :func:`~dcm_processor_service.run_post_services`)."""

from __future__ import annotations

from .db_manager import get_mgr
from .hooks import run_post_services as callback
from .hooks import run_post_services as run_clean_up_service

__all__ = ["callback", "get_mgr", "run_clean_up_service"]
