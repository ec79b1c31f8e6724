"""The original ``dcm_processor_service.pre_services``: the hook the worker runs before
a session's jobs (``callback`` is :func:`~dcm_processor_service.run_pre_services`)."""

from __future__ import annotations

from .hooks import run_pre_services as callback

__all__ = ["callback"]
