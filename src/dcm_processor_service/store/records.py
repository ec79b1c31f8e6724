"""Typed records the stores read and write, and the statuses of sessions and jobs.

Two kinds of record cross the store boundary:

* frozen dataclasses for what this package owns: :class:`SessionRecord`,
  :class:`JobRecord`, :class:`FileRecord`, :class:`Peer` (also a read-only mapping),
  and :class:`InstanceInput` (what the ingest hands the index);
* :class:`~typing.TypedDict` records of the DICOM index - :class:`SeriesRecord`,
  :class:`StudyRecord`, :class:`PatientRecord`, :class:`InstanceRecord` - which *are*
  the plain dicts service callbacks receive as ``headers`` (SPEC §4): their keys are
  part of the compatibility contract, so they stay dicts; the types only name the keys.
  :class:`DataRecord` is one row of :meth:`Store.list_data`.

:class:`JobStatus` and :class:`SessionStatus` are ``str``-valued enums: a member *is* its
text (``JobStatus.SUCCEEDED == "succeeded"``, ``str()``/``format()``/JSON give
``"succeeded"``), so stored values and JSON outputs are the plain words. A record
converts whatever status it is given (``"failed"`` or ``JobStatus.FAILED``) to the enum
and refuses unknown words with :class:`~dcm_processor_service.InvalidInputError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, TypedDict

from .._errors import InvalidInputError
from .._validation import validate_ae_title, validate_name, validate_port
from .web_endpoint import DicomWebEndpoint

__all__ = [
    "JOB_FIELDS",
    "DataRecord",
    "FileRecord",
    "InstanceInput",
    "InstanceRecord",
    "JobRecord",
    "JobStatus",
    "PatientRecord",
    "Peer",
    "SeriesRecord",
    "SessionRecord",
    "SessionStatus",
    "StudyRecord",
    "job_changes",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (what every record's timestamps use)."""
    return datetime.now(timezone.utc)


# ------------------------------------------------------------------- statuses
class _Words(str, Enum):
    """A ``str`` enum whose members print as their value (like 3.11's ``StrEnum``), and
    whose constructor refuses an unknown word with a message listing the known ones."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def _missing_(cls, value: object) -> Any:
        what = "".join(f" {c.lower()}" if c.isupper() else c for c in cls.__name__).strip()
        known = ", ".join(m.value for m in cls)
        raise InvalidInputError(f"invalid {what} {value!r} - must be one of: {known}")


class JobStatus(_Words):
    """Where a job stands. ``pending`` -> ``running`` -> one of the four final states."""

    PENDING = "pending"
    """created, not started yet"""
    RUNNING = "running"
    """its process runs (``owner``/``heartbeat_at`` say which runner watches it)"""
    SUCCEEDED = "succeeded"
    """the worker returned"""
    FAILED = "failed"
    """the worker raised, or its runner stopped or vanished while it ran"""
    SKIPPED = "skipped"
    """not run: a dependency did not succeed, a filter said no, or the run stopped first"""
    TIMED_OUT = "timed-out"
    """killed after the job's ``timeout``"""


class SessionStatus(_Words):
    """Where a session stands (the local runner's words; the platform keeps none)."""

    OPEN = "open"
    """created (``ensure_session``), no job run yet"""
    RUNNING = "running"
    """the pre-services hook ran: its jobs are being run"""
    KEPT = "kept"
    """a job failed and the session was kept for inspection instead of cleaned up"""
    INTERRUPTED = "interrupted"
    """the run was stopped by a signal (Ctrl-C, SIGTERM, SIGHUP)"""
    FAILED = "failed"
    """the runner itself failed while running it"""
    ABANDONED = "abandoned"
    """its runner was found gone (``sessions list --abandon-stale``)"""


#: The job fields :meth:`Store.update_job` may change.
JOB_FIELDS = (
    "status",
    "progress",
    "error",
    "started_at",
    "finished_at",
    "params",
    "service_name",
    "owner",
    "heartbeat_at",
)


def job_changes(changes: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword changes of :meth:`Store.update_job`, checked (only
    :data:`JOB_FIELDS`) and with ``status`` as a :class:`JobStatus`."""
    unknown = set(changes) - set(JOB_FIELDS)
    if unknown:
        raise InvalidInputError(
            f"cannot update job field(s) {sorted(unknown)}; allowed: {JOB_FIELDS}"
        )
    out = dict(changes)
    if out.get("status") is not None:
        out["status"] = JobStatus(out["status"])
    return out


@dataclass(frozen=True)
class Peer(Mapping[str, Any]):
    """A DICOM node (usually a PACS).

    ``aet`` is the peer's own AE title (the *called* AE title when we send to it).
    With ``tls`` on, ``ca_file`` verifies the peer's certificate and host name;
    ``cert_file``/``key_file`` are our client certificate for mutual TLS.

    ``dicomweb`` makes it a DICOMweb peer as well (:class:`DicomWebEndpoint`: base URL,
    authentication by reference to a secret, TLS files): sending then goes by STOW-RS and
    query/retrieve by QIDO-RS/WADO-RS. It is stored as one extra ``dicomweb`` field of
    the platform's peer record (absent for a DIMSE-only peer), so the platform's tools
    read such a record as before.

    A peer is also a read-only mapping with the platform's peer record keys
    (``peer["host"]``, ``peer.get("aet")``; see :meth:`to_dict`), as services written
    for the platform read it.
    """

    name: str
    aet: str
    host: str
    port: int
    tls: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    whitelist_aet: tuple[str, ...] = ()
    whitelist_ip: tuple[str, ...] = ()
    id: str | None = None
    dicomweb: DicomWebEndpoint | None = None

    def __post_init__(self) -> None:
        validate_name(self.name, "peer name")
        if isinstance(self.dicomweb, Mapping):
            object.__setattr__(self, "dicomweb", DicomWebEndpoint.from_dict(self.dicomweb))
        elif self.dicomweb is not None and not isinstance(self.dicomweb, DicomWebEndpoint):
            raise InvalidInputError(
                f"invalid 'dicomweb' value {self.dicomweb!r} for peer {self.name!r} - must be "
                "a DicomWebEndpoint or its dict"
            )
        object.__setattr__(self, "aet", validate_ae_title(self.aet, "aet"))
        object.__setattr__(self, "port", validate_port(self.port, "port"))
        if not isinstance(self.host, str) or not self.host.strip():
            raise InvalidInputError(
                f"invalid 'host' value {self.host!r} for peer {self.name!r} - must not be empty"
            )
        object.__setattr__(self, "whitelist_aet", tuple(self.whitelist_aet or ()))
        object.__setattr__(self, "whitelist_ip", tuple(self.whitelist_ip or ()))
        object.__setattr__(self, "tls", bool(self.tls))
        if self.tls:
            for attr in ("cert_file", "key_file", "ca_file"):
                path = getattr(self, attr)
                if path is not None and not os.path.isfile(path):
                    raise InvalidInputError(
                        f"invalid '{attr}' value {path!r} for peer {self.name!r} - file does not exist"
                    )
            if (self.cert_file is None) != (self.key_file is None):
                raise InvalidInputError(
                    f"peer {self.name!r}: 'cert_file' and 'key_file' must be given together for mutual TLS"
                )

    @property
    def is_dicomweb(self) -> bool:
        """True when the peer has a DICOMweb endpoint (sends by STOW-RS by default)."""
        return self.dicomweb is not None

    def to_dict(self) -> dict[str, Any]:
        """The peer as a plain dict (``_id`` for the record id, lists for allow-lists,
        ``dicomweb`` only when set)."""
        data = asdict(self)
        data["_id"] = data.pop("id")
        data["whitelist_aet"] = list(self.whitelist_aet)
        data["whitelist_ip"] = list(self.whitelist_ip)
        data.pop("dicomweb")
        if self.dicomweb is not None:
            data["dicomweb"] = self.dicomweb.to_dict()
        return data

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Peer:
        """Build a peer from a dict as stored (accepts ``_id`` or ``id``)."""
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        if "_id" in data and "id" not in values:
            values["id"] = str(data["_id"])
        missing = [k for k in ("name", "aet", "host", "port") if values.get(k) in (None, "")]
        if missing:
            raise InvalidInputError(
                f"peer record is missing required field(s): {', '.join(missing)}"
            )
        return cls(**values)


@dataclass(frozen=True)
class SessionRecord:
    """A session: the unit of work the scheduler opens for a patient."""

    id: str
    peer_id: str | None = None
    patient_uid: str | None = None
    status: SessionStatus = SessionStatus.OPEN
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    #: ``PID@HOST`` of the runner working on it, and its last sign of life
    owner: str | None = None
    heartbeat_at: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", SessionStatus(self.status))


@dataclass(frozen=True)
class JobRecord:
    """One job of a session (``status``: see :class:`JobStatus`). ``progress`` holds
    what the job reported (percent, stage, heartbeat)."""

    id: str
    session_id: str
    name: str
    event: str
    service_name: str | None = None
    status: JobStatus = JobStatus.PENDING
    params: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    #: ``PID@HOST`` of the runner that started it, and its last sign of life
    owner: str | None = None
    heartbeat_at: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", JobStatus(self.status))


@dataclass(frozen=True)
class FileRecord:
    """Metadata of one stored session file (SPEC §2.4 ``get_session_file``)."""

    id: str
    session_id: str
    job_id: str
    job_name: str | None
    event: str | None
    name: str
    size: int
    sha256: str
    content_type: str
    meta: dict[str, Any]
    blob_key: str
    created_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """The compatible metadata dict: ``_id``, ``filename``, ``length``, ``contentType``,
        ``sha256``, ``metadata``, ``uploadDate`` plus snake_case aliases."""
        return {
            "_id": self.id,
            "id": self.id,
            "name": self.name,
            "filename": self.name,
            "size": self.size,
            "length": self.size,
            "content_type": self.content_type,
            "contentType": self.content_type,
            "sha256": self.sha256,
            "checksum": f"sha256:{self.sha256}",
            "meta": dict(self.meta),
            "metadata": dict(self.meta),
            "session_id": self.session_id,
            "job_id": self.job_id,
            "job_name": self.job_name,
            "event": self.event,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "uploadDate": self.updated_at,
        }


@dataclass(frozen=True)
class InstanceInput:
    """Everything the DICOM index needs to file one instance (built by the ingest code
    from a dataset; the store only persists it).

    ``patient_meta``/``study_meta``/``series_meta`` are keyword -> JSON value dicts.
    ``instance_meta`` holds per-instance values used for sorting and selection
    (InstanceNumber, ImagePositionPatient, ImageOrientationPatient, SliceThickness...).
    ``header`` holds the record ``Metadata`` values of every top-level tag the ingest
    read (the ``mongodb`` provider keeps it as the platform's GridFS file metadata).
    """

    patient_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_meta: dict[str, Any]
    study_meta: dict[str, Any]
    series_meta: dict[str, Any]
    instance_meta: dict[str, Any]
    modality: str | None = None
    peer_id: str | None = None
    session_id: str | None = None
    header: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------- index records
class InstanceRecord(TypedDict):
    """An instance record; ``Metadata`` holds the per-instance tags
    (:data:`~dcm_processor_service.index.ingest.INSTANCE_KEYWORDS`), ``SeriesUID`` the
    ``_id`` of the series record listing it, ``BlobKey`` where its bytes are stored."""

    _id: str
    SOPInstanceUID: str
    SOPClassUID: str
    SeriesInstanceUID: str
    SeriesUID: str | None
    TransferSyntaxUID: str
    Metadata: dict[str, Any]
    Size: int
    SHA256: str
    BlobKey: str
    PeerUID: str | None
    SessionUID: str | None
    CreatedAt: str | None
    UpdatedAt: str | None


class _SeriesFields(TypedDict):
    _id: str
    PatientUID: str
    StudyInstanceUID: str
    SeriesInstanceUID: str
    PeerUID: str | None
    Instances: list[str]
    Metadata: dict[str, Any]
    CreatedAt: str | None
    UpdatedAt: str | None


class SeriesRecord(_SeriesFields, total=False):
    """A series record (SPEC §4) - what a ``stable-series`` job gets as ``headers``.
    ``Instances`` lists the instance ``_id``s; ``Metadata`` holds the patient, study
    and series tags. The SQL providers add ``StudyUID``, the study record's ``_id``."""

    StudyUID: str


class StudyRecord(TypedDict):
    """A study record (SPEC §4); ``Metadata`` includes ``ModalitiesInStudy``."""

    _id: str
    PatientUID: str
    StudyInstanceUID: str
    PeerUID: str | None
    Series: list[str]
    Metadata: dict[str, Any]
    CreatedAt: str | None
    UpdatedAt: str | None


class PatientRecord(TypedDict):
    """A patient record (SPEC §4); ``Metadata`` includes ``ModalitiesInPatient``."""

    _id: str
    PatientUID: str
    PeerUID: str | None
    Studies: list[str]
    Metadata: dict[str, Any]
    CreatedAt: str | None
    UpdatedAt: str | None


class DataRecord(TypedDict):
    """One stored session value (:meth:`Store.list_data`): its owner job and the JSON
    text of the value."""

    job_id: str
    job_name: str | None
    event: str | None
    name: str
    value_json: str
