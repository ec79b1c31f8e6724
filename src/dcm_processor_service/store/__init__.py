"""Storage: one interface (:class:`Store`), providers chosen by name.

``open_store("sqlite", "/var/lib/dcm/store")`` gives the embedded store;
``postgresql`` and ``mongodb`` are optional extras. What crosses the interface is typed
(:mod:`.records`): dataclass records for sessions, jobs, files and peers, the SPEC §4
index records as ``TypedDict``s, and :class:`JobStatus`/:class:`SessionStatus`. See
``docs/storage.md``.
"""

from .base import CHUNK_SIZE, JobRef, Store
from .records import (
    JOB_FIELDS,
    DataRecord,
    FileRecord,
    InstanceInput,
    InstanceRecord,
    JobRecord,
    JobStatus,
    PatientRecord,
    Peer,
    SeriesRecord,
    SessionRecord,
    SessionStatus,
    StudyRecord,
)
from .registry import ProviderSpec, known_providers, open_store, register_provider
from .web_endpoint import DicomWebEndpoint

__all__ = [
    "CHUNK_SIZE",
    "JOB_FIELDS",
    "DataRecord",
    "DicomWebEndpoint",
    "FileRecord",
    "InstanceInput",
    "InstanceRecord",
    "JobRecord",
    "JobRef",
    "JobStatus",
    "PatientRecord",
    "Peer",
    "ProviderSpec",
    "SeriesRecord",
    "SessionRecord",
    "SessionStatus",
    "Store",
    "StudyRecord",
    "known_providers",
    "open_store",
    "register_provider",
]
