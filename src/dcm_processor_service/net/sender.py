"""Sending DICOM to a peer (PACS): C-STORE and C-ECHO.

:class:`DicomSender` keeps the platform's constructor and ``send_dicom_from_*`` methods
(SPEC §2.8) and adds :meth:`DicomSender.send`, which returns a :class:`SendReport`.
Every input form is reduced to one list of instances and goes through one core loop:

1. **scan** - read each file's File Meta Information (or the header without pixel data
   when a ``filter_callback`` must see it) to learn SOP class, instance and transfer
   syntax; nothing is decoded;
2. **negotiate** - propose presentation contexts for the (SOP class, transfer syntax)
   pairs actually present, plus an uncompressed fallback per SOP class; more than 128
   contexts are split over several associations;
3. **store** - send each instance as stored when the peer accepted that syntax (file
   bytes go to the socket unparsed), else convert it (decompress / re-encode / lossless
   compress) to a syntax the peer accepted, else record a per-instance failure;
4. **retry** - transient failures (refused, reset, aborted, timeouts) reopen the
   association with exponential backoff and resume after the last confirmed instance;
   an instance whose C-STORE went out in full but got no response is *in doubt* (the
   peer may have stored it): it is sent again ``in_doubt_resends`` times (default once:
   a C-STORE of the same SOP Instance UID replaces the earlier copy) and, if it never
   gets an answer, reported as :attr:`Outcome.IN_DOUBT` - never as "not sent";
5. **release** - the association is released (or aborted on error) in ``finally``.

Network-level failures that remain after the retries raise (see the error tree in
:mod:`dcm_processor_service._errors`); the partial :class:`SendReport` is attached to
the exception as ``exc.report`` and kept in :attr:`DicomSender.last_report`.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.status import code_to_category

from .._errors import InvalidInputError, NetworkError, StoreFailedError
from .._validation import validate_ae_title, validate_port
from ..store.records import Peer
from .association import (
    VERIFICATION_SOP_CLASS,
    Association,
    FileRegion,
    PayloadError,
    ProposedContext,
    Timeouts,
    is_in_doubt,
    is_transient,
    status_dataset,
)
from .contexts import (
    STATUS_CANNOT_CONVERT,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    Route,
    plan_contexts,
    uid_name,
)
from .contexts import (
    choose_route as _choose_route,
)
from .instances import (
    DicomdirFile,
    FilterCallback,
    Instance,
    SourceLike,
    build_payload,
    gather,
)
from .tls import build_client_ssl_context

__all__ = [
    "CALLING_AET_ENV",
    "DEFAULT_CALLED_AET",
    "DEFAULT_CALLING_AET",
    "STATUS_IN_DOUBT",
    "STATUS_NOT_SENT",
    "DicomSender",
    "EchoResult",
    "InstanceResult",
    "Outcome",
    "SendReport",
    "SendTimings",
    "StatusCategory",
    "default_calling_ae_title",
]

logger = logging.getLogger(__name__)

#: Environment variable overriding the calling AE title of :meth:`DicomSender.for_peer`
#: (the hyphenated spelling ``DCM-PROCESSOR-SERVICE-CALLING-AET`` is read too and wins).
CALLING_AET_ENV: Final = "DCM_PROCESSOR_SERVICE_CALLING_AET"
#: Our calling AE title when neither an argument nor the environment gives one.
DEFAULT_CALLING_AET: Final = "DCMPROCESSOR"
#: The called AE title when the constructor gets none (the platform's historic default).
DEFAULT_CALLED_AET: Final = "ANY-SCP"

#: Local status: not sent because the association could not be (re-)established.
STATUS_NOT_SENT: Final = 0x0110
#: The original's per-call connection overrides (see :meth:`DicomSender.with_overrides`).
_OVERRIDE_KEYS: Final = frozenset(
    {
        "host",
        "port",
        "aet",
        "ae_title",
        "tls",
        "enable_tls",
        "cert_file",
        "tls_cert_file",
        "key_file",
        "tls_key_file",
        "ca_file",
        "tls_ca_file",
        "trusted_ca",
        "tls_trusted_ca",
    }
)
#: Local status: the C-STORE was sent in full but no response came (the peer may have
#: stored the instance). The last code of the "Cannot understand" failure range, which
#: PS3.4 leaves to implementations; ``InstanceResult.outcome`` is the unambiguous field.
STATUS_IN_DOUBT: Final = 0xCFFF


def default_calling_ae_title(environ: Mapping[str, str] | None = None) -> str:
    """Our calling AE title: ``DCM-PROCESSOR-SERVICE-CALLING-AET`` or
    ``DCM_PROCESSOR_SERVICE_CALLING_AET`` from the environment, else ``DCMPROCESSOR``."""
    env = os.environ if environ is None else environ
    for name in (CALLING_AET_ENV.replace("_", "-"), CALLING_AET_ENV):
        value = env.get(name)
        if value:
            return validate_ae_title(value, name)
    return DEFAULT_CALLING_AET


class StatusCategory(str, Enum):
    """What a DIMSE status means for the instance (PS3.7 Annex C)."""

    SUCCESS = "success"
    WARNING = "warning"  # stored, with coercion / elements discarded...
    FAILURE = "failure"

    @classmethod
    def of(cls, status: int) -> StatusCategory:
        """The category of a C-STORE status code (unknown codes count as failure)."""
        category = code_to_category(int(status))
        if category == "Success":
            return cls.SUCCESS
        if category == "Warning":
            return cls.WARNING
        return cls.FAILURE


class Outcome(str, Enum):
    """Where an instance stands after a send - what the peer told us, or did not."""

    STORED = "stored"  # the peer answered success or warning
    REFUSED = "refused"  # the peer answered a failure status
    IN_DOUBT = "in_doubt"  # sent in full, no response: the peer may have stored it
    NOT_SENT = "not_sent"  # never sent in full (local reason, no association...)


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
    status_dataset: Dataset = field(default_factory=Dataset, repr=False, compare=False)

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
            exc.report = self  # type: ignore[attr-defined]
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


@dataclass
class _Unanswered:
    """An instance whose C-STORE went out in full without a response (so far)."""

    times: int
    reason: str
    route: Route


class _Run:
    """Bookkeeping of one send, shared by the worker threads."""

    def __init__(self, peer: str, n: int, parallel: int) -> None:
        self.lock = threading.Lock()
        self.results: dict[int, InstanceResult] = {}
        self.unanswered: dict[int, _Unanswered] = {}  # by instance index
        self.report = SendReport(peer=peer, parallel=parallel)
        self.n = n

    def add_time(self, name: str, seconds: float) -> None:
        with self.lock:
            setattr(self.report.timings, name, getattr(self.report.timings, name) + seconds)

    def record(self, inst: Instance, result: InstanceResult) -> None:
        with self.lock:
            if inst.index in self.results:  # never report an instance twice
                raise AssertionError(f"instance {inst.source} recorded twice")
            self.results[inst.index] = result
        if result.ok:
            logger.debug(
                "stored %s (%s) status 0x%04X", inst.source, inst.sop_instance_uid, result.status
            )
        elif result.outcome is Outcome.IN_DOUBT:
            logger.warning("%s %s", inst.source, result.error)
        else:
            logger.warning("%s not stored: %s", inst.source, result.error)

    def record_local(self, inst: Instance, status: int, reason: str) -> None:
        """Record ``inst`` as not sent, for a local reason (``status`` a local code)."""
        self.record(inst, _local_result(inst, status, Outcome.NOT_SENT, reason, reason))

    def note_unanswered(self, inst: Instance, route: Route, exc: BaseException) -> None:
        """Note that a C-STORE of ``inst`` went out in full and got no response."""
        with self.lock:
            before = self.unanswered.get(inst.index)
            times = 1 + (before.times if before else 0)
            self.unanswered[inst.index] = _Unanswered(times, str(exc), route)
        logger.warning(
            "%s (%s): C-STORE sent, no response (%s) - the peer may have stored it",
            inst.source,
            inst.sop_instance_uid,
            exc,
        )

    def settle_in_doubt(self, inst: Instance, resends: int) -> bool:
        """After a failed C-STORE of ``inst``: when it went out unanswered more than
        ``resends`` times, record it in doubt and return True; else False (it is to be
        sent again)."""
        with self.lock:
            doubt = self.unanswered.get(inst.index)
        if doubt is None or doubt.times <= resends:
            return False
        self._record_in_doubt(inst, doubt)
        return True

    def record_unfinished(self, inst: Instance, reason: str) -> None:
        """Record an instance the send gave up on: in doubt when one of its C-STOREs
        went out unanswered, else not sent (``reason`` says why the send stopped)."""
        with self.lock:
            doubt = self.unanswered.get(inst.index)
        if doubt is None:
            self.record_local(inst, STATUS_NOT_SENT, f"not sent: {reason}")
        else:
            self._record_in_doubt(inst, doubt)

    def _record_in_doubt(self, inst: Instance, doubt: _Unanswered) -> None:
        error = (
            f"in doubt: sent, no response ({doubt.reason}) - the peer may have stored it; "
            f"C-STORE sent {inst.attempts} time(s), {doubt.times} without a response"
        )
        comment = "in doubt: sent, no response - the peer may have stored it"
        result = _local_result(
            inst, STATUS_IN_DOUBT, Outcome.IN_DOUBT, error, comment, route=doubt.route
        )
        self.record(inst, result)


def _local_result(
    inst: Instance,
    status: int,
    outcome: Outcome,
    error: str,
    comment: str,
    *,
    route: Route | None = None,
) -> InstanceResult:
    """The result of an instance the peer gave no status for (not sent, or in doubt
    when it went out on ``route``): ``status`` is a local code."""
    return InstanceResult(
        source=inst.source,
        sop_instance_uid=inst.sop_instance_uid,
        sop_class_uid=inst.sop_class_uid,
        status=status,
        category=StatusCategory.FAILURE,
        outcome=outcome,
        error=error,
        sent=route is not None,
        transfer_syntax=route.transfer_syntax if route else None,
        conversion=route.conversion if route else None,
        attempts=inst.attempts,
        status_dataset=status_dataset(status, error_comment=comment),
    )


class DicomSender:
    """Send DICOM instances to one peer (C-STORE) and check it (C-ECHO).

    The positional parameters are the platform's (SPEC §2.8). ``ae_title`` is *our*
    calling AE title, ``server_ae_title`` the peer's called AE title (default
    ``"ANY-SCP"``).

    TLS (``enable_tls``): the peer certificate is verified against ``tls_ca_file`` (and
    the system trust store when ``tls_trusted_ca`` is True or no CA file is given) and
    must name ``server_host`` (or ``tls_server_name``); ``tls_cert_file`` +
    ``tls_key_file`` are our client certificate for mutual TLS; TLS 1.2 minimum.

    ``additional_sops`` are proposed even when absent from the data;
    ``additional_syntaxes`` are offered in every SOP class's fallback context.

    Keyword-only tuning: ``max_retries``/``backoff``/``backoff_max`` (transient failures
    are retried ``max_retries`` times in a row, waiting ``backoff * 2**n`` seconds,
    at most ``backoff_max``), ``in_doubt_resends`` (how many times an instance whose
    C-STORE went out without a response is sent again; 0 = never, it is reported in
    doubt at once), ``parallel`` (associations used at once), the timeouts (each a
    deadline for a whole step: see :class:`~.association.Timeouts`), ``max_pdu`` (the
    largest PDU we accept, 0 = unlimited), and ``tcp_nodelay`` / ``tcp_quickack`` (on
    by default; off only to measure their effect).
    """

    def __init__(
        self,
        ae_title: str,
        server_host: str,
        server_port: int,
        server_ae_title: str | None = None,
        enable_tls: bool = False,
        tls_cert_file: str | os.PathLike[str] | None = None,
        tls_key_file: str | os.PathLike[str] | None = None,
        tls_ca_file: str | os.PathLike[str] | None = None,
        tls_trusted_ca: bool = False,
        additional_sops: Iterable[str] | None = None,
        additional_syntaxes: Iterable[str] | None = None,
        *,
        tls_server_name: str | None = None,
        max_retries: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
        in_doubt_resends: int = 1,
        parallel: int = 1,
        connect_timeout: float | None = 10.0,
        acse_timeout: float | None = 30.0,
        dimse_timeout: float | None = 120.0,
        network_timeout: float | None = 60.0,
        max_pdu: int = 0,
        tcp_nodelay: bool = True,
        tcp_quickack: bool = True,
    ) -> None:
        self.ae_title = validate_ae_title(ae_title, "ae_title")
        self.server_host = _host(server_host)
        self.server_port = validate_port(server_port, "server_port")
        self.server_ae_title = validate_ae_title(
            DEFAULT_CALLED_AET if server_ae_title is None else server_ae_title, "server_ae_title"
        )
        self.additional_sops = tuple(_uids(additional_sops, "additional_sops"))
        self.additional_syntaxes = tuple(_uids(additional_syntaxes, "additional_syntaxes"))
        self.max_retries = _non_negative_int(max_retries, "max_retries")
        self.backoff = _non_negative_float(backoff, "backoff")
        self.backoff_max = _non_negative_float(backoff_max, "backoff_max")
        self.in_doubt_resends = _non_negative_int(in_doubt_resends, "in_doubt_resends")
        self.parallel = _positive_int(parallel, "parallel")
        if (
            not isinstance(max_pdu, int)
            or isinstance(max_pdu, bool)
            or not (max_pdu == 0 or 4096 <= max_pdu <= 0xFFFFFFFF)
        ):
            raise InvalidInputError(
                f"invalid 'max_pdu' value {max_pdu!r} - must be 0 (unlimited) or 4096..4294967295"
            )
        self.max_pdu = max_pdu
        self.timeouts = Timeouts(
            connect=connect_timeout, acse=acse_timeout, dimse=dimse_timeout, network=network_timeout
        )
        self.tcp_nodelay = bool(tcp_nodelay)
        self.tcp_quickack = bool(tcp_quickack)
        self.enable_tls = bool(enable_tls)
        self.tls_server_name = tls_server_name or None
        self._tls_files = (tls_cert_file, tls_key_file, tls_ca_file, bool(tls_trusted_ca))
        self._ssl_context = (
            build_client_ssl_context(
                ca_file=tls_ca_file,
                cert_file=tls_cert_file,
                key_file=tls_key_file,
                trusted_ca=bool(tls_trusted_ca),
            )
            if self.enable_tls
            else None
        )
        #: The report of the last send (also set when the send raised).
        self.last_report: SendReport | None = None

    # -- construction from a peer record -------------------------------------------------
    @classmethod
    def for_peer(
        cls,
        peer: Peer,
        calling_ae_title: str | None = None,
        *,
        additional_sops: Iterable[str] | None = None,
        additional_syntaxes: Iterable[str] | None = None,
        environ: Mapping[str, str] | None = None,
        **options: Any,
    ) -> DicomSender:
        """A sender for a :class:`~dcm_processor_service.store.records.Peer`: called AE
        title ``peer.aet``, TLS from ``peer.tls``/``cert_file``/``key_file``/``ca_file``.

        Our calling AE title: ``calling_ae_title``, else the environment variable
        ``DCM_PROCESSOR_SERVICE_CALLING_AET`` (or ``DCM-PROCESSOR-SERVICE-CALLING-AET``),
        else ``"DCMPROCESSOR"``. ``options`` are the keyword-only tuning parameters.
        """
        if not isinstance(peer, Peer):
            raise InvalidInputError(f"invalid 'peer' value {peer!r} - must be a Peer record")
        aet = (
            calling_ae_title if calling_ae_title is not None else default_calling_ae_title(environ)
        )
        return cls(
            aet,
            peer.host,
            peer.port,
            peer.aet,
            enable_tls=peer.tls,
            tls_cert_file=peer.cert_file if peer.tls else None,
            tls_key_file=peer.key_file if peer.tls else None,
            tls_ca_file=peer.ca_file if peer.tls else None,
            additional_sops=additional_sops,
            additional_syntaxes=additional_syntaxes,
            **options,
        )

    @property
    def peer_label(self) -> str:
        """``CALLED_AET@host:port`` (+ `` (TLS)``) as used in messages."""
        tls = " (TLS)" if self.enable_tls else ""
        return f"{self.server_ae_title}@{self.server_host}:{self.server_port}{tls}"

    def __repr__(self) -> str:
        return f"DicomSender({self.ae_title!r} -> {self.peer_label})"

    # -- compatible API --------------------------------------------------------------------
    def with_overrides(self, **overrides: Any) -> DicomSender:
        """A copy of this sender with the original's per-call connection overrides
        applied: ``host``, ``port``, ``aet``/``ae_title`` (the peer's called AE title),
        ``tls``/``enable_tls`` and - with TLS on - ``cert_file``/``tls_cert_file``,
        ``key_file``/``tls_key_file``, ``ca_file``/``tls_ca_file``,
        ``trusted_ca``/``tls_trusted_ca``. ``None`` values are ignored; an unknown key
        raises :class:`InvalidInputError`."""
        unknown = sorted(set(overrides) - _OVERRIDE_KEYS)
        if unknown:
            raise InvalidInputError(
                f"unknown connection override(s) {', '.join(map(repr, unknown))} - known: "
                f"{', '.join(sorted(_OVERRIDE_KEYS))}"
            )

        def pick(*names: str) -> Any:
            return next((overrides[n] for n in names if overrides.get(n) is not None), None)

        if all(v is None for v in overrides.values()):
            return self
        clone = copy.copy(self)
        host, port, aet, tls = (
            pick("host"),
            pick("port"),
            pick("aet", "ae_title"),
            pick("tls", "enable_tls"),
        )
        if host is not None:
            clone.server_host = _host(host)
        if port is not None:
            clone.server_port = validate_port(port, "port")
        if aet is not None:
            clone.server_ae_title = validate_ae_title(aet, "aet")
        if tls is not None:
            clone.enable_tls = bool(tls)
            cert, key, ca, trusted = self._tls_files
            if clone.enable_tls:
                cert = pick("cert_file", "tls_cert_file") or cert
                key = pick("key_file", "tls_key_file") or key
                ca = pick("ca_file", "tls_ca_file") or ca
                found = pick("trusted_ca", "tls_trusted_ca")
                trusted = trusted if found is None else bool(found)
            clone._tls_files = (cert, key, ca, trusted)
            clone._ssl_context = (
                build_client_ssl_context(
                    ca_file=ca, cert_file=cert, key_file=key, trusted_ca=trusted
                )
                if clone.enable_tls
                else None
            )
        return clone

    def _compat_send(
        self, source: SourceLike, filter_callback: FilterCallback | None, overrides: dict[str, Any]
    ) -> list[Dataset]:
        sender = self.with_overrides(**overrides)
        try:
            return sender.send(source, filter_callback=filter_callback).status_datasets()
        finally:
            self.last_report = sender.last_report

    def send_dicom_from_path(
        self,
        path: str | os.PathLike[str],
        filter_callback: FilterCallback | None = None,
        **kwargs: Any,
    ) -> list[Dataset]:
        """Send a file, or every file under a folder (recursively); return one status
        dataset per instance. A DICOMDIR met in the folder is skipped. ``kwargs``: the
        per-call connection overrides of :meth:`with_overrides`."""
        if not isinstance(path, (str, os.PathLike)) or not Path(path).exists():
            raise InvalidInputError(f"invalid 'path' value {path!r} - no such file or folder")
        return self._compat_send(path, filter_callback, kwargs)

    def send_dicom_from_filelist(
        self,
        filelist: Iterable[str | os.PathLike[str]],
        filter_callback: FilterCallback | None = None,
        **kwargs: Any,
    ) -> list[Dataset]:
        """Send the listed files; a missing or unreadable file gets a failure status and
        the others are still sent. ``kwargs``: per-call connection overrides."""
        files = [filelist] if isinstance(filelist, (str, os.PathLike)) else list(filelist)
        for i, item in enumerate(files):
            if not isinstance(item, (str, os.PathLike)):
                raise InvalidInputError(
                    f"invalid 'filelist' item #{i} {item!r} - must be a file path"
                )
        return self._compat_send(files, filter_callback, kwargs)

    def send_dicom_from_dataset(
        self,
        datasets: Dataset | Iterable[Dataset],
        filter_callback: FilterCallback | None = None,
        **kwargs: Any,
    ) -> list[Dataset]:
        """Send pydicom datasets (one, or an iterable); reported as ``"dataset #i"``.
        ``kwargs``: per-call connection overrides."""
        items = [datasets] if isinstance(datasets, Dataset) else list(datasets)
        for i, item in enumerate(items):
            if not isinstance(item, Dataset):
                raise InvalidInputError(
                    f"invalid 'datasets' item #{i}: {type(item).__name__} - must be a pydicom Dataset"
                )
        return self._compat_send(items, filter_callback, kwargs)

    def send_dicom_from_dicomdir(
        self,
        filename: str | os.PathLike[str],
        filter_callback: FilterCallback | None = None,
        **kwargs: Any,
    ) -> list[Dataset]:
        """Send the instances a DICOMDIR references (``filename`` may also be the folder
        holding the DICOMDIR). ``kwargs``: per-call connection overrides."""
        path = Path(filename)
        if path.is_dir():
            path = path / "DICOMDIR"
        if not path.is_file():
            raise InvalidInputError(f"invalid 'filename' value {filename!r} - no such DICOMDIR")
        return self._compat_send(DicomdirFile(path), filter_callback, kwargs)

    # -- the core ----------------------------------------------------------------------------
    def send(
        self,
        source: SourceLike,
        *,
        filter_callback: FilterCallback | None = None,
        parallel: int | None = None,
    ) -> SendReport:
        """Send ``source`` and return the :class:`SendReport`.

        ``source``: a file or folder path, a DICOMDIR path, a pydicom Dataset, or an
        iterable mixing them. ``filter_callback(dataset) -> bool`` sees each instance's
        header (for files: read with ``stop_before_pixels``; for datasets: the dataset)
        and decides whether it is sent. ``parallel`` overrides the sender's setting.

        Per-instance problems (unreadable file, no accepted context, failure status)
        are results, not exceptions. Raises, after the retries, on network failures
        that left instances unsent: :class:`PeerUnreachableError`,
        :class:`AssociationRejectedError`, :class:`AssociationAbortedError`,
        :class:`TLSError` (each with ``.report``).
        """
        workers = self.parallel if parallel is None else _positive_int(parallel, "parallel")
        t0 = time.perf_counter()
        instances, skipped = gather(source, filter_callback)
        run = _Run(self.peer_label, len(instances), workers)
        run.report.skipped = skipped
        run.report.timings.scan_s = time.perf_counter() - t0
        try:
            fatal = self._send_instances(run, instances, workers)
        finally:
            report = run.report
            report.results = [run.results[i] for i in sorted(run.results)]
            report.timings.total_s = time.perf_counter() - t0
            self.last_report = report
        if report.nothing_to_send:
            logger.info("nothing to send to %s (%d skipped)", self.peer_label, len(skipped))
        else:
            logger.log(logging.INFO if report.ok else logging.WARNING, "%s", report.summary())
        if fatal is not None:
            fatal.report = report  # type: ignore[attr-defined]
            raise fatal
        return report

    def _send_instances(
        self, run: _Run, instances: list[Instance], workers: int
    ) -> NetworkError | None:
        sendable: list[Instance] = []
        for inst in instances:
            if inst.sendable:
                sendable.append(inst)
            else:
                run.record_local(inst, STATUS_CANNOT_CONVERT, f"not sent: {inst.error}")
        if not sendable:
            return None
        plan = plan_contexts(
            ((i.sop_class_uid, i.transfer_syntax) for i in sendable),  # type: ignore[misc]
            extra_sop_classes=self.additional_sops,
            extra_syntaxes=self.additional_syntaxes,
        )
        fatal: NetworkError | None = None
        for group, contexts in enumerate(plan.groups):
            items = [i for i in sendable if plan.group_of.get(i.sop_class_uid or "") == group]
            if not items:
                continue
            if fatal is None:
                if len(plan.groups) > 1:
                    logger.info(
                        "association group %d/%d: %d contexts, %d instance(s)",
                        group + 1,
                        len(plan.groups),
                        len(contexts),
                        len(items),
                    )
                fatal = self._send_group(run, contexts, items, workers)
            if fatal is not None:
                for inst in items:
                    if inst.index not in run.results:
                        run.record_unfinished(inst, str(fatal))
        return fatal

    def _open(self, contexts: Sequence[ProposedContext]) -> Association:
        return Association.request(
            self.server_host,
            self.server_port,
            calling_ae_title=self.ae_title,
            called_ae_title=self.server_ae_title,
            contexts=contexts,
            ssl_context=self._ssl_context,
            server_hostname=self.tls_server_name or self.server_host,
            max_pdu=self.max_pdu,
            timeouts=self.timeouts,
            tcp_nodelay=self.tcp_nodelay,
            tcp_quickack=self.tcp_quickack,
        )

    def _send_group(
        self,
        run: _Run,
        contexts: Sequence[ProposedContext],
        items: list[Instance],
        workers: int,
    ) -> NetworkError | None:
        queue: deque[Instance] = deque(items)
        stop = threading.Event()
        errors: list[BaseException] = []

        def backoff_or_give_up(exc: NetworkError, failures: int) -> bool:
            if stop.is_set() or not is_transient(exc) or failures >= self.max_retries:
                return False
            delay = min(self.backoff * (2**failures), self.backoff_max)
            with run.lock:
                run.report.retries += 1
            logger.warning("%s - retry %d/%d in %.2f s", exc, failures + 1, self.max_retries, delay)
            t = time.perf_counter()
            stop.wait(delay)
            run.add_time("backoff_s", time.perf_counter() - t)
            return not stop.is_set()

        def fail(exc: BaseException) -> None:
            with run.lock:
                errors.append(exc)
            stop.set()

        def worker() -> None:
            failures = 0  # consecutive failed attempts without progress
            while not stop.is_set():
                with run.lock:
                    if not queue:
                        return
                t = time.perf_counter()
                try:
                    assoc = self._open(contexts)
                except NetworkError as exc:
                    run.add_time("connect_s", time.perf_counter() - t)
                    if backoff_or_give_up(exc, failures):
                        failures += 1
                        continue
                    fail(exc)
                    return
                run.add_time("connect_s", time.perf_counter() - t)
                with run.lock:
                    run.report.associations += 1
                try:
                    while not stop.is_set() and assoc.is_open:
                        with run.lock:
                            inst = queue.popleft() if queue else None
                        if inst is None:
                            break
                        try:
                            self._store_one(run, assoc, inst)
                        except BaseException:
                            if not run.settle_in_doubt(inst, self.in_doubt_resends):
                                with run.lock:
                                    queue.appendleft(inst)  # not confirmed: resend later
                            raise
                        failures = 0
                except NetworkError as exc:
                    with run.lock:
                        finished = not queue
                    if finished:  # the failure is in the results already: nothing to retry
                        logger.debug("association with %s ended: %s", self.peer_label, exc)
                        return
                    if backoff_or_give_up(exc, failures):
                        failures += 1
                        continue
                    fail(exc)
                    return
                finally:
                    if assoc.is_open:
                        t = time.perf_counter()
                        assoc.release()
                        run.add_time("release_s", time.perf_counter() - t)
                    else:
                        assoc.abort()
                    with run.lock:
                        run.report.bytes_sent += assoc.bytes_sent

        def guarded() -> None:
            try:
                worker()
            except BaseException as exc:  # a bug or KeyboardInterrupt: stop everyone
                fail(exc)

        n = max(1, min(workers, len(items)))
        if n == 1:
            worker()  # on the caller's thread: bugs propagate with their traceback
        else:
            threads = [
                threading.Thread(target=guarded, name=f"dicom-send-{i}", daemon=True)
                for i in range(n)
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        for exc in errors:
            if not isinstance(exc, NetworkError):
                raise exc
        if not queue:
            if errors:
                logger.warning(
                    "an association failed (%s) but every instance was delivered", errors[0]
                )
            return None
        if errors:
            return errors[0]  # type: ignore[return-value]
        return NetworkError(f"{len(queue)} instance(s) were not sent to {self.peer_label}")

    def _store_one(self, run: _Run, assoc: Association, inst: Instance) -> None:
        assert inst.sop_class_uid and inst.sop_instance_uid and inst.transfer_syntax
        route = _choose_route(
            inst.sop_class_uid,
            inst.transfer_syntax,
            assoc.contexts.values(),
            has_pixel_data=inst.has_pixel_data,
        )
        if not route.sendable:
            run.record_local(inst, route.status, route.reason or "not sent")
            return
        t = time.perf_counter()
        if route.conversion == "none" and inst.path is not None and inst.offset is not None:
            payload: bytes | FileRegion = FileRegion(inst.path, inst.offset)
        else:
            try:
                payload = build_payload(inst, route)
            except Exception as exc:  # decoder/encoder errors of this one instance
                logger.debug("conversion of %s failed", inst.source, exc_info=True)
                target = uid_name(route.transfer_syntax or "")
                run.record_local(
                    inst,
                    STATUS_CANNOT_CONVERT,
                    f"not sent: cannot convert from {uid_name(inst.transfer_syntax)} to "
                    f"{target}: {type(exc).__name__}: {exc}",
                )
                return
            run.add_time("convert_s", time.perf_counter() - t)
        inst.attempts += 1
        t = time.perf_counter()
        try:
            rsp = assoc.c_store(
                route.context_id,  # type: ignore[arg-type]
                inst.sop_class_uid,
                inst.sop_instance_uid,
                payload,
            )
        except PayloadError as exc:
            run.record_local(inst, STATUS_CANNOT_CONVERT, f"not sent: {exc}")
            return
        except NetworkError as exc:
            if is_in_doubt(exc):
                run.note_unanswered(inst, route, exc)
            raise
        elapsed = time.perf_counter() - t
        run.add_time("store_s", elapsed)
        status = int(rsp.Status)
        category = StatusCategory.of(status)
        comment = rsp.get("ErrorComment")
        error = None
        if category is not StatusCategory.SUCCESS:
            error = f"peer answered status 0x{status:04X} ({category.value})" + (
                f": {comment}" if comment else ""
            )
            if inst.index in run.unanswered:
                error += "; an earlier C-STORE of it got no response"
        run.record(
            inst,
            InstanceResult(
                source=inst.source,
                sop_instance_uid=inst.sop_instance_uid,
                sop_class_uid=inst.sop_class_uid,
                status=status,
                category=category,
                outcome=(Outcome.REFUSED if category is StatusCategory.FAILURE else Outcome.STORED),
                error=error,
                sent=True,
                transfer_syntax=route.transfer_syntax,
                conversion=route.conversion,
                attempts=inst.attempts,
                duration_s=elapsed,
                status_dataset=rsp,
            ),
        )

    # -- C-ECHO --------------------------------------------------------------------------
    def send_echo(self, **kwargs: Any) -> EchoResult:
        """C-ECHO the peer (``kwargs``: the per-call connection overrides of
        :meth:`with_overrides`).

        Returns an :class:`EchoResult` (truthy when the peer answered success; its
        ``.Status`` is the status code, as on the original's status dataset); it is
        falsy with ``error`` set when the peer answered a failure status or does not
        support the Verification SOP class. Like :meth:`send`, raises
        :class:`PeerUnreachableError`, :class:`AssociationRejectedError`,
        :class:`AssociationAbortedError` or :class:`TLSError` when no association can be
        used (no retries: an echo is a health check).
        """
        if kwargs:
            return self.with_overrides(**kwargs).send_echo()
        contexts = [
            ProposedContext(
                1,
                VERIFICATION_SOP_CLASS,
                (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)),
            )
        ]
        t0 = time.perf_counter()
        assoc = self._open(contexts)
        latency = 0.0
        try:
            if not any(c.accepted for c in assoc.contexts.values()):
                reason = next(iter(assoc.contexts.values())).result_text
                return EchoResult(
                    False,
                    None,
                    0.0,
                    time.perf_counter() - t0,
                    self.peer_label,
                    f"the peer does not support the Verification SOP class ({reason})",
                )
            t1 = time.perf_counter()
            rsp = assoc.c_echo()
            latency = time.perf_counter() - t1
        finally:
            if assoc.is_open:
                assoc.release()
        status = int(rsp.Status)
        ok = status == 0
        error = None if ok else f"peer answered C-ECHO status 0x{status:04X}"
        result = EchoResult(ok, status, latency, time.perf_counter() - t0, self.peer_label, error)
        logger.info(
            "C-ECHO %s: %s in %.1f ms", self.peer_label, "ok" if ok else error, latency * 1000
        )
        return result


# -- argument checks ------------------------------------------------------------------------
_UID_RE: Final = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def _uids(values: Iterable[Any] | None, what: str) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for value in values:
        uid = str(value).strip()
        if len(uid) > 64 or not _UID_RE.match(uid):
            raise InvalidInputError(
                f"invalid '{what}' item {value!r} - not a valid UID (dot-separated numbers, "
                f"no leading zeros, at most 64 characters)"
            )
        out.append(uid)
    return out


def _host(value: Any) -> str:
    rule = "must be a host name or IP address"
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise InvalidInputError(f"invalid 'server_host' value {value!r} - {rule}")
    host = value.strip()
    try:
        host.encode("idna")
    except UnicodeError as exc:
        raise InvalidInputError(f"invalid 'server_host' value {value!r} - {rule} ({exc})") from None
    return host


def _non_negative_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInputError(f"invalid '{what}' value {value!r} - must be an integer >= 0")
    return value


def _positive_int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidInputError(f"invalid '{what}' value {value!r} - must be an integer >= 1")
    return value


def _non_negative_float(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidInputError(f"invalid '{what}' value {value!r} - must be a number >= 0")
    return float(value)
