"""Derived DICOM objects in a reference's patient/study, and the helpers they share.

Every writer in this package (:func:`make_series_dicom`, :func:`make_pdf_dicom`,
:func:`~dcm_processor_service.dicom.nifti.nifti_to_dicom`, the SEG and SR builders)
uses the same three helpers, so a derived object always looks the same to a PACS:

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
* :func:`new_uid` - every new UID (study, series, instance, frame of reference).

Series numbers of derived objects are the reference's ``SeriesNumber`` plus an offset
that tells the kind of object apart (see :data:`SERIES_NUMBER_OFFSETS`): image series
+1000, segmentations +2000, structured reports +3000, PDF documents +4000 (just the
offset when the reference has no series number). Every writer accepts an explicit
``series_number`` too.

AI provenance is optional: pass an :class:`AlgorithmInfo` and the object records the
algorithm's name and version in ``ContributingEquipmentSequence`` (purpose "Processing
Equipment"), and, for segmentations, in each segment's algorithm identification.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import functools
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pydicom
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from .._atomic_file import atomic_write
from .._errors import DicomInputError, InvalidInputError

if TYPE_CHECKING:
    from highdicom import ContributingEquipment
from .geometry import plane_of_orientation

__all__ = [
    "SERIES_NUMBER_OFFSETS",
    "AlgorithmInfo",
    "apply_charset",
    "copy_reference_tags",
    "derived_series_number",
    "make_pdf_dicom",
    "make_series_dicom",
    "new_uid",
    "patient_age",
    "reference_dataset",
    "write_datasets",
]

logger = logging.getLogger(__name__)

ENCAPSULATED_PDF_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.104.1"

#: Added to the reference's SeriesNumber for each kind of derived object.
SERIES_NUMBER_OFFSETS: Final = {"image": 1000, "seg": 2000, "sr": 3000, "pdf": 4000}

_MAX_IS: Final = 2**31 - 1

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


def _now() -> _dt.datetime:
    return _dt.datetime.now()


def _da(moment: _dt.datetime) -> str:
    return moment.strftime("%Y%m%d")


def _tm(moment: _dt.datetime) -> str:
    return moment.strftime("%H%M%S.%f")


@dataclass(frozen=True)
class AlgorithmInfo:
    """Who made a derived object: recorded as AI provenance on every writer.

    ``name`` and ``version`` identify the algorithm (e.g. a model and its weights
    version); ``manufacturer`` is the organisation that made it. ``family`` is a code
    from CID 7162 (default "Artificial Intelligence"); ``parameters`` are recorded in
    a segmentation's algorithm identification.
    """

    name: str
    version: str
    manufacturer: str = "dcm-processor-service"
    family: Code = field(default_factory=lambda: codes.DCM.ArtificialIntelligence)
    source: str | None = None
    parameters: Mapping[str, str] | None = None
    description: str | None = None
    device_serial_number: str = "0"

    def __post_init__(self) -> None:
        for what in ("name", "version", "manufacturer"):
            value = getattr(self, what)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInputError(
                    f"invalid AlgorithmInfo '{what}' value {value!r} - must be a non-empty str"
                )
            if len(value) > 64:
                raise InvalidInputError(
                    f"invalid AlgorithmInfo '{what}' value {value[:20]!r}... - must not exceed "
                    f"64 characters (DICOM LO), got {len(value)}"
                )

    @classmethod
    def default(cls) -> AlgorithmInfo:
        """This package itself, for writers that must name an algorithm (SEG)."""
        return cls(name="dcm-processor-service", version=package_version())

    def contributing_equipment(self, when: _dt.datetime | None = None) -> ContributingEquipment:
        """An item of ContributingEquipmentSequence (purpose: Processing Equipment)."""
        from highdicom import ContributingEquipment

        return ContributingEquipment(
            manufacturer=self.manufacturer,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=self.name,
            software_versions=self.version,
            device_serial_number=self.device_serial_number,
            contribution_datetime=(when or _now()).replace(microsecond=0),
            contribution_description=(self.description or f"{self.name} {self.version}")[:64],
        )


def _is_present(ds: Dataset, keyword: str) -> bool:
    return keyword in ds and ds[keyword].value not in (None, "", b"")


def reference_dataset(ref: Dataset | str | os.PathLike[str], what: str = "ref_dicom") -> Dataset:
    """Return the reference as a dataset (reading a file header if given a path).

    Raises :class:`DicomInputError` when the file is not DICOM, or when the reference
    lacks ``StudyInstanceUID`` or both ``PatientID`` and ``PatientName``.
    """
    if isinstance(ref, (str, os.PathLike)):
        try:
            ref = pydicom.dcmread(ref, stop_before_pixels=True)
        except (InvalidDicomError, OSError) as exc:
            raise DicomInputError(
                f"'{what}' {os.fspath(ref)!r} is not a readable DICOM file: {exc}"
            ) from exc
    if not isinstance(ref, Dataset):
        raise InvalidInputError(
            f"invalid '{what}' value of type {type(ref).__name__} - must be a pydicom Dataset "
            "or a path to a DICOM file"
        )
    missing = [kw for kw in _REQUIRED_IDENTITY if not _is_present(ref, kw)]
    if not (_is_present(ref, "PatientID") or _is_present(ref, "PatientName")):
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
        value = DicomSequence([_deep_item(item) for item in value])
    elif isinstance(value, list):
        value = list(value)
    return DataElement(elem.tag, elem.VR, value)


def _deep_item(item: Dataset) -> Dataset:
    copy = Dataset()
    for elem in item:
        if elem.VR == "SQ":
            copy.add(
                DataElement(elem.tag, "SQ", DicomSequence([_deep_item(i) for i in elem.value]))
            )
        else:
            copy.add(DataElement(elem.tag, elem.VR, elem.value))
    return copy


class _ReferenceTags:
    """The reference's tags to copy, collected once and stamped onto many datasets."""

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
        for elem in self.elements:
            value = elem.value
            if elem.VR == "SQ":
                value = DicomSequence([_deep_item(item) for item in value])
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
    _ReferenceTags(ref, equipment=equipment, series=series).stamp(ds)
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


def derived_series_number(ref: Dataset | None, kind: str = "image") -> int:
    """The reference's SeriesNumber plus the offset for ``kind`` (see module docs)."""
    offset = SERIES_NUMBER_OFFSETS[kind]
    base = 0
    if ref is not None:
        try:
            base = int(ref.get("SeriesNumber") or 0)
        except (TypeError, ValueError):
            base = 0
    number = base + offset
    return number if 0 < number <= _MAX_IS else offset


def _check_series_number(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InvalidInputError(
            f"invalid 'series_number' value {value!r} - must be an integer"
        ) from None
    if isinstance(value, bool) or not 0 <= number <= _MAX_IS:
        raise InvalidInputError(
            f"invalid 'series_number' value {value!r} - must be an integer in 0..{_MAX_IS}"
        )
    return number


def _check_description(value: Any, what: str = "series_description") -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInputError(f"invalid '{what}' value {value!r} - must be a str")
    if len(value) > 64:
        raise InvalidInputError(
            f"invalid '{what}' value {value[:20]!r}... - must not exceed 64 characters "
            f"(DICOM LO), got {len(value)}"
        )
    if "\\" in value:
        raise InvalidInputError(f"invalid '{what}' value {value!r} - must not contain a backslash")
    return value


def has_transfer_syntax(ds: Dataset) -> bool:
    """Whether ``ds`` has a file meta header naming its transfer syntax."""
    meta = getattr(ds, "file_meta", None)
    return meta is not None and "TransferSyntaxUID" in meta


def ensure_file_meta(ds: Dataset, transfer_syntax: str = str(ExplicitVRLittleEndian)) -> Dataset:
    """Give ``ds`` a Part 10 file meta header matching its SOP class/instance UIDs."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if not isinstance(meta, FileMetaDataset):
        meta = FileMetaDataset(meta)
    meta.FileMetaInformationGroupLength = 0  # recomputed by pydicom on every write
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"DCMPS_{package_version()}"[:16]
    ds.file_meta = meta
    if getattr(ds, "preamble", None) is None:
        ds.preamble = b"\x00" * 128  # so a plain ds.save_as(path) writes a Part 10 file
    return ds


def make_series_dicom(
    ref_dicom: Dataset | str | os.PathLike[str],
    datasets: Sequence[Dataset],
    series_description: str = "",
    *,
    series_number: int | None = None,
    algorithm: AlgorithmInfo | None = None,
    same_frame_of_reference: bool = True,
) -> list[Dataset]:
    """Turn ``datasets`` into a new derived series of the reference's patient and study.

    In place, for every dataset: the reference's patient, study and equipment tags
    (plus body part, patient position, laterality) are copied; one new
    SeriesInstanceUID is shared by all, each gets a new SOPInstanceUID;
    ``ImageType`` becomes ``DERIVED\\SECONDARY\\<plane>`` with the plane (AXIAL,
    CORONAL, SAGITTAL or OBLIQUE) from the dataset's ImageOrientationPatient (just
    ``DERIVED\\SECONDARY`` without one); SeriesNumber is ``series_number`` or the
    reference's + 1000; SeriesDescription is set when given. When the images carry a
    position and ``same_frame_of_reference`` is true they take the reference's
    FrameOfReferenceUID (they are assumed to share its patient coordinates, as a NIfTI
    converted from the reference series does). ``algorithm`` adds AI provenance.

    Returns the same datasets, as a list. Raises :class:`DicomInputError` if the
    reference lacks patient/study identity, :class:`InvalidInputError` for bad values.
    """
    ref = reference_dataset(ref_dicom)
    datasets = list(datasets)
    if not datasets:
        raise InvalidInputError("invalid 'datasets' value [] - need at least one dataset")
    for index, ds in enumerate(datasets):
        if not isinstance(ds, Dataset):
            raise InvalidInputError(
                f"invalid 'datasets' item {index} of type {type(ds).__name__} - must be a "
                "pydicom Dataset"
            )
    description = _check_description(series_description)
    number = (
        derived_series_number(ref, "image")
        if series_number is None
        else _check_series_number(series_number)
    )
    tags = _ReferenceTags(ref, equipment=True, series=True)
    series_uid = new_uid()
    moment = _now()
    provenance = algorithm.contributing_equipment(moment) if algorithm else None
    frame_uid = ref.get("FrameOfReferenceUID") if same_frame_of_reference else None
    plane_cache: dict[tuple[str, ...], str] = {}
    ref_charset = ref.get("SpecificCharacterSet")
    charset_cache: dict[tuple[str, str], bool] = {}
    for index, ds in enumerate(datasets):
        tags.stamp(ds)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = new_uid()
        ds.SeriesNumber = number
        if description:
            ds.SeriesDescription = description
        if "InstanceNumber" not in ds or ds.InstanceNumber in (None, ""):
            ds.InstanceNumber = index + 1
        if "Modality" not in ds or not ds.Modality:
            ds.Modality = ref.get("Modality") or "OT"
        ds.SeriesDate = _da(moment)
        ds.SeriesTime = _tm(moment)
        image_type = ["DERIVED", "SECONDARY"]
        if "ImageOrientationPatient" in ds and ds.ImageOrientationPatient:
            key = tuple(str(v) for v in ds.ImageOrientationPatient)
            if key not in plane_cache:
                plane_cache[key] = plane_of_orientation(ds.ImageOrientationPatient)
            image_type.append(plane_cache[key])
            if frame_uid:
                ds.FrameOfReferenceUID = frame_uid
                if "PositionReferenceIndicator" in ref:
                    ds.PositionReferenceIndicator = ref.PositionReferenceIndicator
        ds.ImageType = image_type
        if "Laterality" not in ref and _is_present(ref, "BodyPartExamined") and "Laterality" in ds:
            del ds.Laterality  # the reference names a body part without laterality: mirror it
        if provenance is not None:
            ds.ContributingEquipmentSequence = DicomSequence([_deep_item(provenance)])
        apply_charset(ds, ref_charset, charset_cache)
        if "SOPClassUID" in ds:
            ensure_file_meta(ds)
    logger.debug(
        "made derived series %s (%d instances) in study %s",
        series_uid,
        len(datasets),
        ref.StudyInstanceUID,
    )
    return datasets


def _pdf_bytes(pdf_data: str | bytes | bytearray | memoryview | os.PathLike[str]) -> bytes:
    if isinstance(pdf_data, os.PathLike):
        try:
            data = Path(pdf_data).read_bytes()
        except OSError as exc:
            raise InvalidInputError(
                f"invalid 'pdf_data' path {os.fspath(pdf_data)!r}: {exc}"
            ) from exc
    elif isinstance(pdf_data, (bytes, bytearray, memoryview)):
        data = bytes(pdf_data)
    elif isinstance(pdf_data, str):
        data = pdf_data.encode("ascii", errors="replace")
    else:
        raise InvalidInputError(
            f"invalid 'pdf_data' value of type {type(pdf_data).__name__} - must be a base64 "
            "str/bytes of a PDF, the PDF bytes, or a path (pathlib.Path) to a PDF file"
        )
    if data.lstrip()[:5] == b"%PDF-":
        return data.lstrip()
    try:
        decoded = base64.b64decode(b"".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if decoded[:5] == b"%PDF-":
        return decoded
    head = data[:16]
    raise InvalidInputError(
        f"invalid 'pdf_data' value starting {head!r} - not a PDF: neither the bytes nor their "
        "base64 decoding start with '%PDF-'"
    )


def make_pdf_dicom(
    ref_dicom: Dataset | str | os.PathLike[str],
    pdf_data: str | bytes | bytearray | memoryview | os.PathLike[str],
    series_description: str | None = None,
    series_number: int | None = None,
    *,
    document_title: str | None = None,
    algorithm: AlgorithmInfo | None = None,
) -> Dataset:
    """Wrap a PDF in an Encapsulated PDF Storage object in the reference's patient/study.

    ``pdf_data`` is the PDF as base64 (``str`` or ``bytes``), as raw bytes, or a
    :class:`pathlib.Path` to a PDF file. ``series_number`` defaults to the reference's
    + 4000; ``document_title`` to ``series_description`` or "Report". The object is
    ready to write (``ds.save_as(path)``) or send.

    Raises :class:`InvalidInputError` when the data is not a PDF, and
    :class:`DicomInputError` when the reference lacks patient/study identity.
    """
    ref = reference_dataset(ref_dicom)
    pdf = _pdf_bytes(pdf_data)
    description = _check_description(series_description)
    title = _check_description(document_title, "document_title") or description or "Report"
    number = (
        derived_series_number(ref, "pdf")
        if series_number is None
        else _check_series_number(series_number)
    )
    moment = _now()
    ds = Dataset()
    _ReferenceTags(ref, equipment=False, series=False).stamp(ds)
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = new_uid()
    ds.InstanceCreationDate = _da(moment)
    ds.InstanceCreationTime = _tm(moment)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = new_uid()
    ds.SeriesNumber = number
    if description:
        ds.SeriesDescription = description
    ds.SeriesDate = _da(moment)
    ds.SeriesTime = _tm(moment)
    ds.Manufacturer = algorithm.manufacturer if algorithm else "dcm-processor-service"
    ds.ManufacturerModelName = algorithm.name if algorithm else "dcm-processor-service"
    ds.SoftwareVersions = algorithm.version if algorithm else package_version()
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate = _da(moment)
    ds.ContentTime = _tm(moment)
    ds.AcquisitionDateTime = moment.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = title
    ds.ConceptNameCodeSequence = DicomSequence()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf
    ds.EncapsulatedDocumentLength = len(pdf)
    if algorithm is not None:
        ds.ContributingEquipmentSequence = DicomSequence([algorithm.contributing_equipment(moment)])
    apply_charset(ds, ref.get("SpecificCharacterSet"))
    ensure_file_meta(ds)
    logger.debug("made PDF document %s (%d bytes)", ds.SOPInstanceUID, len(pdf))
    return ds


def _write_one(item: tuple[Dataset, Path]) -> Path:
    ds, path = item
    if not has_transfer_syntax(ds):
        ensure_file_meta(ds)
    with atomic_write(path) as out:
        pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return path


def write_datasets(
    datasets: Iterable[Dataset],
    directory: str | os.PathLike[str],
    *,
    name_pattern: str = "{index:05d}_{SOPInstanceUID}.dcm",
    workers: int | None = None,
) -> list[Path]:
    """Write datasets as DICOM files into ``directory`` (created if missing), fast.

    Files are named by ``name_pattern`` (keys: ``index`` from 1, and any keyword of
    the dataset); each is written to a temporary name and renamed, so a reader never
    sees half a file. Writing uses a small thread pool (``workers``, default 4).
    Returns the paths in input order.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    items: list[tuple[Dataset, Path]] = []
    for index, ds in enumerate(datasets, start=1):
        try:
            name = name_pattern.format(
                index=index,
                **{
                    kw: ds.get(kw, "")
                    for kw in re.findall(r"{(\w+)", name_pattern)
                    if kw != "index"
                },
            )
        except (KeyError, ValueError) as exc:
            raise InvalidInputError(f"invalid 'name_pattern' {name_pattern!r}: {exc}") from exc
        if "/" in name or "\\" in name or name in ("", ".", ".."):
            raise InvalidInputError(
                f"invalid file name {name!r} from 'name_pattern' {name_pattern!r} - must not "
                "contain a path separator"
            )
        items.append((ds, out / name))
    if len({path for _, path in items}) != len(items):
        raise InvalidInputError(
            f"'name_pattern' {name_pattern!r} gives the same file name to several datasets"
        )
    n_workers = workers if workers is not None else min(4, max(1, len(items)))
    if n_workers <= 1 or len(items) < 8:
        return [_write_one(item) for item in items]
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        return list(pool.map(_write_one, items))
