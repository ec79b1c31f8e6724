"""A DICOM header as a plain, JSON-serialisable ``{keyword: value}`` dict.

Rules (:func:`get_simplified_json`):

* Only standard elements with a keyword are kept; private tags, group lengths, file
  meta (group 0002) and binary data (pixel data, overlays, any ``OB``/``OW``/``OF``/
  ``OD``/``OL``/``OV``/``UN`` value) are left out.
* Strings (including dates and times, kept in their DICOM form such as ``"20240131"``)
  stay strings; ``IS``/``SS``/``US``/``SL``/``UL``/``SV``/``UV`` become ``int``;
  ``DS``/``FL``/``FD`` become ``float`` (non-finite values become ``None``); person
  names become text (``"Doe^John"``); ``AT`` becomes ``"(gggg,eeee)"``.
* Multi-valued elements become lists; an empty element becomes ``None``.
* Sequences become lists of dicts following the same rules (``sequences=False``
  drops them instead).
* ``PatientAge`` becomes an ``int`` number of whole years (``"045Y"`` -> ``45``,
  ``"018M"`` -> ``1``); ``Slices`` is added when ``n_slices`` is given.
* A value pydicom cannot parse (e.g. a malformed ``DS``) is kept as its raw text.

:func:`metadata_values` gives the values of the index records' ``Metadata`` instead
(the dcm-processor platform's rules: an empty tag is left out rather than ``None``,
sequences are not included); see its documentation.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from typing import Any, Final

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from .._errors import DicomInputError, InvalidInputError
from ..store.record_values import parse_patient_age

__all__ = ["get_simplified_json", "metadata_values", "parse_patient_age"]

logger = logging.getLogger(__name__)

_BINARY_VRS: Final = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN", "OB or OW", "US or OW"})
_INT_VRS: Final = frozenset({"IS", "SS", "US", "SL", "UL", "SV", "UV", "US or SS"})
_FLOAT_VRS: Final = frozenset({"DS", "FL", "FD"})


def _scalar(value: Any, vr: str) -> Any:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        return None
    if vr in _INT_VRS:
        try:
            return int(value)
        except (TypeError, ValueError):
            return str(value)
    if vr in _FLOAT_VRS:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return str(value)
        return number if math.isfinite(number) else None
    if vr == "AT":
        return str(Tag(value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value if not isinstance(value, float) or math.isfinite(value) else None
    return str(value)


def _raw_text(dataset: Dataset, tag: int) -> str | None:
    raw = dataset.get_item(tag)
    value = getattr(raw, "value", None)
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1", errors="replace").strip(" \x00") or None
    return None if value is None else str(value)


def _simplify(dataset: Dataset, sequences: bool, depth: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for tag in list(dataset.keys()):
        if tag.is_private or tag.element == 0 or tag.group == 0x0002:
            continue
        try:
            elem = dataset[tag]
        except Exception:  # a value pydicom cannot parse: keep its raw text
            keyword = pydicom.datadict.keyword_for_tag(tag)
            if keyword:
                result[keyword] = _raw_text(dataset, tag)
            continue
        keyword = elem.keyword
        if not keyword or elem.VR in _BINARY_VRS or keyword in ("PixelData", "FloatPixelData"):
            continue
        if elem.VR == "SQ":
            if sequences:
                result[keyword] = [_simplify(item, sequences, depth + 1) for item in elem.value]
            continue
        try:
            value = elem.value
        except Exception:
            result[keyword] = _raw_text(dataset, tag)
            continue
        if value is None or value == "":
            result[keyword] = None
        elif isinstance(value, (MultiValue, list, tuple)):
            items = [_scalar(v, elem.VR) for v in value]
            result[keyword] = items if items else None
        else:
            result[keyword] = _scalar(value, elem.VR)
    return result


# ------------------------------------------------------------- record Metadata
_OMIT: Final = object()


def _metadata_item(value: Any, vr: str) -> Any:
    if vr == "AT":  # as the platform's JSON conversion writes it
        return f"{int(value):08X}"
    return _scalar(value, vr)


def _metadata_value(dataset: Dataset, tag: Any) -> Any:
    """The record ``Metadata`` value of one top-level element, or ``_OMIT``."""
    try:
        elem = dataset[tag]
        value = elem.value
    except Exception:  # a value pydicom cannot parse: kept as its raw text
        return _raw_text(dataset, tag) or _OMIT
    keyword = elem.keyword
    if not keyword or elem.VR == "SQ" or elem.VR in _BINARY_VRS:
        return _OMIT
    if isinstance(value, (bytes, bytearray)):
        return _OMIT
    if keyword == "PatientName":  # always text, "" when empty (as the platform stores it)
        if isinstance(value, (MultiValue, list, tuple)):
            return "\\".join(str(v) for v in value)
        return "" if value is None else str(value)
    if value is None or value == "":
        return _OMIT
    if isinstance(value, (MultiValue, list, tuple)):
        if not value:
            return _OMIT
        return [_metadata_item(v, elem.VR) for v in value]
    if keyword == "PatientAge":
        age = parse_patient_age(value)
        return str(value) if age is None else age
    item = _metadata_item(value, elem.VR)
    return _OMIT if item is None else item


def metadata_values(dataset: Dataset, keywords: Iterable[str] | None = None) -> dict[str, Any]:
    """The record ``Metadata`` values of ``dataset``'s top-level elements (only
    ``keywords`` when given), by the platform's rules.

    These are what the series, study and patient records hold (SPEC §4) and what the
    ``PatientUID`` is derived from (:func:`~dcm_processor_service.store.record_values.patient_uid`):

    * an empty element is left out — except ``PatientName``, always text (``""`` when
      empty);
    * person names are text (``"Doe^John"``); ``IS``/``SS``/``US``/``SL``/``UL``/… are
      ``int``; ``DS``/``FL``/``FD`` are ``float`` (a non-finite value is left out);
      ``AT`` is ``"GGGGEEEE"``; dates, times, UIDs and other text stay text as stored;
    * several values become a list (an empty item of a text list stays ``""``, of a
      number list becomes ``None``);
    * ``PatientAge`` is an ``int`` of whole years (``"045Y"`` → 45, ``"018M"`` → 1);
      an age without digits stays text;
    * sequences, binary values (``OB``/``OW``/``UN``…), private tags and group lengths
      are left out.
    """
    out: dict[str, Any] = {}
    if keywords is None:
        # keys(), not iteration: iterating a Dataset decodes every element
        tags = [t for t in dataset.keys() if not t.is_private and t.element and t.group != 2]  # noqa: SIM118
    else:
        present = dataset.keys()
        tags = [t for t in (Tag(k) for k in keywords if tag_for_keyword(k)) if t in present]
    for tag in tags:
        value = _metadata_value(dataset, tag)
        if value is not _OMIT:
            out[pydicom.datadict.keyword_for_tag(tag)] = value
    return out


def get_simplified_json(
    ds: Dataset | str | os.PathLike[str] | None = None,
    n_slices: int | None = None,
    *,
    sequences: bool = True,
    dataset: Dataset | str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Return the header of ``ds`` as a JSON-serialisable keyword -> value dict.

    ``ds`` (the original's parameter name; ``dataset=`` works too) is a pydicom dataset
    or the path of a DICOM file (its header is read). See the module documentation for
    the conversion rules. ``n_slices`` adds a ``Slices`` entry (the number of slices of
    the converted volume).

    >>> header = get_simplified_json(ds, n_slices=120)
    >>> header["PatientName"], header["PatientAge"], header["Slices"]
    ('Doe^John', 45, 120)
    """
    if ds is not None and dataset is not None:
        raise InvalidInputError("give the dataset once: as 'ds' or as 'dataset', not both")
    dataset = ds if ds is not None else dataset
    if dataset is None:
        raise InvalidInputError("missing 'ds' - a pydicom Dataset or a path to a DICOM file")
    if isinstance(dataset, (str, os.PathLike)):
        try:
            dataset = pydicom.dcmread(dataset, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            raise DicomInputError(
                f"{os.fspath(dataset)!r} is not a readable DICOM file: {exc}"
            ) from exc
    if not isinstance(dataset, Dataset):
        raise InvalidInputError(
            f"invalid 'dataset' value of type {type(dataset).__name__} - must be a pydicom "
            "Dataset or a path to a DICOM file"
        )
    result = _simplify(dataset, sequences, 0)
    if "PatientAge" in result:
        result["PatientAge"] = parse_patient_age(result["PatientAge"])
    if "PatientName" in result and isinstance(result["PatientName"], list):
        result["PatientName"] = "\\".join(str(v) for v in result["PatientName"])
    if n_slices is not None:
        if isinstance(n_slices, bool) or not isinstance(n_slices, int) or n_slices < 0:
            raise InvalidInputError(
                f"invalid 'n_slices' value {n_slices!r} - must be a non-negative int"
            )
        result["Slices"] = n_slices
    return result
