"""The doctor's checks of each peer of the store: a DICOM C-ECHO (answer and
latency) and, for a TLS peer, the certificates - the peer's own (read during a TLS
handshake, also when it does not verify) and the files the peer record names (our
client certificate, the CA bundle) - with the days left before they expire."""

from __future__ import annotations

import socket
import ssl
from datetime import datetime, timezone

from .._errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    DcmProcessorError,
    PeerUnreachableError,
    TLSError,
)
from ..net.options import CALLING_AET_ENV
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
    return f"{peer.aet}@{peer.host}:{peer.port}{' (TLS)' if peer.tls else ''}"


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
        return Finding(
            check,
            Status.FAIL,
            f"{where}: TLS failed: {exc}",
            "see the peer's certificate findings; check ca_file, cert_file and key_file",
        )
    except (AssociationAbortedError, DcmProcessorError) as exc:
        return Finding(
            check,
            Status.FAIL,
            f"{where}: C-ECHO failed: {exc}",
            "check the peer's log; it accepted the connection but not the echo",
        )
    details = {
        "status": result.status,
        "latency_s": round(result.latency_s, 4),
        "total_s": round(result.total_s, 4),
    }
    if not result:
        return Finding(
            check,
            Status.FAIL,
            f"{where}: C-ECHO failed: {result.error}",
            "the peer answered but refused the echo: enable the Verification "
            "SOP class on it, or check its log",
            details,
        )
    return Finding(
        check,
        Status.OK,
        f"{where} answers C-ECHO in {result.latency_s * 1000:.1f} ms "
        f"({result.total_s * 1000:.0f} ms with association set-up)",
        details=details,
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


def _file_certificates(peer: Peer) -> list[Finding]:
    findings = []
    for field_name, what in (("cert_file", "our client certificate"), ("ca_file", "CA bundle")):
        path = getattr(peer, field_name)
        if not path:
            continue
        check = f"peer/{peer.name}/{field_name}"
        fix = (
            f"renew it and update the peer record (dcm-service peers add {peer.name} ... "
            f"--{field_name.replace('_', '-')} NEW.pem)"
        )
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


def _handshake(peer: Peer, context: ssl.SSLContext, timeout: float) -> bytes | None:
    """The peer's certificate (DER) after a TLS handshake with ``context``; the
    connection is closed again before any DICOM is spoken."""
    with (
        socket.create_connection((peer.host, peer.port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=peer.host) as tls,
    ):
        return tls.getpeercert(binary_form=True)


def _server_certificate(peer: Peer, timeout: float) -> list[Finding]:
    check = f"peer/{peer.name}/certificate"
    what = f"the certificate of peer {peer.name} ({_label(peer)})"
    fix = "renew the peer's certificate (on the PACS) with the CA our ca_file trusts"
    try:
        context = build_client_ssl_context(
            ca_file=peer.ca_file, cert_file=peer.cert_file, key_file=peer.key_file
        )
    except DcmProcessorError as exc:
        return [
            Finding(
                check,
                Status.FAIL,
                f"peer {peer.name}: TLS settings unusable: {exc}",
                f"fix the peer record's TLS files (dcm-service peers add {peer.name} ...)",
            )
        ]
    try:
        der = _handshake(peer, context, timeout)
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
        return [_expired_server_certificate(peer, check, what, fix, timeout)]
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
        return []  # not reachable: the echo finding says so
    if not der:
        return [Finding(check, Status.FAIL, f"{what}: the peer sent no certificate", fix)]
    return [_expiry(check, what, certificate_dates(der), fix)]


def _expired_server_certificate(
    peer: Peer, check: str, what: str, fix: str, timeout: float
) -> Finding:
    """Read the dates of a certificate that failed verification as expired: a second
    handshake without verification (only to read it; nothing is sent)."""
    reader = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    reader.check_hostname = False
    reader.verify_mode = ssl.CERT_NONE
    if peer.cert_file:
        reader.load_cert_chain(peer.cert_file, peer.key_file)
    try:
        der = _handshake(peer, reader, timeout)
        if der:
            return _expiry(check, what, certificate_dates(der), fix)
    except (OSError, ValueError):
        pass
    return Finding(check, Status.FAIL, f"{what} has expired", fix)


def check_peer(peer: Peer, timeout: float = 5.0) -> list[Finding]:
    """C-ECHO ``peer``; for a TLS peer, check its certificate and the record's
    certificate files too."""
    findings = [_echo(peer, timeout)]
    if peer.tls:
        findings += _server_certificate(peer, timeout)
        findings += _file_certificates(peer)
    return findings
