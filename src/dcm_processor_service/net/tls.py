"""TLS for DICOM associations: the client-side :class:`ssl.SSLContext`.

The context always verifies the peer: its certificate must chain to a trusted CA and
name the host we connect to (``check_hostname``; the name checked is the *peer's* host,
passed as ``server_hostname`` when the socket is wrapped - never our own host name).
TLS 1.2 is the minimum version. A client certificate + key, when given, is presented
for mutual TLS.

Trust anchors:

* ``ca_file`` - a PEM bundle of CA certificates (the usual choice for a hospital PKI);
* ``trusted_ca=True`` - the operating system's trust store (in addition to ``ca_file``);
* neither - the operating system's trust store (verification is never switched off).
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

from .._errors import InvalidInputError, TLSError

__all__ = ["MINIMUM_TLS_VERSION", "build_client_ssl_context", "describe_ssl_error"]

logger = logging.getLogger(__name__)

#: The oldest protocol version we negotiate.
MINIMUM_TLS_VERSION = ssl.TLSVersion.TLSv1_2


def _existing_file(value: str | os.PathLike[str] | None, what: str) -> str | None:
    if value is None or value == "":
        return None
    path = Path(value)
    if not path.is_file():
        raise InvalidInputError(
            f"invalid '{what}' value {os.fspath(value)!r} - file does not exist or is not a "
            f"regular file"
        )
    return os.fspath(path)


def build_client_ssl_context(
    *,
    ca_file: str | os.PathLike[str] | None = None,
    cert_file: str | os.PathLike[str] | None = None,
    key_file: str | os.PathLike[str] | None = None,
    trusted_ca: bool = False,
) -> ssl.SSLContext:
    """Build the client :class:`ssl.SSLContext` used to talk to a DICOM peer over TLS.

    Args:
        ca_file: PEM file with the CA certificate(s) that signed the peer's certificate.
        cert_file: our client certificate (PEM) for mutual TLS; needs ``key_file``.
        key_file: the private key (PEM, unencrypted) of ``cert_file``.
        trusted_ca: also trust the operating system's CA store. Without ``ca_file``
            the system store is used anyway.

    Returns:
        A context with ``verify_mode=CERT_REQUIRED``, ``check_hostname=True`` and
        ``minimum_version=TLSv1_2``.

    Raises:
        InvalidInputError: a file does not exist, or only one of cert/key is given.
        TLSError: a file exists but cannot be loaded (not PEM, key does not match...).
    """
    ca = _existing_file(ca_file, "tls_ca_file")
    cert = _existing_file(cert_file, "tls_cert_file")
    key = _existing_file(key_file, "tls_key_file")
    if key is not None and cert is None:
        raise InvalidInputError(
            "invalid TLS settings - 'tls_key_file' is given without 'tls_cert_file'; "
            "mutual TLS needs both the client certificate and its key"
        )

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    ctx.minimum_version = MINIMUM_TLS_VERSION
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise TLSError(f"cannot load CA certificates from tls_ca_file {ca!r}: {exc}") from exc
    if ca is None or trusted_ca:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if ca is None:
            logger.debug("TLS: no tls_ca_file given - verifying peers with the system trust store")
    if cert is not None:
        try:
            ctx.load_cert_chain(certfile=cert, keyfile=key)
        except (ssl.SSLError, OSError) as exc:
            raise TLSError(
                f"cannot load the client certificate {cert!r}"
                + (f" with key {key!r}" if key else "")
                + f" for mutual TLS: {exc}"
            ) from exc
    return ctx


def describe_ssl_error(exc: BaseException) -> str:
    """A short, readable reason for an :mod:`ssl` failure (used in :class:`TLSError`)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or str(exc)
        return f"certificate verify failed: {reason}"
    if isinstance(exc, ssl.SSLError):
        # ``reason`` is OpenSSL's code (TLSV13_ALERT_CERTIFICATE_REQUIRED): make it words.
        text = exc.reason.replace("_", " ").lower() if exc.reason else (exc.strerror or str(exc))
        hints = {
            "certificate required": " (the peer requires a client certificate - set "
            "tls_cert_file/tls_key_file)",
            "unknown ca": " (the peer does not trust the CA of our client certificate)",
            "bad certificate": " (the peer rejected our client certificate)",
            "wrong version number": " (is the peer speaking TLS on this port?)",
            "eof": " (the peer closed the TLS connection - it may require a client "
            "certificate, or not trust ours)",
            "version": " (the peer may not support TLS 1.2 or newer)",
        }
        hint = next((h for k, h in hints.items() if k in text.lower()), "")
        return f"{text}{hint}"
    return str(exc) or type(exc).__name__
