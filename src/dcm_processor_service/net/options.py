"""What a :class:`~.sender.DicomSender` is configured with: the AE title defaults, our
calling AE title from the environment, the original's per-call connection overrides,
and the checks of the constructor's arguments (each error names the parameter, the
value and the rule).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from .._errors import InvalidInputError
from .._validation import validate_ae_title

__all__ = [
    "CALLING_AET_ENV",
    "DEFAULT_CALLED_AET",
    "DEFAULT_CALLING_AET",
    "check_count",
    "check_host",
    "check_max_pdu",
    "check_seconds",
    "check_uids",
    "connection_overrides",
    "default_calling_ae_title",
]

#: Environment variable overriding the calling AE title of :meth:`DicomSender.for_peer`
#: (the hyphenated spelling ``DCM-PROCESSOR-SERVICE-CALLING-AET`` is read too and wins).
CALLING_AET_ENV: Final = "DCM_PROCESSOR_SERVICE_CALLING_AET"
#: Our calling AE title when neither an argument nor the environment gives one.
DEFAULT_CALLING_AET: Final = "DCMPROCESSOR"
#: The called AE title when the constructor gets none (the platform's historic default).
DEFAULT_CALLED_AET: Final = "ANY-SCP"

#: The original's per-call connection overrides: canonical name -> accepted spellings,
#: the first given wins (see :meth:`DicomSender.with_overrides`).
_OVERRIDES: Final = {
    "host": ("host",),
    "port": ("port",),
    "aet": ("aet", "ae_title"),
    "tls": ("tls", "enable_tls"),
    "cert_file": ("cert_file", "tls_cert_file"),
    "key_file": ("key_file", "tls_key_file"),
    "ca_file": ("ca_file", "tls_ca_file"),
    "trusted_ca": ("trusted_ca", "tls_trusted_ca"),
}
_OVERRIDE_KEYS: Final = frozenset(k for spellings in _OVERRIDES.values() for k in spellings)
_UID_RE: Final = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def default_calling_ae_title(environ: Mapping[str, str] | None = None) -> str:
    """Our calling AE title: ``DCM-PROCESSOR-SERVICE-CALLING-AET`` or
    ``DCM_PROCESSOR_SERVICE_CALLING_AET`` from the environment, else ``DCMPROCESSOR``."""
    env = os.environ if environ is None else environ
    for name in (CALLING_AET_ENV.replace("_", "-"), CALLING_AET_ENV):
        value = env.get(name)
        if value:
            return validate_ae_title(value, name)
    return DEFAULT_CALLING_AET


def connection_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The per-call connection overrides the original's ``send_*`` methods accepted, by
    canonical name (``host``, ``port``, ``aet``, ``tls``, ``cert_file``, ``key_file``,
    ``ca_file``, ``trusted_ca``); ``None`` values are dropped. An unknown key raises
    :class:`InvalidInputError` listing the known ones."""
    unknown = sorted(set(overrides) - _OVERRIDE_KEYS)
    if unknown:
        raise InvalidInputError(
            f"unknown connection override(s) {', '.join(map(repr, unknown))} - known: "
            f"{', '.join(sorted(_OVERRIDE_KEYS))}"
        )
    found: dict[str, Any] = {}
    for name, spellings in _OVERRIDES.items():
        value = next((overrides[k] for k in spellings if overrides.get(k) is not None), None)
        if value is not None:
            found[name] = value
    return found


def check_uids(values: Iterable[Any] | None, what: str) -> list[str]:
    """``values`` (one UID or several, None: none) as a list of valid UIDs."""
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


def check_host(value: Any) -> str:
    """The peer's host name or IP address, stripped."""
    rule = "must be a host name or IP address"
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise InvalidInputError(f"invalid 'server_host' value {value!r} - {rule}")
    host = value.strip()
    try:
        host.encode("idna")
    except UnicodeError as exc:
        raise InvalidInputError(f"invalid 'server_host' value {value!r} - {rule} ({exc})") from None
    return host


def check_count(value: Any, what: str, *, minimum: int) -> int:
    """An integer (not a bool) of at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidInputError(
            f"invalid '{what}' value {value!r} - must be an integer >= {minimum}"
        )
    return value


def check_seconds(value: Any, what: str) -> float:
    """A number (not a bool) of at least 0, as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidInputError(f"invalid '{what}' value {value!r} - must be a number >= 0")
    return float(value)


def check_max_pdu(value: Any) -> int:
    """The largest PDU we accept: 0 (unlimited) or 4096..4294967295 (PS3.8 D.1)."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not (value == 0 or 4096 <= value <= 0xFFFFFFFF)
    ):
        raise InvalidInputError(
            f"invalid 'max_pdu' value {value!r} - must be 0 (unlimited) or 4096..4294967295"
        )
    return value
