"""The metadata schema of the index records, and a header as simplified JSON.

**Record ``Metadata``** (SPEC §4): which tags each record keeps
(:data:`PATIENT_KEYWORDS`, :data:`STUDY_KEYWORDS`, :data:`SERIES_KEYWORDS` for the
patient, study and series records; :data:`INSTANCE_KEYWORDS` for an instance) and how
their values are written:

* :func:`metadata_values` - the patient, study and series ``Metadata``, by the
  dcm-processor platform's rules (an empty tag is left out, ``PatientAge`` in whole
  years, ...), so ``headers`` look the same whoever filed the instance;
* :func:`instance_metadata` / :func:`json_value` - an instance's ``Metadata``: what
  sorting, NIfTI conversion and selection need (geometry also from the shared
  functional groups of enhanced multi-frame objects);
* :func:`patient_key` - the ``PatientUID``; :func:`instance_input` - all of it for one
  instance, ready for :meth:`Store.put_instance
  <dcm_processor_service.store.Store.put_instance>`.

**Simplified JSON** (:func:`get_simplified_json`, the original package's call): every
standard element of a header as a plain, JSON-serialisable ``{keyword: value}`` dict:

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
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, Final

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import PersonName

from .._errors import DicomInputError, InvalidInputError
from ..dicom_values import is_uid, transfer_syntax_of
from ..sources import read_dataset
from ..store.record_values import parse_patient_age, patient_uid
from ..store.records import InstanceInput

__all__ = [
    "HEADER_KEYWORDS",
    "INSTANCE_KEYWORDS",
    "OMIT",
    "PATIENT_KEYWORDS",
    "PATIENT_KEY_KEYWORDS",
    "REQUIRED_UIDS",
    "SERIES_KEYWORDS",
    "STUDY_KEYWORDS",
    "UID_KEYWORDS",
    "build_instance_input",
    "checked_uids",
    "get_simplified_json",
    "instance_input",
    "instance_metadata",
    "instance_value",
    "json_value",
    "metadata_values",
    "parse_patient_age",
    "patient_key",
    "record_value",
]

logger = logging.getLogger(__name__)

#: Patient-level tags kept in the patient (and study, series) record ``Metadata``.
PATIENT_KEYWORDS: Final = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "TypeOfPatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientAddress",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientBreedDescription",
    "ResponsiblePerson",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
)

#: Study-level tags kept in the study (and series) record ``Metadata``.
STUDY_KEYWORDS: Final = (
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ReferringPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "RequestedProcedureDescription",
    "AdmittingDiagnosesDescription",
    "ReasonForTheRequestedProcedure",
    "StudyStatusID",
    "StudyPriorityID",
)

#: Series-level tags kept in the series record ``Metadata`` (with equipment and
#: acquisition tags that are constant within a series and useful to select it).
SERIES_KEYWORDS: Final = (
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "SeriesDescription",
    "BodyPartExamined",
    "Laterality",
    "ProtocolName",
    "SeriesDate",
    "SeriesTime",
    "PatientPosition",
    "PerformedProcedureStepDescription",
    "PerformedProcedureStepID",
    "OperatorsName",
    "PerformingPhysicianName",
    "FrameOfReferenceUID",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    "SoftwareVersions",
    "MagneticFieldStrength",
    "ScanningSequence",
    "SequenceVariant",
    "SequenceName",
    "MRAcquisitionType",
    "ContrastBolusAgent",
    "ConvolutionKernel",
    "KVP",
)

#: Per-instance tags kept in the instance record ``Metadata``: what anatomical sorting,
#: NIfTI conversion and series selection need.
INSTANCE_KEYWORDS: Final = (
    "InstanceNumber",
    "AcquisitionNumber",
    "ImageType",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceLocation",
    "SliceThickness",
    "SpacingBetweenSlices",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "AcquisitionDate",
    "AcquisitionTime",
    "ContentDate",
    "ContentTime",
    "EchoTime",
    "EchoNumbers",
    "RepetitionTime",
    "InversionTime",
    "FlipAngle",
    "TriggerTime",
    "TemporalPositionIdentifier",
    "DiffusionBValue",
    "ContrastBolusAgent",
    "BurnedInAnnotation",
)

#: UIDs an instance must have to be filed.
REQUIRED_UIDS: Final = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
#: What the patient key (:func:`patient_key`) is derived from.
PATIENT_KEY_KEYWORDS: Final = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
)
_EXTRA_HEADER_KEYWORDS: Final = (
    "SOPClassUID",
    "SOPInstanceUID",
    "SharedFunctionalGroupsSequence",
    "DirectoryRecordSequence",
)
#: Tags the ingest reads from a file's header (everything else is skipped undecoded).
HEADER_KEYWORDS: Final = tuple(
    dict.fromkeys(
        (
            *PATIENT_KEYWORDS,
            *STUDY_KEYWORDS,
            *SERIES_KEYWORDS,
            *INSTANCE_KEYWORDS,
            *_EXTRA_HEADER_KEYWORDS,
        )
    )
)


# ---------------------------------------------------------- instance Metadata
_SKIP = object()


def _convert(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, (MultiValue, list, tuple)):
        items = [_convert(v) for v in value]
        return _SKIP if any(v is _SKIP for v in items) else items
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (float, Decimal)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _SKIP
    if isinstance(value, str):
        return str(value)
    return str(value)


def json_value(element: DataElement) -> Any:
    """The JSON-serialisable value of a pydicom data element.

    ``PersonName`` → ``str``; multi-valued → ``list``; IS/US/SS/... → ``int``;
    DS/FL/FD → ``float`` (non-finite → ``None``); dates, times and UIDs → ``str``; an
    empty numeric value → ``None``, an empty text value → ``""``. Binary values (OB, OW,
    UN, ...) and sequences raise :class:`InvalidInputError` — callers skip them.
    """
    return instance_value(element.VR, element.value, element.keyword or str(element.tag))


def instance_value(vr: str, value: Any, name: str) -> Any:
    """:func:`json_value` of element ``name`` of ``vr`` whose decoded value is ``value``
    (pydicom's, or the same from :mod:`.raw_values`)."""
    if vr in _BINARY_VRS or vr == "SQ":
        raise InvalidInputError(f"element {name} has binary VR {vr}")
    converted = _convert(value)
    if converted is _SKIP:
        raise InvalidInputError(f"element {name} holds undecoded bytes")
    return converted


@functools.cache
def _tags(keywords: tuple[str, ...]) -> tuple[tuple[BaseTag, str], ...]:
    """(tag, keyword) pairs of a keyword list, computed once per list."""
    pairs = ((tag_for_keyword(kw), kw) for kw in keywords)
    return tuple((BaseTag(tag), kw) for tag, kw in pairs if tag is not None)


def _metadata(ds: Dataset, keywords: tuple[str, ...]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    present = ds.keys()
    for tag, keyword in _tags(keywords):
        if tag not in present:
            continue
        try:
            meta[keyword] = json_value(ds[tag])
        except InvalidInputError:
            continue  # binary value: not metadata
        except Exception as exc:  # a value pydicom cannot decode (strict validation mode)
            logger.debug("skipping %s: %s: %s", keyword, type(exc).__name__, exc)
    return meta


def instance_metadata(ds: Dataset) -> dict[str, Any]:
    meta = _metadata(ds, INSTANCE_KEYWORDS)
    # Enhanced (multi-frame) objects keep geometry in the shared functional groups.
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        with contextlib.suppress(Exception):
            group = shared[0]
            for seq_kw, keywords in (
                ("PlaneOrientationSequence", ("ImageOrientationPatient",)),
                (
                    "PixelMeasuresSequence",
                    ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"),
                ),
            ):
                seq = group.get(seq_kw)
                if seq:
                    for keyword, value in _metadata(seq[0], keywords).items():
                        meta.setdefault(keyword, value)
    return meta


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    return str(value).strip()


def patient_key(ds: Dataset) -> str:
    """The ``PatientUID`` of a dataset's patient: the platform's derivation (the hex
    sha256 of ``PatientID[::IssuerOfPatientID]``, else of
    ``PatientName[::PatientBirthDate][::PatientSex]``, else of ``StudyInstanceUID``),
    computed from the record ``Metadata`` values — see
    :func:`~dcm_processor_service.store.record_values.patient_uid`.

    Raises :class:`DicomInputError` when the dataset has none of these.
    """
    values = metadata_values(ds, PATIENT_KEY_KEYWORDS)
    if not any(values.get(k) for k in ("PatientID", "PatientName", "StudyInstanceUID")):
        raise DicomInputError(
            "cannot build a patient key: no PatientID, no PatientName, no StudyInstanceUID"
        )
    return patient_uid(values)


def _pick(values: dict[str, Any], keywords: tuple[str, ...]) -> dict[str, Any]:
    return {k: values[k] for k in keywords if k in values}


def instance_input(
    ds: Dataset,
    *,
    transfer_syntax_uid: str | None = None,
    peer_id: str | None = None,
    session_id: str | None = None,
) -> InstanceInput:
    """Build the :class:`~dcm_processor_service.store.records.InstanceInput` that files
    ``ds`` (a full dataset or a header read with ``stop_before_pixels``).

    Raises :class:`DicomInputError` naming the missing or invalid UID(s) when
    StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID or SOPClassUID (also taken from
    the file meta's MediaStorageSOPClassUID) is absent or not a UID.
    """
    meta = getattr(ds, "file_meta", None)
    uids = checked_uids(
        {keyword: _text(ds, keyword) for keyword in UID_KEYWORDS},
        lambda: str(meta.get("MediaStorageSOPClassUID") or "").strip() if meta is not None else "",
    )
    return build_instance_input(
        uids,
        metadata_values(ds),
        instance_metadata(ds),
        transfer_syntax_uid or transfer_syntax_of(ds) or str(ExplicitVRLittleEndian),
        peer_id=peer_id,
        session_id=session_id,
    )


#: The UIDs :func:`instance_input` files an instance by.
UID_KEYWORDS: Final = (*REQUIRED_UIDS, "SOPClassUID")


def checked_uids(values: dict[str, str], media_sop_class: Callable[[], str]) -> dict[str, str]:
    """The stripped texts of :data:`UID_KEYWORDS` (``values``; SOPClassUID falls back
    to ``media_sop_class()``, the file meta's); :class:`DicomInputError` naming each one
    missing or not a UID."""
    problems: list[str] = []
    uids: dict[str, str] = {}
    for keyword in UID_KEYWORDS:
        value = values[keyword]
        if not value and keyword == "SOPClassUID":
            value = media_sop_class()
        if not value:
            problems.append(f"{keyword} is missing")
        elif not is_uid(value):
            problems.append(
                f"{keyword} {value[:70]!r} is not a UID (digits and dots, at most 64 characters)"
            )
        uids[keyword] = value
    if problems:
        raise DicomInputError("; ".join(problems))
    return uids


def build_instance_input(
    uids: dict[str, str],
    header_values: dict[str, Any],
    instance_meta: dict[str, Any],
    transfer_syntax_uid: str,
    *,
    peer_id: str | None,
    session_id: str | None,
) -> InstanceInput:
    """The :class:`InstanceInput` of an instance whose checked UIDs, record ``Metadata``
    values (:func:`metadata_values`) and instance ``Metadata``
    (:func:`instance_metadata`) are given."""
    header = {**header_values, **uids}
    series_meta = _pick(header, SERIES_KEYWORDS)
    modality = series_meta.get("Modality")
    return InstanceInput(
        patient_uid=patient_uid(header),
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        transfer_syntax_uid=transfer_syntax_uid,
        patient_meta=_pick(header, PATIENT_KEYWORDS),
        study_meta=_pick(header, STUDY_KEYWORDS),
        series_meta=series_meta,
        instance_meta=instance_meta,
        modality=str(modality) if isinstance(modality, str) and modality else None,
        peer_id=peer_id,
        session_id=session_id,
        header=header,
    )


# ------------------------------------------------------------ value conversion
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
#: What :func:`record_value` returns for an element the record leaves out.
OMIT: Final = object()


def _metadata_item(value: Any, vr: str) -> Any:
    if vr == "AT":  # as the platform's JSON conversion writes it
        return f"{int(value):08X}"
    return _scalar(value, vr)


def _metadata_value(dataset: Dataset, tag: Any) -> Any:
    """The record ``Metadata`` value of one top-level element, or ``OMIT``."""
    try:
        elem = dataset[tag]
        value = elem.value
    except Exception:  # a value pydicom cannot parse: kept as its raw text
        return _raw_text(dataset, tag) or OMIT
    keyword = elem.keyword
    if not keyword or elem.VR == "SQ" or elem.VR in _BINARY_VRS:
        return OMIT
    return record_value(keyword, elem.VR, value)


def record_value(keyword: str, vr: str, value: Any) -> Any:
    """The record ``Metadata`` value of element ``keyword`` (of ``vr``, not a sequence
    nor binary) whose decoded value is ``value`` (pydicom's, or the same from
    :mod:`.raw_values`), or ``OMIT``: the rules of :func:`metadata_values`."""
    if isinstance(value, (bytes, bytearray)):
        return OMIT
    if keyword == "PatientName":  # always text, "" when empty (as the platform stores it)
        if isinstance(value, (MultiValue, list, tuple)):
            return "\\".join(str(v) for v in value)
        return "" if value is None else str(value)
    if value is None or value == "":
        return OMIT
    if isinstance(value, (MultiValue, list, tuple)):
        if not value:
            return OMIT
        return [_metadata_item(v, vr) for v in value]
    if keyword == "PatientAge":
        age = parse_patient_age(value)
        return str(value) if age is None else age
    item = _metadata_item(value, vr)
    return OMIT if item is None else item


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
        if value is not OMIT:
            out[pydicom.datadict.keyword_for_tag(tag)] = value
    return out


# ------------------------------------------------------------- simplified JSON
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

    Raises:
        InvalidInputError: no dataset given, or given both as ``ds`` and ``dataset``,
            or one of another type.
        DicomInputError: the path is not a readable DICOM file (named in the message).
    """
    if ds is not None and dataset is not None:
        raise InvalidInputError("give the dataset once: as 'ds' or as 'dataset', not both")
    dataset = ds if ds is not None else dataset
    if dataset is None:
        raise InvalidInputError("missing 'ds' - a pydicom Dataset or a path to a DICOM file")
    dataset = read_dataset(dataset, "ds" if ds is not None else "dataset")
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
