"""dcm-processor-service: the runtime SDK for dcm-processor processing services.

The names below are the platform's compatible API (SPEC §2) plus the typed API
beneath it. Library code logs through :mod:`logging` (logger ``dcm_processor_service``)
and never prints; errors derive from :class:`DcmProcessorError`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

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
    PeerAuthError,
    PeerUnreachableError,
    ServiceError,
    StorageError,
    StoreFailedError,
    StoreUnavailableError,
    TLSError,
    UnknownProviderError,
)
from ._lazy import lazy_attributes

logging.getLogger(__name__).addHandler(logging.NullHandler())

#: Names imported on first use, so that importing the package (every job process does)
#: pays neither for numpy, nibabel, highdicom and pynetdicom nor for the store layer
#: until a job uses them: a sender alone loads none of the store modules.
_LAZY: dict[str, str] = {
    # runtime, hooks, peers, session data and files, the store
    "close_stores": "_runtime",
    "store_for": "_runtime",
    "run_pre_services": "hooks",
    "run_post_services": "hooks",
    "add_peer": "peers",
    "get_dicom_sender": "peers",
    "get_peer": "peers",
    "list_peers": "peers",
    "remove_peer": "peers",
    "JobSession": "session",
    "download_session_file": "session",
    "get_session_data": "session",
    "get_session_file": "session",
    "has_session_data": "session",
    "has_session_file": "session",
    "remove_session_data": "session",
    "remove_session_file": "session",
    "set_session_data": "session",
    "upload_session_file": "session",
    "DicomWebEndpoint": "store",
    "FileRecord": "store",
    "InstanceRecord": "store",
    "JobRecord": "store",
    "JobRef": "store",
    "JobStatus": "store",
    "PatientRecord": "store",
    "Peer": "store",
    "SeriesRecord": "store",
    "SessionRecord": "store",
    "SessionStatus": "store",
    "Store": "store",
    "StudyRecord": "store",
    "known_providers": "store",
    "open_store": "store",
    # DICOM index and series access
    "ingest": "index.ingest",
    "iter_ingest": "index.ingest",
    "IngestReport": "index.ingest",
    "get_series_dicom": "index.series",
    "get_series": "index.series",
    "get_study": "index.series",
    "get_patient": "index.series",
    "get_instance": "index.series",
    "list_series": "index.series",
    "list_studies": "index.series",
    "list_patients": "index.series",
    "list_instances": "index.series",
    "session_series": "index.series",
    "select_series": "index.select",
    "SeriesSelector": "index.select",
    "image_plane": "index.order",
    "order_slices": "index.order",
    # conversion and derived objects
    "get_series_nifti": "imaging.series_nifti",
    "dicom_series_to_nifti": "imaging.nifti_read",
    "series_files_to_nifti": "imaging.nifti_read",
    "nifti_to_dicom": "imaging.nifti_write",
    "get_simplified_json": "index.metadata",
    "make_series_dicom": "imaging.derived",
    "make_pdf_dicom": "imaging.derived",
    "write_datasets": "imaging.derived",
    "AlgorithmInfo": "imaging.provenance",
    "make_segmentation": "imaging.seg",
    "SegmentInfo": "imaging.seg",
    "sorted_source_images": "imaging.source_images",
    "make_text_report": "imaging.sr",
    "make_measurement_report": "imaging.sr",
    "MeasurementInfo": "imaging.sr",
    "segment_volumes": "imaging.sr",
    # sending
    "DicomSender": "net.sender",
    "SendReport": "net.results",
    "InstanceResult": "net.results",
    "Outcome": "net.results",
    "EchoResult": "net.results",
    "StowSender": "net.dicomweb.stow",
    # query/retrieve
    "find_studies": "net.query",
    "find_series": "net.query",
    "find_priors": "net.query",
    "StudyMatch": "net.query",
    "SeriesMatch": "net.query",
    "retrieve_series": "net.retrieve",
    "retrieve_study": "net.retrieve",
    # progress reporting from inside a job
    "report_progress": "progress",
    "heartbeat": "progress",
}

if TYPE_CHECKING:  # the lazy names, for type checkers and IDEs (kept equal to _LAZY by a test)
    from ._runtime import close_stores, store_for
    from .hooks import run_post_services, run_pre_services
    from .imaging.derived import make_pdf_dicom, make_series_dicom, write_datasets
    from .imaging.nifti_read import dicom_series_to_nifti, series_files_to_nifti
    from .imaging.nifti_write import nifti_to_dicom
    from .imaging.provenance import AlgorithmInfo
    from .imaging.seg import SegmentInfo, make_segmentation
    from .imaging.series_nifti import get_series_nifti
    from .imaging.source_images import sorted_source_images
    from .imaging.sr import (
        MeasurementInfo,
        make_measurement_report,
        make_text_report,
        segment_volumes,
    )
    from .index.ingest import IngestReport, ingest, iter_ingest
    from .index.metadata import get_simplified_json
    from .index.order import image_plane, order_slices
    from .index.select import SeriesSelector, select_series
    from .index.series import (
        get_instance,
        get_patient,
        get_series,
        get_series_dicom,
        get_study,
        list_instances,
        list_patients,
        list_series,
        list_studies,
        session_series,
    )
    from .net.dicomweb.stow import StowSender
    from .net.query import SeriesMatch, StudyMatch, find_priors, find_series, find_studies
    from .net.results import EchoResult, InstanceResult, Outcome, SendReport
    from .net.retrieve import retrieve_series, retrieve_study
    from .net.sender import DicomSender
    from .peers import add_peer, get_dicom_sender, get_peer, list_peers, remove_peer
    from .progress import heartbeat, report_progress
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
        DicomWebEndpoint,
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

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__version__ = "0.2.0"


def get_db_info() -> tuple[str | None, str | None, str | None]:
    """``(provider, url, name)`` of the job's store, from the runtime context; a part
    whose variable is unset is ``None`` (as in the original).

    Raises:
        InvalidInputError: ``DCM-PROCESSOR-SERVICE-JOB-EVENT`` is set to an unknown event.
    """
    ctx = current_context()
    return ctx.db_provider, ctx.db_url, ctx.db_name


def get_session_id() -> str:
    """The current session id (``DCM-PROCESSOR-SERVICE-SESSION-ID``).

    Raises:
        MissingContextError: ``DCM-PROCESSOR-SERVICE-SESSION-ID`` (or its underscore spelling) is not set.
        InvalidInputError: it is set to blanks.
    """
    return current_context().require("session_id")


def get_job_id() -> str:
    """The current job id (``DCM-PROCESSOR-SERVICE-JOB-ID``).

    Raises:
        MissingContextError: ``DCM-PROCESSOR-SERVICE-JOB-ID`` (or its underscore spelling) is not set.
        InvalidInputError: it is set to blanks.
    """
    return current_context().require("job_id")


def get_job_event() -> str:
    """The event that triggered the job: stable-series, stable-study or stable-patient.

    Raises:
        MissingContextError: ``DCM-PROCESSOR-SERVICE-JOB-EVENT`` (or its underscore spelling) is not set.
        InvalidInputError: it is set to blanks.
    """
    return current_context().require("job_event")


def get_job_name() -> str:
    """The current job's name (``DCM-PROCESSOR-SERVICE-JOB-NAME``).

    Raises:
        MissingContextError: ``DCM-PROCESSOR-SERVICE-JOB-NAME`` (or its underscore spelling) is not set.
        InvalidInputError: it is set to blanks.
    """
    return current_context().require("job_name")


def get_job_service_name() -> str:
    """The name of the service the job belongs to.

    Raises:
        MissingContextError: ``DCM-PROCESSOR-SERVICE-JOB-SERVICE-NAME`` (or its underscore spelling) is not set.
        InvalidInputError: it is set to blanks.
    """
    return current_context().require("job_service_name")


def get_peer_id() -> str:
    """The id of the peer the session's images came from.

    Raises:
        MissingContextError: ``DCM-PROCESSOR-SERVICE-PEER-ID`` (or its underscore spelling) is not set.
        InvalidInputError: it is set to blanks.
    """
    return current_context().require("peer_id")


__all__ = [  # static, so that type checkers see every re-export (lazy ones too)
    "JOB_EVENTS",
    "AlgorithmInfo",
    "AssociationAbortedError",
    "AssociationRejectedError",
    "ConfigError",
    "ConflictError",
    "ConversionError",
    "DcmProcessorError",
    "DicomError",
    "DicomInputError",
    "DicomSender",
    "DicomWebEndpoint",
    "EchoResult",
    "FileRecord",
    "IngestReport",
    "InstanceRecord",
    "InstanceResult",
    "IntegrityError",
    "InvalidInputError",
    "JobRecord",
    "JobRef",
    "JobSession",
    "JobStatus",
    "MeasurementInfo",
    "MissingContextError",
    "MissingDependencyError",
    "NetworkError",
    "NotFoundError",
    "Outcome",
    "PatientConflictError",
    "PatientRecord",
    "Peer",
    "PeerAuthError",
    "PeerUnreachableError",
    "RuntimeContext",
    "SegmentInfo",
    "SendReport",
    "SeriesMatch",
    "SeriesRecord",
    "SeriesSelector",
    "ServiceError",
    "SessionRecord",
    "SessionStatus",
    "StorageError",
    "Store",
    "StoreFailedError",
    "StoreUnavailableError",
    "StowSender",
    "StudyMatch",
    "StudyRecord",
    "TLSError",
    "UnknownProviderError",
    "__version__",
    "add_peer",
    "close_stores",
    "context_environ",
    "current_context",
    "dicom_series_to_nifti",
    "download_session_file",
    "find_priors",
    "find_series",
    "find_studies",
    "get_db_info",
    "get_dicom_sender",
    "get_instance",
    "get_job_event",
    "get_job_id",
    "get_job_name",
    "get_job_service_name",
    "get_patient",
    "get_peer",
    "get_peer_id",
    "get_series",
    "get_series_dicom",
    "get_series_nifti",
    "get_session_data",
    "get_session_file",
    "get_session_id",
    "get_simplified_json",
    "get_study",
    "has_session_data",
    "has_session_file",
    "heartbeat",
    "image_plane",
    "ingest",
    "iter_ingest",
    "known_providers",
    "list_instances",
    "list_patients",
    "list_peers",
    "list_series",
    "list_studies",
    "make_measurement_report",
    "make_pdf_dicom",
    "make_segmentation",
    "make_series_dicom",
    "make_text_report",
    "nifti_to_dicom",
    "open_store",
    "order_slices",
    "remove_peer",
    "remove_session_data",
    "remove_session_file",
    "report_progress",
    "retrieve_series",
    "retrieve_study",
    "run_post_services",
    "run_pre_services",
    "segment_volumes",
    "select_series",
    "series_files_to_nifti",
    "session_series",
    "set_session_data",
    "sorted_source_images",
    "store_for",
    "upload_session_file",
    "use_context",
    "write_datasets",
]
