"""dcm-processor-service: the runtime SDK for dcm-processor processing services.

The names below are the platform's compatible API (SPEC §2) plus the typed API
beneath it. Library code logs through :mod:`logging` (logger ``dcm_processor_service``)
and never prints; errors derive from :class:`DcmProcessorError`.
"""

from __future__ import annotations

import logging

from ._context import JOB_EVENTS, RuntimeContext, context_environ, current_context, use_context
from ._errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    ConfigError,
    ConflictError,
    ConversionError,
    DcmProcessorError,
    DicomError,
    DicomInputError,
    IntegrityError,
    InvalidInputError,
    MissingContextError,
    MissingDependencyError,
    NetworkError,
    NotFoundError,
    PatientConflictError,
    PeerUnreachableError,
    ServiceError,
    StorageError,
    StoreFailedError,
    StoreUnavailableError,
    TLSError,
    UnknownProviderError,
)
from ._lazy import lazy_attributes
from ._runtime import close_stores, store_for
from .hooks import run_post_services, run_pre_services
from .peers import add_peer, get_dicom_sender, get_peer, list_peers, remove_peer
from .session import (
    JobSession,
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
from .store import (
    FileRecord,
    InstanceRecord,
    JobRecord,
    JobRef,
    JobStatus,
    PatientRecord,
    Peer,
    SeriesRecord,
    SessionRecord,
    SessionStatus,
    Store,
    StudyRecord,
    known_providers,
    open_store,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Imaging and networking names, imported on first use so that importing the package
#: (every job process does) does not pay for numpy, nibabel, highdicom and pynetdicom.
_LAZY: dict[str, str] = {
    # DICOM index and series access
    "ingest": "dicom.index",
    "iter_ingest": "dicom.index",
    "IngestReport": "dicom.index",
    "get_series_dicom": "dicom.series",
    "get_series": "dicom.series",
    "get_study": "dicom.series",
    "get_patient": "dicom.series",
    "get_instance": "dicom.series",
    "list_series": "dicom.series",
    "list_studies": "dicom.series",
    "list_patients": "dicom.series",
    "list_instances": "dicom.series",
    "session_series": "dicom.series",
    "select_series": "dicom.select",
    "SeriesSelector": "dicom.select",
    "image_plane": "dicom.geometry",
    # conversion and derived objects
    "get_series_nifti": "dicom.series_nifti",
    "dicom_series_to_nifti": "dicom.nifti",
    "series_files_to_nifti": "dicom.nifti",
    "nifti_to_dicom": "dicom.nifti",
    "get_simplified_json": "dicom.simplified_json",
    "make_series_dicom": "dicom.derived",
    "make_pdf_dicom": "dicom.derived",
    "write_datasets": "dicom.derived",
    "AlgorithmInfo": "dicom.derived",
    "make_segmentation": "dicom.seg",
    "SegmentInfo": "dicom.seg",
    "make_text_report": "dicom.sr",
    "make_measurement_report": "dicom.sr",
    "MeasurementInfo": "dicom.sr",
    "segment_volumes": "dicom.sr",
    # sending
    "DicomSender": "net.sender",
    "SendReport": "net.results",
    "InstanceResult": "net.results",
    "Outcome": "net.results",
    "EchoResult": "net.results",
    # progress reporting from inside a job
    "report_progress": "progress",
    "heartbeat": "progress",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__version__ = "0.1.0"


def get_db_info() -> tuple[str | None, str | None, str | None]:
    """``(provider, url, name)`` of the job's store, from the runtime context."""
    ctx = current_context()
    return ctx.db_provider, ctx.db_url, ctx.db_name


def get_session_id() -> str:
    """The current session id (``DCM-PROCESSOR-SERVICE-SESSION-ID``)."""
    return current_context().require("session_id")


def get_job_id() -> str:
    """The current job id (``DCM-PROCESSOR-SERVICE-JOB-ID``)."""
    return current_context().require("job_id")


def get_job_event() -> str:
    """The event that triggered the job: stable-series, stable-study or stable-patient."""
    return current_context().require("job_event")


def get_job_name() -> str:
    """The current job's name (``DCM-PROCESSOR-SERVICE-JOB-NAME``)."""
    return current_context().require("job_name")


def get_job_service_name() -> str:
    """The name of the service the job belongs to."""
    return current_context().require("job_service_name")


def get_peer_id() -> str:
    """The id of the peer the session's images came from."""
    return current_context().require("peer_id")


__all__ = [  # the lazily imported names, then the eager ones
    *sorted(_LAZY),
    "JOB_EVENTS",
    "AssociationAbortedError",
    "AssociationRejectedError",
    "ConfigError",
    "ConflictError",
    "ConversionError",
    "DcmProcessorError",
    "DicomError",
    "DicomInputError",
    "FileRecord",
    "InstanceRecord",
    "IntegrityError",
    "InvalidInputError",
    "JobRecord",
    "JobRef",
    "JobSession",
    "JobStatus",
    "MissingContextError",
    "MissingDependencyError",
    "NetworkError",
    "NotFoundError",
    "PatientConflictError",
    "PatientRecord",
    "Peer",
    "PeerUnreachableError",
    "RuntimeContext",
    "SeriesRecord",
    "ServiceError",
    "SessionRecord",
    "SessionStatus",
    "StorageError",
    "Store",
    "StoreFailedError",
    "StoreUnavailableError",
    "StudyRecord",
    "TLSError",
    "UnknownProviderError",
    "__version__",
    "add_peer",
    "close_stores",
    "context_environ",
    "current_context",
    "download_session_file",
    "get_db_info",
    "get_dicom_sender",
    "get_job_event",
    "get_job_id",
    "get_job_name",
    "get_job_service_name",
    "get_peer",
    "get_peer_id",
    "get_session_data",
    "get_session_file",
    "get_session_id",
    "has_session_data",
    "has_session_file",
    "known_providers",
    "list_peers",
    "open_store",
    "remove_peer",
    "remove_session_data",
    "remove_session_file",
    "run_post_services",
    "run_pre_services",
    "set_session_data",
    "store_for",
    "upload_session_file",
    "use_context",
]
