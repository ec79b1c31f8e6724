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
        └── TLSError                 certificate / handshake problems
"""

from __future__ import annotations

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
    """Talking to a DICOM peer failed."""


class AssociationRejectedError(NetworkError):
    """The peer rejected the association; ``reason`` holds its stated reason."""

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
