"""The DICOMweb part of a peer record: base URL, authentication, TLS files.

A :class:`DicomWebEndpoint` never holds a secret. A password or bearer token is stored as
a *reference* that is resolved only when a request is made
(:func:`~dcm_processor_service.net.dicomweb.auth.resolve_secret`):

* ``env:NAME`` - the value of the environment variable ``NAME``;
* ``file:/path`` - the content of that file (trailing newline stripped; keep it
  readable by the service account only).

Anything else given as a secret is refused, so a password typed into
``peers add`` can never end up in the store (or in its backups, logs and ``peers list``).
Credentials inside the URL (``https://user:pass@host``) are refused for the same reason.

Authentication kinds (:data:`AUTH_KINDS`): ``none``; ``basic`` (``username`` + ``secret``
= the password); ``bearer`` (``secret`` = the token); ``cert`` (a client certificate:
``cert_file`` + ``key_file``). TLS is verified for every ``https`` URL: against
``ca_file`` when given, else the system's trust store - verification cannot be switched
off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from .._errors import InvalidInputError

__all__ = ["AUTH_KINDS", "SECRET_SCHEMES", "DicomWebEndpoint", "check_secret_reference"]

#: How a DICOMweb peer authenticates us.
AUTH_KINDS: Final = ("none", "basic", "bearer", "cert")
#: The accepted forms of a secret reference.
SECRET_SCHEMES: Final = ("env:", "file:")


def check_secret_reference(value: object, what: str = "secret") -> str:
    """Return ``value`` if it is a secret reference (``env:NAME`` or ``file:/path``);
    else raise :class:`InvalidInputError` - without echoing the value, which may be the
    secret itself."""
    if not isinstance(value, str) or not value.startswith(SECRET_SCHEMES):
        raise InvalidInputError(
            f"invalid {what!r} - must be a reference to the secret, 'env:VARIABLE' or "
            "'file:/path/to/file', never the secret itself (it would be stored in clear)"
        )
    scheme, _, rest = value.partition(":")
    if not rest.strip():
        raise InvalidInputError(f"invalid {what!r} reference {value!r} - nothing after '{scheme}:'")
    if scheme == "file" and not os.path.isabs(rest):
        raise InvalidInputError(
            f"invalid {what!r} reference {value!r} - 'file:' needs an absolute path"
        )
    return value


@dataclass(frozen=True)
class DicomWebEndpoint:
    """Where and how to reach a peer's DICOMweb services (QIDO-RS, WADO-RS, STOW-RS).

    ``url`` is the service root (Orthanc: ``http://host:8042/dicom-web``); ``auth`` one of
    :data:`AUTH_KINDS`; ``username`` for ``basic``; ``secret`` a reference to the
    password or token; ``cert_file``/``key_file`` our client certificate (``cert``
    authentication, or mutual TLS with any kind); ``ca_file`` the CA that signed the
    server's certificate.
    """

    url: str
    auth: str = "none"
    username: str | None = None
    secret: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", _check_url(self.url))
        if self.auth not in AUTH_KINDS:
            raise InvalidInputError(
                f"invalid DICOMweb 'auth' value {self.auth!r} - must be one of: "
                f"{', '.join(AUTH_KINDS)}"
            )
        if self.secret is not None:
            check_secret_reference(self.secret)
        needs = {
            "basic": ("username", "secret"),
            "bearer": ("secret",),
            "cert": ("cert_file", "key_file"),
        }.get(self.auth, ())
        missing = [name for name in needs if not getattr(self, name)]
        if missing:
            raise InvalidInputError(
                f"DICOMweb auth {self.auth!r} needs {' and '.join(repr(m) for m in missing)}"
            )
        if self.auth in ("none", "cert") and (self.username or self.secret):
            raise InvalidInputError(
                f"DICOMweb auth {self.auth!r} takes no 'username'/'secret' (use 'basic' or "
                "'bearer')"
            )
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidInputError("'cert_file' and 'key_file' must be given together")
        for attr in ("cert_file", "key_file", "ca_file"):
            path = getattr(self, attr)
            if path is not None and not os.path.isfile(path):
                raise InvalidInputError(
                    f"invalid DICOMweb '{attr}' value {path!r} - file does not exist"
                )
        if self.url.startswith("http://") and (self.cert_file or self.ca_file):
            raise InvalidInputError(
                f"DICOMweb URL {self.url!r} is plain http: certificate files need https"
            )

    @property
    def host(self) -> str:
        """The URL's host name."""
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        """The URL's port (80/443 when the URL names none)."""
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    def to_dict(self) -> dict[str, Any]:
        """The stored form: only the fields that are set (secrets are references)."""
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DicomWebEndpoint:
        """Build from the stored form (unknown keys are ignored: written by a newer
        version)."""
        if not isinstance(data, Mapping) or not data.get("url"):
            raise InvalidInputError(f"invalid DICOMweb peer record {data!r:.120} - no 'url'")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _check_url(url: object) -> str:
    if not isinstance(url, str) or not url.strip():
        raise InvalidInputError(f"invalid DICOMweb URL {url!r} - must be a non-empty string")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(
            f"invalid DICOMweb URL {url!r} - must be http(s)://host[:port]/path, e.g. "
            "https://pacs.example.org/dicom-web"
        )
    if parts.username is not None or parts.password is not None:
        raise InvalidInputError(
            "invalid DICOMweb URL - it holds credentials; give them as auth 'basic' with a "
            "secret reference instead (they would be stored in clear)"
        )
    if parts.query or parts.fragment:
        raise InvalidInputError(f"invalid DICOMweb URL {url!r} - no query or fragment allowed")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise InvalidInputError(f"invalid DICOMweb URL {url!r} - {exc}") from None
    return url.strip().rstrip("/")
