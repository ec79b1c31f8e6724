"""The package's error tree.

Every error the SDK raises on purpose derives from :class:`DcmProcessorError`, so a
service can catch the whole family with one ``except``. Errors of the libraries we
integrate with (sqlite3, psycopg, pydicom, pynetdicom, ssl) are translated at the seam
with ``raise Mapped(message) from exc``, so the original stays in ``__cause__``.

::

    DcmProcessorError
    ├── ConfigError                  bad or missing settings
    │   ├── MissingContextError      a required DCM-PROCESSOR-SERVICE-* variable is unset
    │   ├── UnknownProviderError     storage provider name not registered
    │   └── MissingDependencyError   an optional extra (driver, codec) is not installed
    ├── InvalidInputError            a value a caller passed breaks a rule (also ValueError)
    ├── StorageError                 the store failed
    │   ├── StoreUnavailableError    cannot open / connect to the store
    │   ├── NotFoundError            a record or file that must exist does not (also KeyError)
    │   ├── ConflictError            a concurrent change or a duplicate that cannot be merged
    │   │   └── PatientConflictError an instance's series, study or SOP instance is already
    │   │                            filed under another patient (refused, never merged)
    │   └── IntegrityError           stored bytes do not match their recorded checksum/size
    ├── DicomError                   DICOM content problems
    │   ├── DicomInputError          non-DICOM, truncated, or missing required tags
    │   └── ConversionError          DICOM <-> NIfTI or derived-object creation failed
    ├── ServiceError                 a service manifest / entry point / job problem
    └── NetworkError                 talking to a DICOM peer failed
        ├── AssociationRejectedError the peer rejected the association (reason attached)
        ├── AssociationAbortedError  the association was aborted or dropped mid-send
        ├── PeerUnreachableError     connection refused / timed out
        ├── StoreFailedError         one or more C-STOREs failed
        ├── TLSError                 certificate / handshake problems
        └── PeerAuthError            a DICOMweb peer refused our credentials (HTTP 401/403)

Attributes some errors carry (declared on the classes, so ``exc.transient`` is always
there to read; no ``getattr`` probing):

===========================  ==============================================================
``MissingContextError``      ``variable``: the unset variable (hyphenated form)
``PatientConflictError``     ``level`` (``"instance"``/``"series"``/``"study"``), ``uid``,
                             ``stored_patient``/``new_patient`` (the two ``PatientUID``s),
                             ``stored_identity``/``new_identity`` (their identifying tags)
``NetworkError`` (all)       ``transient``: a retry on a new association may cure it
                             (refused, reset, aborted, timed out: ``True``; unknown host,
                             TLS, permanent rejection: ``False``, the default);
                             ``in_doubt``: it ended a request that had been sent in full
                             without an answer, so the peer may have performed it;
                             ``report``: the :class:`~dcm_processor_service.SendReport` of
                             the send it ended (``None`` outside ``DicomSender.send``)
``AssociationRejectedError`` ``reason``: the peer's stated reason (``None`` if unknown)
===========================  ==============================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for the annotation only: the sender imports this module
    from .net.results import SendReport

__all__ = [
    "AssociationAbortedError",
    "AssociationRejectedError",
    "ConfigError",
    "ConflictError",
    "ConversionError",
    "DcmProcessorError",
    "DicomError",
    "DicomInputError",
    "IntegrityError",
    "InvalidInputError",
    "MissingContextError",
    "MissingDependencyError",
    "NetworkError",
    "NotFoundError",
    "PatientConflictError",
    "PeerAuthError",
    "PeerUnreachableError",
    "ServiceError",
    "StorageError",
    "StoreFailedError",
    "StoreUnavailableError",
    "TLSError",
    "UnknownProviderError",
]


class DcmProcessorError(Exception):
    """Root of every error raised on purpose by dcm-processor-service."""


class ConfigError(DcmProcessorError):
    """A setting is missing or invalid."""


class MissingContextError(ConfigError):
    """A required runtime-context environment variable is not set.

    ``variable`` holds the (hyphenated) variable name.
    """

    variable: str
    """the unset variable, e.g. ``DCM-PROCESSOR-SERVICE-SESSION-ID``"""

    def __init__(self, variable: str, message: str | None = None) -> None:
        self.variable = variable
        super().__init__(
            message
            or f"runtime context variable '{variable}' is not set - the worker (or the "
            f"local runner) must inject it; the underscore form "
            f"'{variable.replace('-', '_')}' is accepted too"
        )


class UnknownProviderError(ConfigError):
    """A storage provider name is not registered."""


class MissingDependencyError(ConfigError):
    """An optional dependency needed for the requested feature is not installed."""


class InvalidInputError(DcmProcessorError, ValueError):
    """A value passed by the caller breaks a documented rule."""


class StorageError(DcmProcessorError):
    """The storage layer failed."""


class StoreUnavailableError(StorageError):
    """The store cannot be opened or reached."""


class NotFoundError(StorageError, KeyError):
    """A record or file that must exist was not found."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ConflictError(StorageError):
    """A write conflicts with the stored state."""


class PatientConflictError(ConflictError):
    """An instance would join a series, a study or a SOP instance record that is already
    filed under another patient; the store refuses it and keeps what it holds.

    A PACS administrator's rule: two patients' images are never merged into one series
    (a job would receive another patient's images), and a stored instance is never moved
    to another patient by a re-ingest. ``level`` is ``"instance"``, ``"series"`` or
    ``"study"``; ``uid`` the shared UID; ``stored_patient`` and ``new_patient`` the two
    ``PatientUID``s; ``stored_identity`` and ``new_identity`` their identifying tags
    (``PatientID '123', PatientName 'Doe^Jane'``), which the message shows.
    """

    level: str
    """``"instance"``, ``"series"`` or ``"study"``: the record that is shared"""
    uid: str
    """the SOPInstanceUID, SeriesInstanceUID or StudyInstanceUID that is shared"""
    stored_patient: str
    """the ``PatientUID`` the store files it under"""
    new_patient: str
    """the ``PatientUID`` of the refused instance"""
    stored_identity: str
    """identifying tags of the stored patient (for the message)"""
    new_identity: str
    """identifying tags of the refused instance's patient"""

    def __init__(
        self,
        level: str,
        uid: str,
        stored_patient: str,
        new_patient: str,
        stored_identity: str = "",
        new_identity: str = "",
    ) -> None:
        self.level = level
        self.uid = uid
        self.stored_patient = stored_patient
        self.new_patient = new_patient
        self.stored_identity = stored_identity
        self.new_identity = new_identity
        what = "SOPInstanceUID" if level == "instance" else level
        super().__init__(
            f"patient conflict: {what} {uid} is already filed under patient "
            f"{_patient(stored_identity, stored_patient)}, this instance belongs to patient "
            f"{_patient(new_identity, new_patient)} - refused (two patients are never "
            "merged); correct the patient tags or the UIDs of the file and ingest it again"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes
        return (
            type(self),
            (
                self.level,
                self.uid,
                self.stored_patient,
                self.new_patient,
                self.stored_identity,
                self.new_identity,
            ),
        )


def _patient(identity: str, patient_uid: str) -> str:
    return f"{identity} (PatientUID {patient_uid})" if identity else f"PatientUID {patient_uid}"


class IntegrityError(StorageError):
    """Stored bytes do not match their recorded size or sha256."""


class DicomError(DcmProcessorError):
    """A DICOM content problem."""


class DicomInputError(DicomError, ValueError):
    """A file or dataset is not usable DICOM (not DICOM, truncated, missing tags)."""


class ConversionError(DicomError):
    """A conversion between DICOM and NIfTI, or building a derived object, failed."""


class ServiceError(DcmProcessorError):
    """A service manifest, entry point or job is invalid or failed."""


class NetworkError(DcmProcessorError):
    """Talking to a DICOM peer failed.

    The association layer marks each one it raises: ``transient`` (whether a retry on a
    new association may cure it) and ``in_doubt`` (whether it ended a request that had
    gone out in full, unanswered). :meth:`DicomSender.send` attaches its ``report``.
    """

    transient: bool = False
    """a retry on a new association may succeed (refused, reset, aborted, timed out)"""
    in_doubt: bool = False
    """it ended a request sent in full with no valid answer: the peer may have done it"""
    report: SendReport | None = None
    """what the send it ended did, instance by instance (set by ``DicomSender.send``)"""


class AssociationRejectedError(NetworkError):
    """The peer rejected the association; ``reason`` holds its stated reason."""

    reason: str | None
    """the peer's stated reason (result, source and reason of the A-ASSOCIATE-RJ)"""

    def __init__(self, message: str, reason: str | None = None) -> None:
        self.reason = reason
        super().__init__(message)


class AssociationAbortedError(NetworkError):
    """The association was aborted or the connection dropped."""


class PeerUnreachableError(NetworkError):
    """The peer could not be reached (refused, timed out, name not resolvable)."""


class StoreFailedError(NetworkError):
    """One or more instances were not stored by the peer."""


class TLSError(NetworkError):
    """TLS set-up or the handshake failed (bad certificate, host name mismatch...)."""


class PeerAuthError(NetworkError):
    """A DICOMweb peer refused our credentials (HTTP 401 or 403): wrong password or
    token, expired token, or a client certificate it does not accept."""
