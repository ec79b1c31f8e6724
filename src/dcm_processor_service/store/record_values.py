"""How index records are keyed and what their ``Metadata`` values look like.

These are the dcm-processor platform's rules (its DB provider files every received
instance this way), applied by every provider so that ``headers`` look the same whether
the platform or this package filed an instance, and whichever store holds them:

* :func:`patient_uid` — the record's ``PatientUID``: the hex sha256 of
  ``PatientID`` (``PatientID::IssuerOfPatientID`` when the issuer is set), else of
  ``PatientName[::PatientBirthDate][::PatientSex]``, else of ``StudyInstanceUID``.
  It is computed from the ``Metadata`` values (below), exactly as the platform does.
* :func:`parse_patient_age` — ``PatientAge`` as whole years (``"045Y"`` → 45).
* :func:`platform_metadata` — brings ``Metadata`` stored by dcm-processor-service 0.1
  (which kept ``PatientAge`` as text and empty tags as ``""``/``None``) to these rules;
  the SQL providers' schema migration uses it.

The values themselves are built from a dataset by
:func:`dcm_processor_service.index.metadata.metadata_values`: an empty tag is left
out (``PatientName`` excepted: it is always text, ``""`` when empty), person names are
text, ``IS``/``US``/… are ``int``, ``DS``/``FL``/``FD`` ``float``, several values a
list. Nothing here imports pydicom: the store layer uses it on stored values.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "parse_patient_age",
    "patient_identity",
    "patient_uid",
    "platform_metadata",
]

_AGE_RE: Final = re.compile(r"^\s*(\d+)\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER: Final = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def parse_patient_age(value: Any) -> int | None:
    """``"045Y"`` -> 45; months, weeks and days are converted to whole years
    (``"018M"`` -> 1). Returns ``None`` for an empty or unparsable age."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    match = _AGE_RE.match(str(value))
    if not match:
        return None
    number, unit = int(match.group(1)), (match.group(2) or "Y").upper()
    if unit == "Y":
        return number
    return int(number * _DAYS_PER[unit] // 365.25)


def _text(meta: Mapping[str, Any], keyword: str) -> str | None:
    """The stripped text of ``meta[keyword]`` when it is set (truthy), else ``None``."""
    value = meta.get(keyword)
    if not value:
        return None
    return str(value).strip()


def patient_uid(meta: Mapping[str, Any]) -> str:
    """The ``PatientUID`` of an instance whose record ``Metadata`` values are ``meta``.

    The platform's derivation, character for character: the first of these that applies,
    hashed with sha256 (hex digest of the UTF-8 text):

    1. ``PatientID`` — ``"<PatientID>::<IssuerOfPatientID>"`` when the issuer is set;
    2. ``PatientName``, followed by ``"::<PatientBirthDate>"`` and ``"::<PatientSex>"``
       for those that are set;
    3. ``StudyInstanceUID``;
    4. the empty text.

    Values are stripped of surrounding white space; case and ``^`` separators are kept
    (``Doe^John`` and ``Doe^John^^`` are different patients, as in the platform).
    """
    pid = _text(meta, "PatientID")
    if pid is not None:
        issuer = _text(meta, "IssuerOfPatientID")
        key = f"{pid}::{issuer}" if issuer is not None else pid
    else:
        name = _text(meta, "PatientName")
        if name is not None:
            key = name
            for keyword in ("PatientBirthDate", "PatientSex"):
                extra = _text(meta, keyword)
                if extra is not None:
                    key = f"{key}::{extra}"
        else:
            key = _text(meta, "StudyInstanceUID") or ""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


_IDENTITY: Final = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
)


def patient_identity(meta: Mapping[str, Any]) -> str:
    """The identifying tags of a patient's ``Metadata`` for a message, e.g.
    ``PatientID '123', PatientName 'Doe^Jane'`` (the ``PatientUID`` is a hash)."""
    parts = [f"{k} {str(meta[k]).strip()!r}" for k in _IDENTITY if meta.get(k) not in (None, "")]
    return ", ".join(parts) or "no identifying tags"


def platform_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` with the platform's value rules: empty values (``""``, ``None``, ``[]``)
    left out except ``PatientName`` (``""``), ``PatientAge`` in whole years.

    For record ``Metadata`` written under older rules; values that already follow these
    rules come back unchanged.
    """
    out: dict[str, Any] = {}
    for key, value in meta.items():
        if key == "PatientName":
            out[key] = "" if value is None else value
        elif value is None or value == "" or value == []:
            continue
        elif key == "PatientAge":
            age = parse_patient_age(value)
            out[key] = value if age is None else age
        else:
            out[key] = value
    return out
