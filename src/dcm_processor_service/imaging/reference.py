"""Joining a reference's patient and study: what every derived object copies.

Every writer (:func:`~dcm_processor_service.make_series_dicom`,
:func:`~dcm_processor_service.make_pdf_dicom`, :func:`~dcm_processor_service.nifti_to_dicom`,
the SEG and SR builders) uses these, so a derived object always looks the same to a PACS:

* :func:`reference_dataset` - accept a reference (dataset or file), check it has the
  patient and study identity (``StudyInstanceUID`` and ``PatientID`` or
  ``PatientName``), or raise :class:`~dcm_processor_service.DicomInputError`.
* :func:`copy_reference_tags` - copy the Patient, Patient Study, General Study and
  Clinical Trial tags (and, for image series, the General Equipment and a few series
  tags) from the reference; ``PatientAge`` is taken from the reference or computed from
  ``PatientBirthDate`` and ``StudyDate``.
* :func:`apply_charset` - text is written in the reference's character set when every
  value fits it (so names are byte-identical across the study), else in UTF-8
  (``ISO_IR 192``).
* :func:`derived_series_number` - the reference's ``SeriesNumber`` plus an offset that
  tells the kind of object apart (:data:`SERIES_NUMBER_OFFSETS`): image series +1000,
  segmentations +2000, structured reports +3000, PDF documents +4000 (just the offset
  when the reference has no series number).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Iterator
from typing import Any, Final

from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from .._errors import DicomInputError
from ..dicom_values import MAX_IS, check_series_number
from ..sources import read_dataset

__all__ = [
    "EQUIPMENT_KEYWORDS",
    "IMAGE_SERIES_KEYWORDS",
    "PATIENT_KEYWORDS",
    "SERIES_NUMBER_OFFSETS",
    "STUDY_KEYWORDS",
    "ReferenceTags",
    "apply_charset",
    "copy_item",
    "copy_reference_tags",
    "derived_series_number",
    "is_present",
    "patient_age",
    "reference_dataset",
]

#: Added to the reference's SeriesNumber for each kind of derived object.
SERIES_NUMBER_OFFSETS: Final = {"image": 1000, "seg": 2000, "sr": 3000, "pdf": 4000}

#: Patient, Patient Study and Clinical Trial Subject modules.
PATIENT_KEYWORDS: Final = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "EthnicGroup",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientSpeciesCodeSequence",
    "PatientBreedDescription",
    "PatientBreedCodeSequence",
    "BreedRegistrationSequence",
    "ResponsiblePerson",
    "ResponsiblePersonRole",
    "ResponsibleOrganization",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PatientSexNeutered",
    "AdmittingDiagnosesDescription",
    "Occupation",
    "AdditionalPatientHistory",
    "PregnancyStatus",
    "SmokingStatus",
    "MedicalAlerts",
    "Allergies",
    "ClinicalTrialSponsorName",
    "ClinicalTrialProtocolID",
    "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID",
    "ClinicalTrialSiteName",
    "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID",
)

#: General Study and Clinical Trial Study modules.
STUDY_KEYWORDS: Final = (
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PhysiciansOfRecord",
    "NameOfPhysiciansReadingStudy",
    "ProcedureCodeSequence",
    "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription",
    "ClinicalTrialCoordinatingCenterName",
)

#: General Equipment module (copied for derived image series only, as the SPEC says).
EQUIPMENT_KEYWORDS: Final = (
    "Manufacturer",
    "InstitutionName",
    "InstitutionAddress",
    "StationName",
    "InstitutionalDepartmentName",
    "ManufacturerModelName",
    "DeviceSerialNumber",
    "SoftwareVersions",
)

#: Series tags of the reference that still describe a derived image series.
IMAGE_SERIES_KEYWORDS: Final = ("BodyPartExamined", "PatientPosition", "Laterality")

_REQUIRED_IDENTITY: Final = ("StudyInstanceUID",)
_AGE_RE: Final = re.compile(r"^(\d{3})([DWMY])$")


def is_present(ds: Dataset, keyword: str) -> bool:
    """Whether ``ds`` has ``keyword`` with a non-empty value."""
    return keyword in ds and ds[keyword].value not in (None, "", b"")


def reference_dataset(ref: Dataset | str | os.PathLike[str], what: str = "ref_dicom") -> Dataset:
    """Return the reference as a dataset (reading a file header if given a path).

    Raises :class:`DicomInputError` when the file is not DICOM, or when the reference
    lacks ``StudyInstanceUID`` or both ``PatientID`` and ``PatientName``.
    """
    ref = read_dataset(ref, what)
    missing = [kw for kw in _REQUIRED_IDENTITY if not is_present(ref, kw)]
    if not (is_present(ref, "PatientID") or is_present(ref, "PatientName")):
        missing.append("PatientID or PatientName")
    if missing:
        raise DicomInputError(
            f"'{what}' (SOPInstanceUID {ref.get('SOPInstanceUID', '?')}) lacks "
            f"{', '.join(missing)} - a derived object must join the reference's patient and "
            "study; pass an image of the source series"
        )
    return ref


def _parse_da(value: Any) -> _dt.date | None:
    text = str(value or "").strip()
    try:
        return _dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def patient_age(ref: Dataset) -> str | None:
    """The reference's PatientAge (``nnnY`` etc.), else computed from birth and study date.

    Computed ages use days (``nnnD``) under 62 days, months (``nnnM``) under two years,
    else years (``nnnY``); ``None`` when neither the age nor both dates are known.
    """
    age = str(ref.get("PatientAge", "") or "").strip()
    if _AGE_RE.match(age):
        return age
    birth = _parse_da(ref.get("PatientBirthDate"))
    when = _parse_da(ref.get("StudyDate")) or _parse_da(ref.get("SeriesDate"))
    if birth is None or when is None or when < birth:
        return None
    days = (when - birth).days
    years = when.year - birth.year - ((when.month, when.day) < (birth.month, birth.day))
    months = (when.year - birth.year) * 12 + when.month - birth.month - (when.day < birth.day)
    if days < 62:
        value, unit = days, "D"
    elif years < 2:
        value, unit = months, "M"
    else:
        value, unit = years, "Y"
    return f"{min(value, 999):03d}{unit}"


def _copy_element(ref: Dataset, keyword: str) -> DataElement | None:
    if keyword not in ref:
        return None
    elem = ref[keyword]
    value = elem.value
    if elem.VR == "SQ":
        value = DicomSequence([copy_item(item) for item in value])
    elif isinstance(value, list):
        value = list(value)
    return DataElement(elem.tag, elem.VR, value)


def copy_item(item: Dataset) -> Dataset:
    """A copy of a sequence item whose nested items are copies too (never shared)."""
    copy = Dataset()
    for elem in item:
        if elem.VR == "SQ":
            copy.add(DataElement(elem.tag, "SQ", DicomSequence([copy_item(i) for i in elem.value])))
        else:
            copy.add(DataElement(elem.tag, elem.VR, elem.value))
    return copy


class ReferenceTags:
    """The reference's tags to copy (see :func:`copy_reference_tags`), collected once
    and stamped onto many datasets."""

    def __init__(self, ref: Dataset, *, equipment: bool, series: bool) -> None:
        keywords: list[str] = [*PATIENT_KEYWORDS, *STUDY_KEYWORDS]
        if equipment:
            keywords += EQUIPMENT_KEYWORDS
        if series:
            keywords += IMAGE_SERIES_KEYWORDS
        self.elements = [e for e in (_copy_element(ref, kw) for kw in keywords) if e is not None]
        age = patient_age(ref)
        if age is not None and not _AGE_RE.match(str(ref.get("PatientAge", "") or "")):
            self.elements.append(DataElement(0x00101010, "AS", age))
        present = {e.tag for e in self.elements}
        # Type 2 identity tags: present (maybe empty) in every derived object.
        for tag, vr in (
            (0x00100010, "PN"),  # PatientName
            (0x00100020, "LO"),  # PatientID
            (0x00100030, "DA"),  # PatientBirthDate
            (0x00100040, "CS"),  # PatientSex
            (0x00080020, "DA"),  # StudyDate
            (0x00080030, "TM"),  # StudyTime
            (0x00080090, "PN"),  # ReferringPhysicianName
            (0x00200010, "SH"),  # StudyID
            (0x00080050, "SH"),  # AccessionNumber
        ):
            if tag not in present:
                self.elements.append(DataElement(tag, vr, ""))

    def stamp(self, ds: Dataset) -> None:
        """Copy the tags onto ``ds`` (in place; nested items are copied too)."""
        for elem in self.elements:
            value = elem.value
            if elem.VR == "SQ":
                value = DicomSequence([copy_item(item) for item in value])
            elif isinstance(value, list):
                value = list(value)
            ds[elem.tag] = DataElement(elem.tag, elem.VR, value)


def copy_reference_tags(
    ref: Dataset, ds: Dataset, *, equipment: bool = False, series: bool = False
) -> Dataset:
    """Copy the patient/study identity of ``ref`` onto ``ds`` (in place; returns ``ds``).

    ``equipment`` also copies the General Equipment tags, ``series`` the body part,
    patient position and laterality. The character set is then chosen by
    :func:`apply_charset` (the reference's when every text fits it).
    """
    ReferenceTags(ref, equipment=equipment, series=series).stamp(ds)
    apply_charset(ds, ref.get("SpecificCharacterSet"))
    return ds


_TEXT_VRS: Final = frozenset({"SH", "LO", "UC", "ST", "LT", "UT", "PN"})


def _text_values(ds: Dataset) -> Iterator[str]:
    """Every character-set-sensitive text value of ``ds``, nested items included.

    Reading the values also decodes them with the dataset's current character set, which
    must happen before :func:`apply_charset` relabels it.
    """
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _text_values(item)
        elif elem.VR in _TEXT_VRS and elem.value not in (None, ""):
            values = elem.value if isinstance(elem.value, (list, MultiValue)) else [elem.value]
            for value in values:
                yield str(value)


def _fits(text: str, charset: Any, cache: dict[tuple[str, str], bool]) -> bool:
    key = (text, str(charset))
    if key not in cache:
        try:
            codec = convert_encodings([charset] if isinstance(charset, str) else list(charset))
            cache[key] = len(codec) == 1 and bool(text.encode(codec[0]))
        except (LookupError, UnicodeEncodeError, ValueError):
            cache[key] = False
    return cache[key]


def apply_charset(
    ds: Dataset, ref_charset: Any = None, cache: dict[tuple[str, str], bool] | None = None
) -> Dataset:
    """Set ``SpecificCharacterSet`` for the text ``ds`` holds (in place; returns ``ds``).

    ASCII-only text keeps ``ref_charset`` (or none); otherwise the reference's character
    set is kept when every value can be encoded in it (a single-valued set such as
    ``ISO_IR 100``), else UTF-8 ``ISO_IR 192`` is used.
    """
    cache = {} if cache is None else cache
    texts = set(_text_values(ds))
    charset: Any = ref_charset if ref_charset not in ("", None, []) else None
    if isinstance(charset, (list, MultiValue)) and len(charset) == 1:
        charset = charset[0]
    if not all(text.isascii() for text in texts) and not (
        charset is not None
        and isinstance(charset, str)
        and all(_fits(text, charset, cache) for text in texts if not text.isascii())
    ):
        charset = "ISO_IR 192"
    if charset is None:
        if "SpecificCharacterSet" in ds:
            del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset
    return ds


def derived_series_number(
    ref: Dataset | None, kind: str = "image", series_number: Any = None
) -> int:
    """The SeriesNumber of a derived object of ``kind``: ``series_number`` when the
    caller gives one (checked: an integer in 0..2**31-1), else the reference's
    SeriesNumber plus the offset for ``kind`` (see module docs)."""
    if series_number is not None:
        return check_series_number(series_number)
    offset = SERIES_NUMBER_OFFSETS[kind]
    base = 0
    if ref is not None:
        try:
            base = int(ref.get("SeriesNumber") or 0)
        except (TypeError, ValueError):
            base = 0
    number = base + offset
    return number if 0 < number <= MAX_IS else offset
