"""HTTP failures of a DICOMweb peer, mapped onto the package's network errors.

Transport failures (:func:`transport_error`): refused / unreachable / connect timeout ->
:class:`PeerUnreachableError`, TLS -> :class:`TLSError` (both transient except TLS),
the connection dropping or timing out mid-request -> :class:`AssociationAbortedError`
(transient; ``in_doubt`` when the whole request had gone out). HTTP statuses
(:func:`raise_for_status`): 401/403 -> :class:`PeerAuthError`; 408, 429 and 5xx ->
a transient :class:`NetworkError`; other 4xx -> a permanent one. Messages name the
peer, the request and the peer's own words, never a credential.
"""

from __future__ import annotations

import ssl

import httpx

from ..._errors import (
    AssociationAbortedError,
    NetworkError,
    PeerAuthError,
    PeerUnreachableError,
    TLSError,
)
from ..tls import describe_ssl_error

__all__ = ["raise_for_status", "transport_error"]

_TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__  # type: ignore[assignment]
    return None


def transport_error(exc: httpx.TransportError, peer: str, *, in_doubt: bool) -> NetworkError:
    """The package error for a transport failure talking to ``peer``; ``in_doubt``: the
    request had been sent in full when it happened."""
    tls = _ssl_cause(exc)
    error: NetworkError
    if tls is not None:
        error = TLSError(f"TLS with DICOMweb peer {peer} failed: {describe_ssl_error(tls)}")
        return error
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        error = PeerUnreachableError(
            f"cannot reach DICOMweb peer {peer}: {exc or type(exc).__name__}"
        )
    else:
        what = "no answer in time" if isinstance(exc, httpx.TimeoutException) else "connection lost"
        error = AssociationAbortedError(
            f"DICOMweb peer {peer}: {what} ({type(exc).__name__}: {exc})"
            + (
                " after the whole request went out - the peer may have performed it"
                if in_doubt
                else ""
            )
        )
        error.in_doubt = in_doubt
    error.transient = True
    return error


def raise_for_status(rsp: httpx.Response, peer: str, what: str) -> None:
    """Raise the package error for an HTTP error answer (status >= 400) to ``what``."""
    if rsp.status_code < 400:
        return
    detail = rsp.text.strip().replace("\n", " ")[:300] if rsp.is_stream_consumed else ""
    reason = f"HTTP {rsp.status_code} {rsp.reason_phrase}" + (f": {detail}" if detail else "")
    if rsp.status_code in (401, 403):
        raise PeerAuthError(
            f"DICOMweb peer {peer} refused our credentials for {what} ({reason}) - check the "
            "peer's username and the secret its reference points to (or the client certificate)"
        )
    error = NetworkError(f"DICOMweb peer {peer} answered {what} with {reason}")
    error.transient = rsp.status_code in _TRANSIENT_STATUSES
    if rsp.status_code == 404:
        error = NetworkError(
            f"DICOMweb peer {peer} answered {what} with {reason} - is the base URL right "
            "(Orthanc: http://host:8042/dicom-web)?"
        )
    raise error
