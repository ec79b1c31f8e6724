"""Raw element values of the record tags decoded as pydicom decodes them - or refused.

:mod:`.header_scan` hands over the raw bytes of the tags the metadata needs;
:func:`decode_value` turns them into the value pydicom's ``DataElement.value`` would
hold (as plain ``str``/``int``/``float``/``list``, which the metadata rules of
:mod:`.metadata` treat exactly like pydicom's ``PersonName``/``IS``/``DSfloat``/
``MultiValue``), for well-formed values only. Anything pydicom might read differently
raises :class:`UnusualValue`, and the caller reads the file with pydicom instead:

* text in a character set other than the default, ISO_IR 6, ISO_IR 100 (Latin-1) or
  ISO_IR 192 (UTF-8), text with escape sequences, UTF-8 that does not decode;
* a number that is not a plain DICOM IS (at most 12 characters, within 32 bits) or DS
  (at most 16 characters, decimal or exponent form), or an empty item in a number list;
* a binary number whose length is not a multiple of its size; a multi-valued UID; a
  person name with component groups (``=``);
* any pydicom setting that changes values (``datetime_conversion``, ``use_DS_decimal``,
  numpy values, ``None`` as empty text, a data-element callback or value hooks) or
  turns validation into errors (``reading_validation_mode = RAISE``):
  :func:`pydicom_defaults` says whether the fast path may be used at all.
"""

from __future__ import annotations

import re
import struct
from typing import Any, Final

import pydicom.config
import pydicom.hooks

__all__ = ["UnusualValue", "decode_value", "pydicom_defaults", "text_codec"]


class UnusualValue(Exception):
    """A value :func:`decode_value` does not decode the way pydicom does for sure."""


#: Specific Character Set values whose text decodes with a plain Python codec, as
#: pydicom's ``convert_encodings`` maps them (absent: pydicom's default, Latin-1).
_CODECS: Final = {
    None: "latin-1",
    "ISO_IR 6": "latin-1",
    "ISO_IR 100": "latin-1",
    "ISO_IR 192": "utf-8",
}
_IS_RE: Final = re.compile(r" *[+-]?[0-9]+ *\Z")
_DS_RE: Final = re.compile(r" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *\Z")
_TEXT_VRS: Final = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})  # fmt: skip
_PLAIN_VRS: Final = frozenset({"AS", "CS", "DA", "TM"})  # decoded as Latin-1, split
_CHARSET_VRS: Final = frozenset({"LO", "SH", "UC"})  # Specific Character Set, split
_SINGLE_VRS: Final = frozenset({"LT", "ST", "UT"})  # Specific Character Set, not split
_BINARY_NUMBERS: Final = {"US": struct.Struct("<H"), "FD": struct.Struct("<d")}


def pydicom_defaults() -> bool:
    """Whether pydicom's settings are those under which :func:`decode_value` gives
    pydicom's values (the defaults, or validation only warning/ignoring)."""
    config = pydicom.config
    return (
        config.settings.reading_validation_mode != config.RAISE
        and not config.datetime_conversion
        and not config.use_DS_decimal
        and not config.use_DS_numpy
        and not config.use_IS_numpy
        and not config.use_none_as_empty_text_VR_value
        and config.data_element_callback is None
        and not pydicom.hooks.hooks.raw_element_kwargs
        and pydicom.hooks.hooks.raw_element_value is pydicom.hooks.raw_element_value
        and pydicom.hooks.hooks.raw_element_vr is pydicom.hooks.raw_element_vr
    )


def text_codec(charset: Any) -> str:
    """The Python codec of a decoded Specific Character Set value (``None``: absent);
    :class:`UnusualValue` for one left to pydicom."""
    try:
        return _CODECS[charset]
    except (KeyError, TypeError):
        raise UnusualValue(f"Specific Character Set {charset!r}") from None


def _split(text: str) -> str | list[str]:
    items = text.split("\\")
    return items[0] if len(items) == 1 else items


def _numbers(text: str, pattern: re.Pattern[str], width: int, kind: type) -> Any:
    items = text.split("\\")
    for item in items:
        if len(item.strip()) > width or not pattern.match(item):
            raise UnusualValue(f"not a plain number: {item!r}")
    values = [kind(item) for item in items]
    return values[0] if len(values) == 1 else values


def _decode_text(raw: bytes, codec: str) -> str:
    if b"\x1b" in raw:
        raise UnusualValue("escape sequence in text")
    try:
        return raw.decode(codec)
    except UnicodeDecodeError as exc:
        raise UnusualValue(str(exc)) from None


def decode_value(vr: str, raw: bytes, codec: str) -> Any:
    """The value pydicom gives an element of ``vr`` whose raw value is ``raw`` (text of
    the dataset's character set decoded with ``codec``, from :func:`text_codec`);
    :class:`UnusualValue` when not sure (see the module docs)."""
    if not raw:
        return "" if vr in _TEXT_VRS else None
    if vr in _PLAIN_VRS:
        return _split(raw.decode("latin-1").rstrip(" \x00"))
    if vr == "UI":  # pydicom's UID strips white space from both ends
        text = raw.decode("latin-1").rstrip("\x00 ").strip()
        if "\\" in text:
            raise UnusualValue("several UIDs")
        return text
    if vr in _CHARSET_VRS:
        items = [item.rstrip("\x00 ") for item in _decode_text(raw, codec).split("\\")]
        return items[0] if len(items) == 1 else items
    if vr in _SINGLE_VRS:
        return _decode_text(raw, codec).rstrip("\x00 ")
    if vr == "PN":
        text = _decode_text(raw.rstrip(b"\x00 "), codec)
        if "=" in text:
            raise UnusualValue("person name with component groups")
        return _split(text)
    if vr == "IS":
        value = _numbers(raw.decode("latin-1").rstrip(" \x00"), _IS_RE, 12, int)
        if any(not -(2**31) <= v < 2**31 for v in (value if isinstance(value, list) else [value])):
            raise UnusualValue("IS beyond 32 bits")
        return value
    if vr == "DS":
        return _numbers(raw.decode("latin-1").strip().rstrip(" \x00"), _DS_RE, 16, float)
    number = _BINARY_NUMBERS.get(vr)
    if number is None or len(raw) % number.size:
        raise UnusualValue(f"VR {vr} with {len(raw)} bytes")
    values = [v for (v,) in number.iter_unpack(raw)]
    return values[0] if len(values) == 1 else values
