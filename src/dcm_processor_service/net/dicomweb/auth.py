"""Credentials and the HTTP client of a DICOMweb peer.

:func:`resolve_secret` turns a stored reference (``env:NAME``, ``file:/path``) into the
secret at the moment a client is built; the secret goes into the client's
``Authorization`` header only - it is never logged, stored or put in a message.
:func:`open_client` builds the :class:`httpx.Client` for an endpoint: TLS verified for
``https`` (the endpoint's ``ca_file``, else the system trust store; TLS 1.2 minimum,
through :func:`~dcm_processor_service.net.tls.build_client_ssl_context`), a client
certificate when the endpoint has one, and the timeouts.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

import httpx

from ..._errors import ConfigError
from ...store.web_endpoint import DicomWebEndpoint, check_secret_reference
from ..tls import build_client_ssl_context

__all__ = ["auth_headers", "open_client", "resolve_secret"]

logger = logging.getLogger(__name__)


def resolve_secret(reference: str) -> str:
    """The secret a reference points to: ``env:NAME`` (an environment variable) or
    ``file:/path`` (the file's text, trailing newline stripped). Raises
    :class:`ConfigError` naming the variable or file - never the secret - when it is
    unset, empty or unreadable."""
    check_secret_reference(reference)
    scheme, _, where = reference.partition(":")
    if scheme == "env":
        value = os.environ.get(where)
        if not value:
            raise ConfigError(
                f"the DICOMweb secret reference {reference!r} names environment variable "
                f"{where!r}, which is unset or empty - export it in the service's environment"
            )
        return value
    try:
        value = Path(where).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the DICOMweb secret file {where!r} (from {reference!r}): "
            f"{exc.strerror or exc}"
        ) from None
    if not value:
        raise ConfigError(f"the DICOMweb secret file {where!r} is empty")
    return value


def auth_headers(endpoint: DicomWebEndpoint) -> dict[str, str]:
    """The ``Authorization`` header for ``basic``/``bearer`` endpoints (else none)."""
    if endpoint.auth == "basic":
        assert endpoint.username and endpoint.secret
        pair = f"{endpoint.username}:{resolve_secret(endpoint.secret)}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    if endpoint.auth == "bearer":
        assert endpoint.secret
        return {"Authorization": "Bearer " + resolve_secret(endpoint.secret)}
    return {}


def open_client(
    endpoint: DicomWebEndpoint,
    *,
    connect_timeout: float | None = 10.0,
    read_timeout: float | None = 120.0,
    write_timeout: float | None = 60.0,
) -> httpx.Client:
    """An HTTP client for ``endpoint`` (close it, or use it in a ``with``).

    ``read_timeout``: the longest wait for the next bytes of a response (a STOW-RS answer
    comes once the peer stored the whole batch); ``write_timeout``: the longest wait for
    the peer to take the next block of a request body.
    """
    verify: object = True
    if endpoint.url.startswith("https://"):
        verify = build_client_ssl_context(
            ca_file=endpoint.ca_file,
            cert_file=endpoint.cert_file,
            key_file=endpoint.key_file,
        )
    return httpx.Client(
        base_url=endpoint.url,
        headers=auth_headers(endpoint),
        verify=verify,  # type: ignore[arg-type]
        timeout=httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=write_timeout, pool=connect_timeout
        ),
        trust_env=False,  # no proxy or .netrc from the environment: the peer record says it all
        follow_redirects=False,
    )
