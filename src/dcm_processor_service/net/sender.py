"""Sending DICOM to a peer (PACS): C-STORE and C-ECHO.

:class:`DicomSender` keeps the platform's constructor and ``send_dicom_from_*`` methods
(SPEC §2.8) and adds :meth:`DicomSender.send`, which returns a
:class:`~.results.SendReport`. Every input form is reduced to one list of instances
(:mod:`.instances`) and goes through one core loop (:mod:`.delivery`):

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
   gets an answer, reported as :attr:`~.results.Outcome.IN_DOUBT` - never as "not sent";
5. **release** - the association is released (or aborted on error) in ``finally``.

Network-level failures that remain after the retries raise (see the error tree in
:mod:`dcm_processor_service._errors`); the partial :class:`SendReport` is attached to
the exception as ``exc.report`` and kept in :attr:`DicomSender.last_report`. The
sender's settings (defaults, the calling AE title from the environment, the original's
per-call overrides) are checked in :mod:`.options`.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import InvalidInputError, NetworkError
from .._uids import UNCOMPRESSED_LE
from .._validation import validate_ae_title, validate_port
from .association import Association, Timeouts
from .delivery import RetryPolicy, SendLedger, deliver
from .dimse import VERIFICATION_SOP_CLASS
from .instances import FilterCallback, Instance, SourceLike
from .options import (
    DEFAULT_CALLED_AET,
    check_count,
    check_host,
    check_max_pdu,
    check_seconds,
    check_uids,
    connection_overrides,
    default_calling_ae_title,
)
from .pdu import ProposedContext
from .results import EchoResult, SendReport
from .send_api import SendMethods

if TYPE_CHECKING:
    from ..store.records import Peer

__all__ = ["DicomSender"]

logger = logging.getLogger(__name__)


class DicomSender(SendMethods):
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
        self.server_host = check_host(server_host)
        self.server_port = validate_port(server_port, "server_port")
        self.server_ae_title = validate_ae_title(
            DEFAULT_CALLED_AET if server_ae_title is None else server_ae_title, "server_ae_title"
        )
        self.additional_sops = tuple(check_uids(additional_sops, "additional_sops"))
        self.additional_syntaxes = tuple(check_uids(additional_syntaxes, "additional_syntaxes"))
        self.max_retries = check_count(max_retries, "max_retries", minimum=0)
        self.backoff = check_seconds(backoff, "backoff")
        self.backoff_max = check_seconds(backoff_max, "backoff_max")
        self.in_doubt_resends = check_count(in_doubt_resends, "in_doubt_resends", minimum=0)
        self.parallel = check_count(parallel, "parallel", minimum=1)
        self.max_pdu = check_max_pdu(max_pdu)
        self.timeouts = Timeouts(
            connect=connect_timeout, acse=acse_timeout, dimse=dimse_timeout, network=network_timeout
        )
        self.tcp_nodelay = bool(tcp_nodelay)
        self.tcp_quickack = bool(tcp_quickack)
        self.tls_server_name = tls_server_name or None
        self._set_tls(
            bool(enable_tls), (tls_cert_file, tls_key_file, tls_ca_file, bool(tls_trusted_ca))
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
        from ..store.records import Peer  # the store layer only when a peer record is used

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
        found = connection_overrides(overrides)
        if not found:
            return self
        clone = copy.copy(self)
        if "host" in found:
            clone.server_host = check_host(found["host"])
        if "port" in found:
            clone.server_port = validate_port(found["port"], "port")
        if "aet" in found:
            clone.server_ae_title = validate_ae_title(found["aet"], "aet")
        if "tls" in found:
            cert, key, ca, trusted = self._tls_files
            if found["tls"]:
                cert = found.get("cert_file") or cert
                key = found.get("key_file") or key
                ca = found.get("ca_file") or ca
                trusted = bool(found.get("trusted_ca", trusted))
            clone._set_tls(bool(found["tls"]), (cert, key, ca, trusted))
        return clone

    def _set_tls(self, enable: bool, files: tuple[Any, Any, Any, bool]) -> None:
        """Use TLS or not; ``files``: client certificate, its key, CA file, whether the
        system trust store is trusted too (kept for :meth:`with_overrides`)."""
        cert, key, ca, trusted = files
        self.enable_tls = enable
        self._tls_files = files
        self._ssl_context = None
        if enable:  # ssl is imported for TLS peers only
            from .tls import build_client_ssl_context

            self._ssl_context = build_client_ssl_context(
                ca_file=ca, cert_file=cert, key_file=key, trusted_ca=trusted
            )

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
        workers = (
            self.parallel if parallel is None else check_count(parallel, "parallel", minimum=1)
        )

        def run(ledger: SendLedger, instances: list[Instance]) -> NetworkError | None:
            return deliver(
                ledger,
                instances,
                workers=workers,
                connect=self._open,
                policy=RetryPolicy(
                    self.max_retries, self.backoff, self.backoff_max, self.in_doubt_resends
                ),
                extra_sop_classes=self.additional_sops,
                extra_syntaxes=self.additional_syntaxes,
            )

        return self._send_with(source, filter_callback, workers, run)

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
        contexts = [ProposedContext(1, VERIFICATION_SOP_CLASS, UNCOMPRESSED_LE)]
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
        status = rsp.status
        ok = status == 0
        error = None if ok else f"peer answered C-ECHO status 0x{status:04X}"
        result = EchoResult(ok, status, latency, time.perf_counter() - t0, self.peer_label, error)
        logger.info(
            "C-ECHO %s: %s in %.1f ms", self.peer_label, "ok" if ok else error, latency * 1000
        )
        return result
