"""The doctor's checks of each peer of the store: a DICOM C-ECHO, or for a DICOMweb
peer a QIDO-RS probe (answer and latency), and, for a TLS or HTTPS peer, the
certificates - the peer's own (read during a TLS handshake, also when it does not
verify) and the files the record names (our client certificate, the CA bundle) - with
the days left before they expire."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone

from .._errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    DcmProcessorError,
    PeerAuthError,
    PeerUnreachableError,
    TLSError,
)
from ..net.options import CALLING_AET_ENV
from ..net.results import EchoResult
from ..net.tls import build_client_ssl_context, describe_ssl_error
from ..store.records import Peer
from .findings import Finding, Status
from .x509 import CertificateDates, certificate_dates, pem_certificates

__all__ = ["CERT_WARN_DAYS", "check_peer"]

#: A certificate that expires within this many days is reported (warn).
CERT_WARN_DAYS = 30
#: OpenSSL's verify code for an expired certificate (X509_V_ERR_CERT_HAS_EXPIRED).
_CERT_HAS_EXPIRED = 10


def _label(peer: Peer) -> str:
    if peer.dicomweb is not None:
        return peer.dicomweb.url
    return f"{peer.aet}@{peer.host}:{peer.port}{' (TLS)' if peer.tls else ''}"


@dataclass(frozen=True)
class _TLSTarget:
    """Where a peer speaks TLS, and the files its record names for it."""

    name: str
    label: str
    host: str
    port: int
    ca_file: str | None
    cert_file: str | None
    key_file: str | None
    fix_record: str  #: how to change the record's files


def _tls_target(peer: Peer) -> _TLSTarget | None:
    if peer.dicomweb is not None:
        web = peer.dicomweb
        if not web.url.startswith("https://"):
            return None
        return _TLSTarget(
            peer.name,
            web.url,
            web.host,
            web.port,
            web.ca_file,
            web.cert_file,
            web.key_file,
            f"dcm-service peers add {peer.name} --dicomweb URL ...",
        )
    if not peer.tls:
        return None
    return _TLSTarget(
        peer.name,
        _label(peer),
        peer.host,
        peer.port,
        peer.ca_file,
        peer.cert_file,
        peer.key_file,
        f"dcm-service peers add {peer.name} ...",
    )


def _answer(check: str, where: str, probe: str, result: EchoResult, refused_fix: str) -> Finding:
    """The finding for a peer that answered ``probe`` (C-ECHO or QIDO-RS): ok with the
    latency, or failed with ``refused_fix`` when its answer was a failure."""
    details = {
        "status": result.status,
        "latency_s": round(result.latency_s, 4),
        "total_s": round(result.total_s, 4),
    }
    if not result:
        return Finding(
            check, Status.FAIL, f"{where}: {probe} failed: {result.error}", refused_fix, details
        )
    return Finding(
        check,
        Status.OK,
        f"{where} answers {probe} in {result.latency_s * 1000:.1f} ms "
        f"({result.total_s * 1000:.0f} ms with connection set-up)",
        details=details,
    )


def _tls_failed(check: str, where: str, exc: TLSError) -> Finding:
    return Finding(
        check,
        Status.FAIL,
        f"{where}: TLS failed: {exc}",
        "see the peer's certificate findings; check ca_file, cert_file and key_file",
    )


def _qido(peer: Peer, timeout: float) -> Finding:
    from ..net.dicomweb.stow import StowSender

    check = f"peer/{peer.name}/qido"
    where = f"DICOMweb peer {peer.name} ({_label(peer)})"
    try:
        sender = StowSender.for_peer(
            peer, connect_timeout=timeout, read_timeout=timeout, write_timeout=timeout
        )
        result = sender.send_echo()
    except PeerUnreachableError as exc:
        return Finding(
            check,
            Status.FAIL,
            f"{where} is down or unreachable: {exc}",
            "start the peer's DICOMweb service, or check the URL "
            f"(dcm-service peers add {peer.name} --dicomweb URL replaces it) "
            "and any firewall or proxy between",
        )
    except PeerAuthError as exc:
        return Finding(
            check,
            Status.FAIL,
            f"{where} refused our credentials: {exc}",
            "check the user name and the secret the record references (the "
            "environment variable or file it names) and that it has not expired",
        )
    except TLSError as exc:
        return _tls_failed(check, where, exc)
    except DcmProcessorError as exc:
        return Finding(
            check,
            Status.FAIL,
            f"{where}: QIDO-RS probe failed: {exc}",
            "check the URL (the DICOMweb root, e.g. http://host:8042/dicom-web) and the peer's log",
        )
    return _answer(
        check,
        where,
        "QIDO-RS probe",
        result,
        "check that the URL is the DICOMweb root and QIDO-RS is enabled on the peer",
    )


def _echo(peer: Peer, timeout: float) -> Finding:
    from ..net.sender import DicomSender

    check = f"peer/{peer.name}/echo"
    where = f"peer {peer.name} ({_label(peer)})"
    try:
        sender = DicomSender.for_peer(
            peer,
            connect_timeout=timeout,
            acse_timeout=timeout,
            dimse_timeout=timeout,
            network_timeout=timeout,
        )
        result = sender.send_echo()
    except PeerUnreachableError as exc:
        return Finding(
            check,
            Status.FAIL,
            f"{where} is down or unreachable: {exc}",
            "start the peer, or check its host and port "
            f"(dcm-service peers add {peer.name} AET HOST PORT replaces the record) "
            "and any firewall between",
        )
    except AssociationRejectedError as exc:
        return Finding(
            check,
            Status.FAIL,
            f"{where} rejected the association: {exc}",
            f"register our calling AE title at the peer (set {CALLING_AET_ENV} "
            "to the title it knows) and check that the peer's AE title is right",
        )
    except TLSError as exc:
        return _tls_failed(check, where, exc)
    except (AssociationAbortedError, DcmProcessorError) as exc:
        return Finding(
            check,
            Status.FAIL,
            f"{where}: C-ECHO failed: {exc}",
            "check the peer's log; it accepted the connection but not the echo",
        )
    return _answer(
        check,
        where,
        "C-ECHO",
        result,
        "the peer answered but refused the echo: enable the Verification SOP class on it, "
        "or check its log",
    )


def _expiry(check: str, what: str, dates: CertificateDates, fix: str) -> Finding:
    days = dates.days_left()
    details = {"not_after": dates.not_after.isoformat(), "days_left": round(days, 2)}
    when = dates.not_after.strftime("%Y-%m-%d %H:%M UTC")
    if days < 0:
        return Finding(check, Status.FAIL, f"{what} expired on {when}", fix, details)
    if dates.not_before > datetime.now(timezone.utc):
        return Finding(
            check,
            Status.FAIL,
            f"{what} is not valid before "
            f"{dates.not_before:%Y-%m-%d %H:%M} UTC (is this clock right?)",
            fix,
            details,
        )
    if days < CERT_WARN_DAYS:
        return Finding(
            check, Status.WARN, f"{what} expires in {days:.0f} day(s), on {when}", fix, details
        )
    return Finding(
        check, Status.OK, f"{what} valid until {when} ({days:.0f} days)", details=details
    )


def _file_certificates(target: _TLSTarget) -> list[Finding]:
    findings = []
    for field_name, what in (("cert_file", "our client certificate"), ("ca_file", "CA bundle")):
        path = getattr(target, field_name)
        if not path:
            continue
        check = f"peer/{target.name}/{field_name}"
        fix = f"renew it and update the peer record ({target.fix_record})"
        try:
            certificates = pem_certificates(path)
        except OSError as exc:
            findings.append(
                Finding(
                    check,
                    Status.FAIL,
                    f"{what} {path} cannot be read: {exc}",
                    f"restore {path} or update the peer record",
                )
            )
            continue
        if not certificates:
            findings.append(
                Finding(
                    check,
                    Status.FAIL,
                    f"{what} {path} holds no PEM certificate",
                    f"point {field_name} at a PEM certificate file",
                )
            )
            continue
        for index, der in enumerate(certificates):
            label = f"{what} {path}" + (
                f" (certificate {index + 1})" if len(certificates) > 1 else ""
            )
            try:
                findings.append(_expiry(check, label, certificate_dates(der), fix))
            except ValueError as exc:
                findings.append(
                    Finding(
                        check,
                        Status.FAIL,
                        f"{label} cannot be read: {exc}",
                        f"replace {path} with a valid PEM certificate",
                    )
                )
    return findings


def _handshake(target: _TLSTarget, context: ssl.SSLContext, timeout: float) -> bytes | None:
    """The peer's certificate (DER) after a TLS handshake with ``context``; the
    connection is closed again before any DICOM or HTTP is spoken."""
    with (
        socket.create_connection((target.host, target.port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=target.host) as tls,
    ):
        return tls.getpeercert(binary_form=True)


def _server_certificate(target: _TLSTarget, timeout: float) -> list[Finding]:
    check = f"peer/{target.name}/certificate"
    what = f"the certificate of peer {target.name} ({target.label})"
    fix = "renew the peer's certificate (on the PACS) with the CA our ca_file trusts"
    try:
        context = build_client_ssl_context(
            ca_file=target.ca_file, cert_file=target.cert_file, key_file=target.key_file
        )
    except DcmProcessorError as exc:
        return [
            Finding(
                check,
                Status.FAIL,
                f"peer {target.name}: TLS settings unusable: {exc}",
                f"fix the peer record's TLS files ({target.fix_record})",
            )
        ]
    try:
        der = _handshake(target, context, timeout)
    except ssl.SSLCertVerificationError as exc:
        if exc.verify_code != _CERT_HAS_EXPIRED:
            return [
                Finding(
                    check,
                    Status.FAIL,
                    f"{what} does not verify: {describe_ssl_error(exc)}",
                    "give the peer a certificate for this host name, signed by the CA in ca_file "
                    "(or put the peer's CA into ca_file)",
                )
            ]
        return [_expired_server_certificate(target, check, what, fix, timeout)]
    except ssl.SSLError as exc:
        return [
            Finding(
                check,
                Status.FAIL,
                f"{what}: TLS handshake failed: {describe_ssl_error(exc)}",
                "check that the peer speaks TLS on this port and accepts our client certificate",
            )
        ]
    except OSError:
        return []  # not reachable: the echo (or QIDO-RS) finding says so
    if not der:
        return [Finding(check, Status.FAIL, f"{what}: the peer sent no certificate", fix)]
    return [_expiry(check, what, certificate_dates(der), fix)]


def _expired_server_certificate(
    target: _TLSTarget, check: str, what: str, fix: str, timeout: float
) -> Finding:
    """Read the dates of a certificate that failed verification as expired: a second
    handshake without verification (only to read it; nothing is sent)."""
    reader = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    reader.check_hostname = False
    reader.verify_mode = ssl.CERT_NONE
    if target.cert_file:
        reader.load_cert_chain(target.cert_file, target.key_file)
    try:
        der = _handshake(target, reader, timeout)
        if der:
            return _expiry(check, what, certificate_dates(der), fix)
    except (OSError, ValueError):
        pass
    return Finding(check, Status.FAIL, f"{what} has expired", fix)


def check_peer(peer: Peer, timeout: float = 5.0) -> list[Finding]:
    """C-ECHO ``peer``; a DICOMweb peer gets a QIDO-RS probe instead (and the C-ECHO as
    well when its record names a DIMSE node too, not the DICOMweb-only AE title). For
    a TLS (or HTTPS) peer, check its certificate and the record's certificate files."""
    from ..peers import DICOMWEB_ONLY_AET

    findings = []
    if peer.dicomweb is not None:
        findings.append(_qido(peer, timeout))
    if peer.dicomweb is None or peer.aet != DICOMWEB_ONLY_AET:  # a DIMSE node too
        findings.append(_echo(peer, timeout))
    target = _tls_target(peer)
    if target is not None:
        findings += _server_certificate(target, timeout)
        findings += _file_certificates(target)
    return findings
