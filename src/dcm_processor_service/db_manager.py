"""The original ``dcm_processor_service.db_manager``: session data, session files,
peers and the DICOM sender, over this package's store.

Thin re-exports (see ``docs/migrating.md`` for the deliberate differences).
``get_mgr()`` returns this package's :class:`~dcm_processor_service.Store` for the
job's context - not the platform's ``DBManager`` (``dcm-processor-db-provider``), whose
methods it does not have.
"""

from __future__ import annotations

from ._lazy import lazy_attributes
from ._runtime import store_for
from .env_vars import get_db_info, get_job_event, get_job_id, get_session_id
from .peers import get_dicom_sender, get_peer
from .session import (
    download_session_file,
    get_session_data,
    get_session_file,
    has_session_data,
    has_session_file,
    remove_session_data,
    remove_session_file,
    set_session_data,
    upload_session_file,
)
from .store.base import Store

_LAZY = {"DicomSender": "net.sender"}

__all__ = [
    *_LAZY,
    "download_session_file",
    "get_db_info",
    "get_dicom_sender",
    "get_job_event",
    "get_job_id",
    "get_mgr",
    "get_peer",
    "get_session_data",
    "get_session_file",
    "get_session_id",
    "has_session_data",
    "has_session_file",
    "remove_session_data",
    "remove_session_file",
    "set_session_data",
    "upload_session_file",
]

__getattr__, __dir__ = lazy_attributes("dcm_processor_service", _LAZY, globals(), owner=__name__)


def get_mgr() -> Store:
    """The store of the job's context (``DCM-PROCESSOR-SERVICE-DB-*``), opened once per
    process - this package's :class:`~dcm_processor_service.Store`."""
    return store_for()
