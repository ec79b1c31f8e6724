"""What a send tells its caller: one :class:`InstanceResult` per instance in a
:class:`SendReport`, an :class:`EchoResult` for a C-ECHO, and the status codes.

An instance stands where :class:`Outcome` says: stored (the peer answered success or
warning), refused (the peer answered a failure status), in doubt (its C-STORE went out
in full but no response came: the peer may have stored it) or not sent. ``status`` is
the peer's DIMSE status when it answered, else one of the local codes below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Final, overload

from .._errors import StoreFailedError
from .dimse import DimseStatus

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

__all__ = [
    "STATUS_CANNOT_CONVERT",
    "STATUS_IN_DOUBT",
    "STATUS_NOT_SENT",
    "STATUS_SOP_CLASS_NOT_SUPPORTED",
    "EchoResult",
    "InstanceResult",
    "Outcome",
    "SendReport",
    "SendTimings",
    "StatusCategory",
]

#: Local status when the peer accepted no context for the SOP class (PS3.7 C.5: "Refused:
#: SOP Class not supported").
STATUS_SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
#: Local status when the instance could not be read / converted ("Cannot understand").
STATUS_CANNOT_CONVERT: Final = 0xC000
#: Local status: not sent because the association could not be (re-)established.
STATUS_NOT_SENT: Final = 0x0110
#: Local status: the C-STORE was sent in full but no response came (the peer may have
#: stored the instance). The last code of the "Cannot understand" failure range, which
#: PS3.4 leaves to implementations; ``InstanceResult.outcome`` is the unambiguous field.
STATUS_IN_DOUBT: Final = 0xCFFF

# PS3.7 C.1-C.5 and the service classes of PS3.4: the codes that mean a warning (the
# operation was performed, with something to say); every other non-zero code is a
# failure (or not a final status: pending, cancel) for a C-STORE.
_WARNING_CODES: Final = frozenset({0x0001, 0x0107, 0x0116})
_WARNING_RANGE: Final = range(0xB000, 0xC000)


class StatusCategory(str, Enum):
    """What a DIMSE status means for the instance (PS3.7 Annex C)."""

    SUCCESS = "success"
    WARNING = "warning"  # stored, with coercion / elements discarded...
    FAILURE = "failure"

    @classmethod
    def of(cls, status: int) -> StatusCategory:
        """The category of a C-STORE status code (unknown codes count as failure).
        ``ValueError`` for a negative code."""
        code = int(status)
        if code < 0:
            raise ValueError(f"invalid status code {status!r} - must not be negative")
        if code == 0x0000:
            return cls.SUCCESS
        if code in _WARNING_CODES or code in _WARNING_RANGE:
            return cls.WARNING
        return cls.FAILURE


class Outcome(str, Enum):
    """Where an instance stands after a send - what the peer told us, or did not."""

    STORED = "stored"  # the peer answered success or warning
    REFUSED = "refused"  # the peer answered a failure status
    IN_DOUBT = "in_doubt"  # sent in full, no response: the peer may have stored it
    NOT_SENT = "not_sent"  # never sent in full (local reason, no association...)


class _StatusDatasetField:
    """``InstanceResult.status_dataset``: set from a pydicom ``Dataset`` or a
    :class:`~.dimse.DimseStatus` (what the send path has: no pydicom), read as a
    ``Dataset`` - built on first read, then kept."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._key = f"_{name}"

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> _StatusDatasetField: ...
    @overload
    def __get__(self, instance: object, owner: type | None = None) -> Dataset: ...
    def __get__(self, instance: object, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__.get(self._key)
        if not isinstance(value, (DimseStatus, type(None))):
            return value
        dataset = value.as_dataset() if value is not None else _empty_dataset()
        instance.__dict__[self._key] = dataset
        return dataset

    def __set__(self, instance: object, value: Dataset | DimseStatus | _StatusDatasetField) -> None:
        # the dataclass passes this field object itself when no value was given
        instance.__dict__[self._key] = None if value is self else value


def _empty_dataset() -> Dataset:
    from pydicom.dataset import Dataset

    return Dataset()


@dataclass(frozen=True)
class InstanceResult:
    """What happened to one instance.

    ``outcome`` says where it stands (:class:`Outcome`). ``status`` is the peer's DIMSE
    status when the peer answered (stored or refused); otherwise a local code:
    ``0x0122`` the peer accepted no presentation context for the SOP class, ``0xC000``
    the input could not be read or converted, ``0x0110`` not sent because the peer
    could not be reached / the association kept failing, ``0xCFFF`` in doubt (sent, no
    response). ``error`` says why in words. ``sent`` is True when the whole C-STORE
    request went out (stored, refused or in doubt); ``attempts`` counts the C-STOREs
    started for it.
    """

    source: str
    sop_instance_uid: str | None
    sop_class_uid: str | None
    status: int
    category: StatusCategory
    outcome: Outcome
    error: str | None = None
    sent: bool = False
    transfer_syntax: str | None = None
    conversion: str | None = None
    attempts: int = 0
    duration_s: float = 0.0
    #: The compatible status dataset; given as a Dataset or a DimseStatus, read as a
    #: Dataset (pydicom is imported only when it is read).
    status_dataset: _StatusDatasetField = field(
        default=_StatusDatasetField(), repr=False, compare=False
    )

    @property
    def ok(self) -> bool:
        """True when the peer confirmed it stored the instance (success or warning)."""
        return self.outcome is Outcome.STORED


@dataclass
class SendTimings:
    """Where the time went, in seconds. ``connect_s`` (TCP + TLS + association
    negotiation), ``store_s`` (C-STORE request to response), ``convert_s`` (reading and
    encoding instances not sent as stored bytes), ``release_s`` and ``backoff_s`` are
    summed over associations - with ``parallel > 1`` they can exceed ``total_s``."""

    scan_s: float = 0.0
    connect_s: float = 0.0
    store_s: float = 0.0
    convert_s: float = 0.0
    release_s: float = 0.0
    backoff_s: float = 0.0
    total_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """The timings as a plain dict."""
        return {k: round(v, 6) for k, v in self.__dict__.items()}


@dataclass
class SendReport:
    """The outcome of one send: every instance exactly once, in input order."""

    peer: str
    results: list[InstanceResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    associations: int = 0
    retries: int = 0
    bytes_sent: int = 0
    parallel: int = 1
    timings: SendTimings = field(default_factory=SendTimings)

    @property
    def nothing_to_send(self) -> bool:
        """True when the input held no instance (or all were filtered out)."""
        return not self.results

    @property
    def succeeded(self) -> list[InstanceResult]:
        """Instances the peer stored (status success or warning)."""
        return [r for r in self.results if r.ok]

    @property
    def warnings(self) -> list[InstanceResult]:
        """Instances stored with a warning status."""
        return [r for r in self.results if r.category is StatusCategory.WARNING]

    @property
    def failed(self) -> list[InstanceResult]:
        """Instances the peer did not confirm as stored: refused, in doubt, or not sent."""
        return [r for r in self.results if not r.ok]

    @property
    def refused(self) -> list[InstanceResult]:
        """Instances the peer answered with a failure status."""
        return self._with(Outcome.REFUSED)

    @property
    def in_doubt(self) -> list[InstanceResult]:
        """Instances sent in full that never got a response: the peer may have stored
        them (check on the peer before sending them again)."""
        return self._with(Outcome.IN_DOUBT)

    @property
    def not_sent(self) -> list[InstanceResult]:
        """Instances never sent in full (unreadable, no accepted context, no association)."""
        return self._with(Outcome.NOT_SENT)

    def _with(self, outcome: Outcome) -> list[InstanceResult]:
        return [r for r in self.results if r.outcome is outcome]

    @property
    def ok(self) -> bool:
        """True when every instance was confirmed stored (also True when there was
        nothing to send)."""
        return not self.failed

    def counts(self) -> dict[str, int]:
        """Instances per :class:`Outcome` value (every outcome present, 0 included)."""
        return {o.value: len(self._with(o)) for o in Outcome}

    def status_datasets(self) -> list[Dataset]:
        """One status dataset per instance (the compatible ``send_dicom_from_*`` result)."""
        return [r.status_dataset for r in self.results]

    def raise_for_failures(self) -> SendReport:
        """Raise :class:`StoreFailedError` listing the failed instances; else return self."""
        failed = self.failed
        if failed:
            lines = "; ".join(
                f"{r.source} (0x{r.status:04X}: {r.error or 'failed'})" for r in failed[:5]
            )
            more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
            what = "not stored"
            if self.in_doubt:
                what = (
                    f"not confirmed as stored ({len(self.in_doubt)} in doubt: sent, no "
                    f"response - the peer may have stored them)"
                )
            exc = StoreFailedError(
                f"{len(failed)} of {len(self.results)} instance(s) were {what} by "
                f"{self.peer}: {lines}{more}"
            )
            exc.report = self
            raise exc
        return self

    def summary(self) -> str:
        """One line: counts, time, associations, retries."""
        if self.nothing_to_send:
            return f"nothing to send to {self.peer} ({len(self.skipped)} skipped)"
        return (
            f"{len(self.results)} instance(s) to {self.peer}: {len(self.succeeded)} stored "
            f"({len(self.warnings)} with warnings), {len(self.refused)} refused, "
            f"{len(self.in_doubt)} in doubt (sent, no response), {len(self.not_sent)} not "
            f"sent, {len(self.skipped)} skipped in {self.timings.total_s:.3f} s "
            f"({self.associations} association(s), {self.retries} retr"
            f"{'y' if self.retries == 1 else 'ies'})"
        )


@dataclass(frozen=True)
class EchoResult:
    """Outcome of a C-ECHO. Truthy when the peer answered success (0x0000).

    ``latency_s`` is the C-ECHO round trip on the open association; ``total_s``
    includes connecting, negotiation and release.
    """

    ok: bool
    status: int | None
    latency_s: float
    total_s: float
    peer: str
    error: str | None = None

    def __bool__(self) -> bool:
        return self.ok

    @property
    def Status(self) -> int:
        """The C-ECHO status as the original's pydicom status dataset had it (0x0000 =
        success); 0x0122 when the peer does not support the Verification SOP class."""
        return STATUS_SOP_CLASS_NOT_SUPPORTED if self.status is None else self.status
