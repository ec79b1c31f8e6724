"""DICOM values that several modules make or check the same way.

One place for each rule, so that every writer (derived series, PDF, NIfTI -> DICOM,
SEG, SR) and every reader (ingest, the sender's input) agree:

* **UIDs** — :func:`new_uid` makes every new UID (study, series, instance, frame of
  reference, tracking); :func:`is_uid` checks one (digits and dots, at most 64).
* **Date and time stamps** — :func:`now` is the moment an object is made;
  :func:`da`, :func:`tm` and :func:`dt` write it as DA (``YYYYMMDD``), TM
  (``HHMMSS.ffffff``) and DT (``YYYYMMDDHHMMSS``).
* **Text and numbers a caller gives** — :func:`check_lo` (a Long String: at most 64
  characters, no backslash) for descriptions, titles and algorithm names, and
  :func:`check_series_number` (an IS in ``0 .. 2**31-1``). Each raises
  :class:`~dcm_processor_service.InvalidInputError` naming the parameter, the value and
  the rule.
* **Decimal strings** — :func:`format_ds` (at most 16 characters, full precision) and
  :func:`format_ds_at_least` (never below the value: for rescale slopes).
* **Encoding of a dataset** — :func:`transfer_syntax_of`, :func:`has_transfer_syntax`,
  :func:`is_encapsulated`.
* :func:`package_version` — what ``SoftwareVersions`` and the file meta's
  ``ImplementationVersionName`` name.
"""

from __future__ import annotations

import datetime as _dt
import functools
import re
from importlib import metadata
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from ._errors import InvalidInputError

__all__ = [
    "LO_MAX",
    "MAX_IS",
    "check_lo",
    "check_series_number",
    "da",
    "dt",
    "format_ds",
    "format_ds_at_least",
    "has_transfer_syntax",
    "is_encapsulated",
    "is_uid",
    "new_uid",
    "now",
    "package_version",
    "tm",
    "transfer_syntax_of",
]

#: Largest value of an IS (Integer String) element.
MAX_IS: Final = 2**31 - 1
#: Most characters of an LO (Long String) value.
LO_MAX: Final = 64

_UID_RE: Final = re.compile(r"^[0-9][0-9.]{0,63}$")


# ------------------------------------------------------------------------ identity
@functools.lru_cache(maxsize=1)
def package_version() -> str:
    """The installed version of dcm-processor-service (``0+unknown`` from a bare tree)."""
    try:
        return metadata.version("dcm-processor-service")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a checkout
        return "0+unknown"


def new_uid() -> str:
    """A new, globally unique DICOM UID (the one way every writer makes UIDs)."""
    return str(generate_uid())


def is_uid(value: str) -> bool:
    """Whether ``value`` has the form of a UID: digits and dots, at most 64 characters."""
    return bool(_UID_RE.match(value))


# ------------------------------------------------------------------------- stamps
def now() -> _dt.datetime:
    """The current local time: the moment a derived object is made."""
    return _dt.datetime.now()


def da(moment: _dt.datetime) -> str:
    """``moment`` as a DA value (``YYYYMMDD``)."""
    return moment.strftime("%Y%m%d")


def tm(moment: _dt.datetime) -> str:
    """``moment`` as a TM value (``HHMMSS.ffffff``)."""
    return moment.strftime("%H%M%S.%f")


def dt(moment: _dt.datetime) -> str:
    """``moment`` as a DT value to the second (``YYYYMMDDHHMMSS``)."""
    return moment.strftime("%Y%m%d%H%M%S")


# ----------------------------------------------------------------- caller's values
def check_lo(value: Any, what: str = "series_description", *, required: bool = False) -> str:
    """``value`` checked as an LO (Long String) text a caller gives: a ``str`` of at
    most 64 characters without a backslash (the DICOM value separator). ``None`` is
    ``""`` unless ``required`` (then, like an empty or blank text, it is refused).

    Raises :class:`InvalidInputError` naming ``what``, the value and the rule.
    """
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidInputError(f"invalid '{what}' value {value!r} - must be a str")
    if required and not value.strip():
        raise InvalidInputError(f"invalid '{what}' value {value!r} - must be a non-empty str")
    if len(value) > LO_MAX:
        raise InvalidInputError(
            f"invalid '{what}' value {value[:20]!r}... - must not exceed {LO_MAX} characters "
            f"(DICOM LO), got {len(value)}"
        )
    if "\\" in value:
        raise InvalidInputError(f"invalid '{what}' value {value!r} - must not contain a backslash")
    return value


def check_series_number(value: Any) -> int:
    """``value`` checked as a SeriesNumber (an IS): an integer in ``0 .. 2**31-1``.

    Raises :class:`InvalidInputError` naming the value and the range.
    """
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"invalid 'series_number' value {value!r} - must be an integer"
        ) from None
    if isinstance(value, bool) or not 0 <= number <= MAX_IS:
        raise InvalidInputError(
            f"invalid 'series_number' value {value!r} - must be an integer in 0..{MAX_IS}"
        )
    return number


# ------------------------------------------------------------------------ numbers
def format_ds(value: float) -> str:
    """``value`` as a DICOM DS string of at most 16 characters (most precision kept)."""
    value = float(value)
    if value == 0.0:
        return "0"
    if value.is_integer() and abs(value) < 1e15:
        text = str(int(value))
        if len(text) <= 16:
            return text
    return format_number_as_ds(value)


def format_ds_at_least(value: float) -> str:
    """A DS string (at most 16 characters) whose value is ``>= value``.

    For rescale slopes: a slope rounded *down* by the 16-character limit would map the
    largest value one step past the top of the stored range.
    """
    value = float(value)
    for relative in (0.0, 1e-15, 1e-14, 1e-13, 1e-12, 1e-11, 1e-10, 1e-9, 1e-8):
        text = format_ds(value + abs(value) * relative)
        if float(text) >= value:
            return text
    raise ValueError(f"cannot format {value!r} as a DS not below it")  # pragma: no cover


# ----------------------------------------------------------------------- encoding
def has_transfer_syntax(ds: Dataset) -> bool:
    """Whether ``ds`` has a file meta header naming its transfer syntax."""
    meta = getattr(ds, "file_meta", None)
    return meta is not None and "TransferSyntaxUID" in meta


def transfer_syntax_of(ds: Dataset) -> str | None:
    """The transfer syntax ``ds`` is encoded in: its file meta's, else the encoding it
    was read in (implicit VR little endian, explicit VR little or big endian); ``None``
    for a dataset built in memory (no file meta, never read)."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return str(ts)
    implicit, little = ds.original_encoding
    if implicit is None or little is None:
        return None
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def is_encapsulated(ds: Dataset) -> bool:
    """Whether the dataset's Pixel Data is encapsulated (compressed): it then cannot be
    written without knowing its transfer syntax."""
    if "PixelData" not in ds:
        return False
    element = ds["PixelData"]
    if element.is_undefined_length:
        return True
    value = element.value
    return isinstance(value, (bytes, bytearray)) and bytes(value[:4]) == b"\xfe\xff\x00\xe0"
