"""Validation of names and DICOM network identifiers shared by every layer.

Leaf module: imports nothing from the package but the error tree, so the store and
the public API can both use it.
"""

from __future__ import annotations

import re
from typing import Final

from ._errors import InvalidInputError

__all__ = [
    "MAX_NAME_LENGTH",
    "validate_ae_title",
    "validate_id",
    "validate_name",
    "validate_port",
]

MAX_NAME_LENGTH: Final = 255

#: Unicode categories never allowed in a name or id: controls (C0, DEL, C1), invisible
#: formatting characters (bidirectional overrides such as U+202E RIGHT-TO-LEFT OVERRIDE,
#: which make "report\u202Efdp.exe" display as "reportexe.pdf"; zero-width characters;
#: the BOM), line/paragraph separators, and lone surrogates (not storable as UTF-8).
_HIDDEN_CATEGORIES: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _hidden_character(value: str) -> str | None:
    """A description of the first control or invisible character of ``value``, if any."""
    if value.isascii() and value.isprintable():
        return None  # printable ASCII: nothing hidden (and no need to load unicodedata)
    import unicodedata

    for position, char in enumerate(value):
        if unicodedata.category(char) in _HIDDEN_CATEGORIES:
            name = unicodedata.name(char, "control character")
            return f"U+{ord(char):04X} {name} at position {position}"
    return None


# AE titles: the Default Character Repertoire without backslash and control characters
# (PS3.5 6.2, VR "AE"); leading/trailing spaces are not significant.
_AE_ALLOWED = re.compile(r"^[\x20-\x5b\x5d-\x7e]+$")


def validate_name(value: object, what: str = "name") -> str:
    """Check a session-data / session-file / job name and return it.

    A name is stored as a key and may become part of a file name when exported, so it
    must be non-empty, at most 255 characters, and contain no path separator, no
    ``..`` component, no NUL or other control character, and no invisible formatting
    character (bidirectional overrides, zero-width characters: they make a name display
    as something it is not).
    """
    if not isinstance(value, str):
        raise InvalidInputError(
            f"invalid {what} {value!r} - must be a str, got {type(value).__name__}"
        )
    if not value or not value.strip():
        raise InvalidInputError(f"invalid {what} {value!r} - must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInputError(
            f"invalid {what} {value[:40]!r}... - must not exceed {MAX_NAME_LENGTH} characters "
            f"(got {len(value)})"
        )
    if "/" in value or "\\" in value:
        raise InvalidInputError(f"invalid {what} {value!r} - must not contain a path separator")
    if value in (".", "..") or value.startswith(".."):
        raise InvalidInputError(f"invalid {what} {value!r} - must not be or start with '..'")
    hidden = _hidden_character(value)
    if hidden:
        raise InvalidInputError(
            f"invalid {what} {value!r} - must not contain NUL, control or invisible "
            f"formatting characters (found {hidden})"
        )
    return value


def validate_id(value: object, what: str) -> str:
    """Check a record id given by a caller (a session or job id) and return it: a str,
    not blank, at most 255 characters, without control or invisible characters."""
    if not isinstance(value, str):
        raise InvalidInputError(
            f"invalid {what} {value!r} - must be a str, got {type(value).__name__}"
        )
    if not value.strip():
        raise InvalidInputError(f"invalid {what} {value!r} - must not be empty or blank")
    if len(value) > MAX_NAME_LENGTH:
        raise InvalidInputError(
            f"invalid {what} {value[:40]!r}... - must not exceed {MAX_NAME_LENGTH} characters"
        )
    hidden = _hidden_character(value)
    if hidden:
        raise InvalidInputError(
            f"invalid {what} {value!r} - must not contain control or invisible characters "
            f"(found {hidden})"
        )
    return value


def validate_ae_title(value: object, what: str = "ae_title") -> str:
    """Check a DICOM AE title (1-16 characters of the default repertoire, no backslash,
    not all spaces) and return it stripped."""
    if not isinstance(value, str):
        raise InvalidInputError(f"invalid '{what}' value {value!r} - must be a str")
    stripped = value.strip()
    if not stripped:
        raise InvalidInputError(
            f"invalid '{what}' value {value!r} - must not be empty or only spaces"
        )
    if len(value) > 16 and len(stripped) > 16:
        raise InvalidInputError(
            f"invalid '{what}' value {value!r} - must not exceed 16 characters (got {len(stripped)})"
        )
    if not _AE_ALLOWED.match(stripped):
        raise InvalidInputError(
            f"invalid '{what}' value {value!r} - only printable ASCII without backslash is allowed"
        )
    return stripped


def validate_port(value: object, what: str = "port") -> int:
    """Check a TCP port number (1-65535) and return it as int."""
    try:
        port = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise InvalidInputError(f"invalid '{what}' value {value!r} - must be an integer") from None
    if isinstance(value, bool) or not 1 <= port <= 65535 or str(port) != str(value).strip():
        raise InvalidInputError(f"invalid '{what}' value {value!r} - must be an integer in 1-65535")
    return port
