"""Ingest: file DICOM instances into the store's index (patient → study → series → instance).

The platform's DICOM server normally does this filing; :func:`ingest` does the same so
the local runner and tests can load a folder of DICOM, and so
:func:`~dcm_processor_service.dicom.series.get_series_dicom` works on it.

Sources (:data:`IngestSource`): a folder (walked recursively, names in sorted order), a
file, a DICOMDIR file (its referenced files are followed), a pydicom ``Dataset``, a
pydicom ``FileSet``, or any iterable mixing those. ::

    from dcm_processor_service.dicom.index import ingest

    report = ingest("/data/incoming", session_id=session.id, peer_id="PACS")
    print(report.summary())           # stored 312 instance(s) in 4 series; 1 failed
    for path, reason in report.failed:
        print(path, reason)

What gets stored, per instance:

- the **exact bytes** of the file, streamed (a file is never loaded whole); a pydicom
  dataset, or a file holding a bare dataset without the Part 10 header, is encoded as a
  DICOM Part 10 file with ``dcmwrite(..., enforce_file_format=True)``;
- the records (SPEC §4): :data:`PATIENT_KEYWORDS`, :data:`STUDY_KEYWORDS` and
  :data:`SERIES_KEYWORDS` as ``Metadata``, :data:`INSTANCE_KEYWORDS` as the instance's
  ``Metadata`` (what sorting and selection need), the peer and the session.

Re-ingesting the same SOPInstanceUID replaces the stored instance (never duplicates), so
re-running an interrupted ingest is safe.

Two patients are never merged: an instance whose series or study is already filed under
another patient (by :func:`patient_key`), or a re-ingest that would move a stored
SOPInstanceUID to another patient, is refused with a per-file
:class:`IngestConflict` naming both patients and the UID (:attr:`IngestReport.conflicts`);
what is stored stays untouched. The store checks this in the filing transaction, so it
holds for concurrent ingests too.

Bad input never stops an ingest half-way: non-DICOM, truncated or unreadable files,
files missing a required UID, FIFOs and broken links each become one
``(path, reason)`` entry of :attr:`IngestReport.failed` while every good file is stored.
DICOMDIR files met while walking a folder and hidden entries (names starting with ``.``)
are *skipped* (:attr:`IngestReport.skipped`), not failures. Each instance is stored in one
transaction, so a crash leaves whole instances only. Errors of the *store* itself (disk
full, database down) are not per-file problems: they propagate.

Memory does not grow with the number of files: files are read one at a time (header with
``stop_before_pixels``, then streamed), and no dataset is kept. The report keeps one small
entry per file; use :func:`iter_ingest` to consume outcomes one by one instead.

Patient key (the record's ``PatientUID``): the platform's sha256 derivation — see
:func:`patient_key`. Record ``Metadata`` values follow the platform's rules — see
:func:`~dcm_processor_service.dicom.simplified_json.metadata_values`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import io
import logging
import math
import os
import re
import stat
import struct
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, BinaryIO, Final, NamedTuple, cast

from pydicom import dcmread, dcmwrite
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.valuerep import PersonName

from .._errors import DicomInputError, InvalidInputError, PatientConflictError
from .._runtime import store_for
from ..store.base import Store
from ..store.record_values import patient_uid
from ..store.records import InstanceInput, InstanceRecord
from .dicomdir import DicomdirReference, dicomdir_references
from .simplified_json import metadata_values

__all__ = [
    "INSTANCE_KEYWORDS",
    "PATIENT_KEYWORDS",
    "SERIES_KEYWORDS",
    "STUDY_KEYWORDS",
    "IngestConflict",
    "IngestFailure",
    "IngestOutcome",
    "IngestReport",
    "IngestSkip",
    "IngestSource",
    "StoredInstance",
    "ingest",
    "instance_input",
    "iter_ingest",
    "json_value",
    "patient_key",
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

_REQUIRED_UIDS: Final = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_PATIENT_KEY_KEYWORDS: Final = (
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
#: Tags read from a file's header (everything else is skipped without decoding).
_HEADER_KEYWORDS: Final = tuple(
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

MEDIA_STORAGE_DIRECTORY_STORAGE: Final = "1.2.840.10008.1.3.10"
_UID_RE = re.compile(r"^[0-9][0-9.]{0,63}$")
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "SQ"})


# ----------------------------------------------------------------------- outcomes
@dataclass(frozen=True)
class StoredInstance:
    """One instance filed by the ingest."""

    path: str
    """The file (or ``<dataset #n>``) it came from."""
    instance_id: str
    sop_instance_uid: str
    series_instance_uid: str
    series_id: str
    """The series record ``_id``."""
    size: int
    """Bytes stored."""


class IngestFailure(NamedTuple):
    """A file that could not be ingested: unpacks as ``(path, reason)``."""

    path: str
    reason: str


class IngestConflict(IngestFailure):
    """A file refused because its series, study or SOP instance is already filed under
    another patient (see :class:`~dcm_processor_service.PatientConflictError`): unpacks
    as ``(path, reason)``, the reason naming both patients and the UID."""

    __slots__ = ()


class IngestSkip(NamedTuple):
    """An entry deliberately not ingested (DICOMDIR, hidden file): ``(path, reason)``."""

    path: str
    reason: str


IngestOutcome = StoredInstance | IngestFailure | IngestSkip

#: What :func:`ingest` accepts: a path (folder, file or DICOMDIR), a pydicom dataset or
#: file-set, or an iterable of those.
IngestSource = str | os.PathLike[str] | Dataset | FileSet | Iterable[Any]


@dataclass
class IngestReport:
    """What an :func:`ingest` did.

    ``stored``: one :class:`StoredInstance` per filed instance; ``failed``: ``(path,
    reason)`` per file that could not be filed; ``skipped``: ``(path, reason)`` per entry
    deliberately left out (DICOMDIR files met in a folder, hidden files); ``series_ids``:
    the record ``_id`` of each series that received instances, in first-seen order.
    """

    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[IngestFailure] = field(default_factory=list)
    skipped: list[IngestSkip] = field(default_factory=list)
    series_ids: list[str] = field(default_factory=list)
    bytes_stored: int = 0
    elapsed_s: float = 0.0
    _series_seen: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """``True`` when no file failed."""
        return not self.failed

    @property
    def conflicts(self) -> list[IngestConflict]:
        """The failures that are patient conflicts (also in :attr:`failed`)."""
        return [f for f in self.failed if isinstance(f, IngestConflict)]

    @property
    def n_stored(self) -> int:
        """Number of instances stored."""
        return len(self.stored)

    @property
    def n_failed(self) -> int:
        """Number of files that failed."""
        return len(self.failed)

    @property
    def n_skipped(self) -> int:
        """Number of entries skipped."""
        return len(self.skipped)

    def add(self, outcome: IngestOutcome) -> None:
        """Record one outcome of :func:`iter_ingest`."""
        if isinstance(outcome, StoredInstance):
            self.stored.append(outcome)
            self.bytes_stored += outcome.size
            if outcome.series_id not in self._series_seen:
                self._series_seen.add(outcome.series_id)
                self.series_ids.append(outcome.series_id)
        elif isinstance(outcome, IngestFailure):
            self.failed.append(outcome)
        else:
            self.skipped.append(outcome)

    def summary(self) -> str:
        """One line: counts of stored, failed and skipped entries."""
        text = f"stored {self.n_stored} instance(s) in {len(self.series_ids)} series"
        if self.failed:
            text += f"; {self.n_failed} failed"
            if self.conflicts:
                text += f" ({len(self.conflicts)} patient conflict(s))"
        if self.skipped:
            text += f"; {self.n_skipped} skipped"
        return text

    def raise_for_failures(self) -> None:
        """Raise :class:`DicomInputError` listing the failures (the first 20), if any."""
        if not self.failed:
            return
        lines = [f"  {path}: {reason}" for path, reason in self.failed[:20]]
        if self.n_failed > 20:
            lines.append(f"  ... and {self.n_failed - 20} more")
        raise DicomInputError(
            f"{self.n_failed} file(s) could not be ingested:\n" + "\n".join(lines)
        )


# ------------------------------------------------------------------- metadata
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
    if element.VR in _BINARY_VRS:
        raise InvalidInputError(
            f"element {element.keyword or element.tag} has binary VR {element.VR}"
        )
    value = _convert(element.value)
    if value is _SKIP:
        raise InvalidInputError(f"element {element.keyword or element.tag} holds undecoded bytes")
    return value


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


def _instance_metadata(ds: Dataset) -> dict[str, Any]:
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
    values = metadata_values(ds, _PATIENT_KEY_KEYWORDS)
    if not any(values.get(k) for k in ("PatientID", "PatientName", "StudyInstanceUID")):
        raise DicomInputError(
            "cannot build a patient key: no PatientID, no PatientName, no StudyInstanceUID"
        )
    return patient_uid(values)


def _pick(values: dict[str, Any], keywords: tuple[str, ...]) -> dict[str, Any]:
    return {k: values[k] for k in keywords if k in values}


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return str(ts)
    implicit, little = ds.original_encoding
    if implicit:
        return str(ImplicitVRLittleEndian)
    if little is False:
        return str(ExplicitVRBigEndian)
    return str(ExplicitVRLittleEndian)


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
    problems: list[str] = []
    uids: dict[str, str] = {}
    meta = getattr(ds, "file_meta", None)
    for keyword in (*_REQUIRED_UIDS, "SOPClassUID"):
        value = _text(ds, keyword)
        if not value and keyword == "SOPClassUID" and meta is not None:
            value = str(meta.get("MediaStorageSOPClassUID") or "").strip()
        if not value:
            problems.append(f"{keyword} is missing")
        elif not _UID_RE.match(value):
            problems.append(
                f"{keyword} {value[:70]!r} is not a UID (digits and dots, at most 64 characters)"
            )
        uids[keyword] = value
    if problems:
        raise DicomInputError("; ".join(problems))
    header = {**metadata_values(ds), **uids}
    patient_meta = _pick(header, PATIENT_KEYWORDS)
    study_meta = _pick(header, STUDY_KEYWORDS)
    series_meta = _pick(header, SERIES_KEYWORDS)
    modality = series_meta.get("Modality")
    return InstanceInput(
        patient_uid=patient_uid(header),
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        transfer_syntax_uid=transfer_syntax_uid or _transfer_syntax(ds),
        patient_meta=patient_meta,
        study_meta=study_meta,
        series_meta=series_meta,
        instance_meta=_instance_metadata(ds),
        modality=str(modality) if isinstance(modality, str) and modality else None,
        peer_id=peer_id,
        session_id=session_id,
        header=header,
    )


# --------------------------------------------------------------- file structure
class _Reject(Exception):
    """A file is not ingestible; ``str(exc)`` is the reason for the report."""


class _Unverifiable(Exception):
    """The structure walker met something it does not model; the check is skipped."""


_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_PIXEL_TAGS: Final = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_UNDEFINED: Final = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class _StructureWalker:
    """Walks every data element of a file by its header alone (seeking over values) to
    prove that no element runs past the end of the file — pydicom silently returns a
    partial dataset for a truncated file, and ``stop_before_pixels`` never looks at the
    pixel data. Cost: a few small reads per element, one seek over the pixel data."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size
        self.pixel_data = False

    def _read(self, n: int) -> bytes:
        pos = self.fh.tell()
        data = self.fh.read(n)
        if len(data) != n:
            raise _Reject(f"truncated: the file ends inside an element header at byte {pos}")
        return data

    def _header(self, implicit: bool, little: bool) -> tuple[int, bytes | None, int]:
        pos = self.fh.tell()
        group, elem = struct.unpack("<HH" if little else ">HH", self._read(4))
        tag = group << 16 | elem
        u32 = "<I" if little else ">I"
        if group == 0xFFFE or implicit:
            return tag, None, struct.unpack(u32, self._read(4))[0]
        vr = self._read(2)
        if not (vr.isalpha() and vr.isupper()):
            raise _Unverifiable(f"no valid VR at byte {pos}")
        if vr in _LONG_VRS:
            self._read(2)
            return tag, vr, struct.unpack(u32, self._read(4))[0]
        return tag, vr, struct.unpack("<H" if little else ">H", self._read(2))[0]

    def _skip(self, tag: int, length: int) -> None:
        here = self.fh.tell()
        if here + length > self.size:
            raise _Reject(
                f"truncated: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {here} declares "
                f"{length} bytes but only {self.size - here} remain"
            )
        self.fh.seek(here + length)

    def meta(self, start: int) -> int:
        """Walk the group 0002 elements from ``start``; return where the dataset begins."""
        self.fh.seek(start)
        while self.fh.tell() + 8 <= self.size:
            pos = self.fh.tell()
            peek = self.fh.read(2)
            self.fh.seek(pos)
            if struct.unpack("<H", peek)[0] != 0x0002:
                break
            try:
                tag, _vr, length = self._header(False, True)
            except _Unverifiable:
                self.fh.seek(pos)
                tag, _vr, length = self._header(True, True)
            if length == _UNDEFINED:
                raise _Unverifiable("undefined length in the file meta")
            self._skip(tag, length)
        return self.fh.tell()

    def dataset(self, implicit: bool, little: bool, *, nested: bool = False) -> None:
        """Walk elements to the end of the file (top level) or to an item delimiter."""
        while True:
            if self.fh.tell() >= self.size:
                if nested:
                    raise _Reject("truncated: the file ends inside a sequence item")
                return
            tag, vr, length = self._header(implicit, little)
            if tag == _ITEM_END and nested:
                return
            if tag in (_ITEM, _ITEM_END, _SEQ_END):
                raise _Unverifiable(f"unexpected item tag at byte {self.fh.tell()}")
            if not nested and tag in _PIXEL_TAGS:
                self.pixel_data = True
            if length == _UNDEFINED:
                self._sequence(implicit or vr == b"UN", little if vr != b"UN" else True)
            else:
                self._skip(tag, length)

    def _sequence(self, implicit: bool, little: bool) -> None:
        while True:
            if self.fh.tell() >= self.size:
                raise _Reject(
                    "truncated: the file ends inside a sequence or encapsulated pixel data"
                )
            tag, _vr, length = self._header(implicit, little)
            if tag == _SEQ_END:
                return
            if tag != _ITEM:
                raise _Unverifiable(f"expected an item at byte {self.fh.tell()}")
            if length == _UNDEFINED:
                self.dataset(implicit, little, nested=True)
            else:
                self._skip(tag, length)


def _check_structure(fh: BinaryIO, size: int, ds: Dataset, start: int) -> None:
    """Raise :class:`_Reject` when the file is truncated (an element runs past its end,
    or the header describes an image but the pixel data is missing)."""
    walker = _StructureWalker(fh, size)
    implicit, little = ds.original_encoding
    try:
        body = walker.meta(start)
    except _Unverifiable as exc:
        logger.debug("structure of %s not verified: %s", getattr(fh, "name", "?"), exc)
        return
    if _transfer_syntax(ds) == DeflatedExplicitVRLittleEndian or implicit is None:
        return  # a deflated body cannot be walked without inflating it
    # Some writers encode the body in the other VR mode than their transfer syntax says
    # (pydicom reads them anyway): try the declared mode, then the other one.
    for mode in (bool(implicit), not implicit):
        walker.pixel_data = False
        fh.seek(body)
        try:
            walker.dataset(mode, little is not False)
            break
        except _Unverifiable as exc:
            logger.debug(
                "structure of %s not verified as %s VR: %s",
                getattr(fh, "name", "?"),
                "implicit" if mode else "explicit",
                exc,
            )
    else:
        return
    if not walker.pixel_data and "Rows" in ds and "Columns" in ds:
        # An image header without its pixel data: the file stops between two elements.
        # (A SOP class alone is no proof: header-only files exist, e.g. in test sets.)
        raise _Reject(
            "truncated: the header describes an image (Rows, Columns) but there is no Pixel Data"
        )


# ---------------------------------------------------------------------- reading
@contextlib.contextmanager
def _pydicom_warnings(what: str) -> Iterator[None]:
    """pydicom's warnings about one file become debug log lines naming the file."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        logger.debug("%s: %s", what, warning.message)


def _looks_like_bare_dataset(fh: BinaryIO) -> bool:
    """Whether a file without the Part 10 header starts like a DICOM dataset."""
    head = fh.read(8)
    fh.seek(0)
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        group, elem = struct.unpack(order + "HH", head[:4])
        if group in (0x0002, 0x0008) and elem < 0x1000:
            return True
    return False


def _read_header(fh: BinaryIO) -> tuple[Dataset, bool]:
    """(header dataset, is Part 10) — raises :class:`_Reject` for non-DICOM.

    A file without the 128-byte preamble and ``DICM`` prefix is read as a bare dataset
    only when it starts like one (group 0002 or 0008) and has the required UIDs —
    ``force=True`` alone would "read" almost any file.
    """
    try:
        return dcmread(fh, stop_before_pixels=True, specific_tags=list(_HEADER_KEYWORDS)), True
    except InvalidDicomError:
        fh.seek(0)
        if not _looks_like_bare_dataset(fh):
            raise _Reject(
                "not a DICOM file (no 'DICM' prefix and no DICOM data elements at the start)"
            ) from None
    except OSError as exc:
        if exc.errno is not None:
            raise  # a real I/O error
        # pydicom raises a bare OSError when the data ends inside a sequence
        raise _Reject(f"truncated or corrupt DICOM ({exc})") from exc
    except Exception as exc:
        raise _Reject(f"unreadable DICOM header ({type(exc).__name__}: {exc})") from exc
    try:
        ds = dcmread(fh, force=True, stop_before_pixels=True, specific_tags=list(_HEADER_KEYWORDS))
    except OSError as exc:
        if exc.errno is not None:
            raise
        raise _Reject(f"not a DICOM file, or a truncated one ({exc})") from exc
    except Exception as exc:
        raise _Reject(f"not a DICOM file ({type(exc).__name__}: {exc})") from exc
    if not all(_text(ds, kw) for kw in _REQUIRED_UIDS):
        raise _Reject("not a DICOM file (no 'DICM' prefix and no readable DICOM dataset)")
    return ds, False


def _is_dicomdir(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    sop_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return sop_class == MEDIA_STORAGE_DIRECTORY_STORAGE or "DirectoryRecordSequence" in ds


def _encode(ds: Dataset) -> tuple[io.BytesIO, str]:
    """Encode a dataset as a Part 10 file (without changing the caller's dataset)."""
    meta = getattr(ds, "file_meta", None)
    target = ds
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if not ts:
        if _is_encapsulated(ds):
            raise DicomInputError(
                "the dataset has encapsulated (compressed) Pixel Data but no file_meta "
                "TransferSyntaxUID - set ds.file_meta.TransferSyntaxUID to its transfer syntax"
            )
        target = copy.copy(ds)
        new_meta = FileMetaDataset()
        if meta is not None:
            for element in meta:
                new_meta.add(element)
        ts = UID(_transfer_syntax(ds))
        new_meta.TransferSyntaxUID = ts
        target.file_meta = new_meta
    buffer = io.BytesIO()
    dcmwrite(buffer, target, enforce_file_format=True)
    buffer.seek(0)
    return buffer, str(ts)


def _is_encapsulated(ds: Dataset) -> bool:
    """Whether the dataset's Pixel Data is encapsulated (compressed)."""
    if "PixelData" not in ds:
        return False
    element = ds["PixelData"]
    if element.is_undefined_length:
        return True
    value = element.value
    return isinstance(value, (bytes, bytearray)) and bytes(value[:4]) == b"\xfe\xff\x00\xe0"


class _SourceReadError(Exception):
    """Reading the *source* file failed while streaming it to the store."""


class _SourceReader:
    """Passes ``read`` through, marking source I/O errors so they are not mistaken for
    store errors."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh

    def read(self, n: int = -1) -> bytes:
        try:
            return self._fh.read(n)
        except OSError as exc:
            raise _SourceReadError(exc.strerror or str(exc)) from exc


# -------------------------------------------------------------------- sources
@dataclass(frozen=True)
class _FileItem:
    path: str
    explicit: bool  # named by the caller (a DICOMDIR is followed) vs found in a folder


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _walk(
    root: str, visited: set[tuple[int, int]]
) -> Iterator[_FileItem | IngestFailure | IngestSkip]:
    try:
        st = os.stat(root)
        key = (st.st_dev, st.st_ino)
        if key in visited:
            yield IngestSkip(root, "folder already walked (symbolic link loop)")
            return
        visited.add(key)
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        yield IngestFailure(root, f"cannot list folder: {exc.strerror or exc}")
        return
    for entry in entries:
        if entry.name.startswith("."):
            yield IngestSkip(entry.path, "hidden entry")
            continue
        try:
            if entry.is_dir():
                yield from _walk(entry.path, visited)
            elif entry.is_file():
                yield _FileItem(entry.path, explicit=False)
            elif entry.is_symlink() and not os.path.exists(entry.path):
                yield IngestFailure(
                    entry.path, f"broken symbolic link (to {os.readlink(entry.path)!r})"
                )
            else:
                yield IngestFailure(entry.path, f"{_file_type(entry.stat().st_mode)}, not a file")
        except OSError as exc:
            yield IngestFailure(entry.path, f"cannot inspect: {exc.strerror or exc}")


def _expand_path(
    path: str, visited: set[tuple[int, int]]
) -> Iterator[_FileItem | IngestFailure | IngestSkip]:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            yield IngestFailure(path, f"broken symbolic link (to {os.readlink(path)!r})")
        else:
            yield IngestFailure(path, "does not exist")
        return
    except OSError as exc:
        yield IngestFailure(path, f"cannot inspect: {exc.strerror or exc}")
        return
    if stat.S_ISDIR(mode):
        yield from _walk(path, visited)
    elif stat.S_ISREG(mode):
        yield _FileItem(path, explicit=True)
    else:
        yield IngestFailure(path, f"{_file_type(mode)}, not a file")


def _expand(source: Any, visited: set[tuple[int, int]]) -> Iterator[Any]:
    """Sources → file items, datasets, failures and skips (lazily)."""
    if isinstance(source, Dataset):
        yield source
    elif isinstance(source, (str, os.PathLike)):
        yield from _expand_path(os.fspath(source), visited)
    elif isinstance(source, FileSet):
        # pydicom refuses, when it loads a DICOMDIR, references outside its folder
        for instance in source:
            yield _FileItem(str(instance.path), explicit=False)
    elif isinstance(source, (bytes, bytearray)):
        yield IngestFailure(
            f"<{type(source).__name__}>", "raw bytes are not a source - pass a path or a dataset"
        )
    elif isinstance(source, Iterable):
        for item in source:
            if isinstance(item, (Dataset, str, os.PathLike, FileSet)):
                yield from _expand(item, visited)
            else:
                yield IngestFailure(
                    repr(item)[:80], f"not a path or a pydicom Dataset ({type(item).__name__})"
                )
    else:
        raise InvalidInputError(
            f"invalid ingest source {source!r} - give a folder, a file, a DICOMDIR, a pydicom "
            "Dataset or FileSet, or a list of those"
        )


def _referenced(ref: DicomdirReference) -> _FileItem | IngestFailure:
    if ref.path is None:
        return IngestFailure(ref.label, str(ref.problem))
    return _FileItem(str(ref.path), explicit=False)


def _dicomdir_files(path: str, fh: BinaryIO) -> Iterator[_FileItem | IngestFailure]:
    """The files a DICOMDIR references, contained in its folder
    (:func:`~dcm_processor_service.dicom.dicomdir.dicomdir_references`); a reference
    that leads outside it or does not exist is a failure naming the DICOMDIR."""
    fh.seek(0)
    with _pydicom_warnings(path):
        try:
            references = dicomdir_references(path, dcmread(fh))
        except Exception as exc:
            yield IngestFailure(path, f"unreadable DICOMDIR ({type(exc).__name__}: {exc})")
            return
    for ref in references:
        yield _referenced(ref)


# ---------------------------------------------------------------------- ingest
class _Ingestor:
    def __init__(self, store: Store, peer_id: str | None, session_id: str | None) -> None:
        self.store = store
        self.peer_id = peer_id
        self.session_id = session_id
        self.seen: set[str] = set()
        self.n_datasets = 0

    def _stored(self, source: str, record: InstanceRecord) -> StoredInstance:
        stored = StoredInstance(
            path=source,
            instance_id=str(record["_id"]),
            sop_instance_uid=str(record["SOPInstanceUID"]),
            series_instance_uid=str(record["SeriesInstanceUID"]),
            series_id=str(record["SeriesUID"]),
            size=int(record["Size"]),
        )
        logger.debug(
            "stored %s as instance %s of series %s", source, stored.instance_id, stored.series_id
        )
        return stored

    def dataset(self, ds: Dataset) -> IngestOutcome:
        self.n_datasets += 1
        filename = getattr(ds, "filename", None)
        label = f"<dataset #{self.n_datasets}" + (
            f" {filename}>" if isinstance(filename, str) else ">"
        )
        if _is_dicomdir(ds):
            return IngestSkip(label, "DICOMDIR (a media directory, not an instance)")
        try:
            with _pydicom_warnings(label):
                inp = instance_input(ds, peer_id=self.peer_id, session_id=self.session_id)
                buffer, ts = _encode(ds)
        except DicomInputError as exc:
            return IngestFailure(label, str(exc))
        except Exception as exc:  # pydicom encoding errors: reported, never half-stored
            return IngestFailure(label, f"cannot encode the dataset ({type(exc).__name__}: {exc})")
        if ts != inp.transfer_syntax_uid:
            inp = _replace_ts(inp, ts)
        try:
            record = self.store.put_instance(inp, cast(BinaryIO, buffer))
        except PatientConflictError as exc:
            return IngestConflict(label, str(exc))
        return self._stored(label, record)

    def file(self, item: _FileItem) -> Iterator[IngestOutcome]:
        real = os.path.realpath(item.path)
        if real in self.seen:
            return
        self.seen.add(real)
        try:
            fh = open(item.path, "rb")  # noqa: SIM115 - closed below
        except PermissionError:
            yield IngestFailure(item.path, "permission denied")
            return
        except OSError as exc:
            yield IngestFailure(item.path, f"cannot open: {exc.strerror or exc}")
            return
        follow: list[_FileItem | IngestFailure] = []
        with fh:
            outcome = self._file(item, fh, follow)
            if outcome is not None:
                yield outcome
        for ref in follow:
            if isinstance(ref, IngestFailure):
                yield ref
            else:
                yield from self.file(ref)

    def _file(
        self, item: _FileItem, fh: BinaryIO, follow: list[_FileItem | IngestFailure]
    ) -> IngestOutcome | None:
        path = item.path
        try:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                return IngestFailure(path, f"{_file_type(st.st_mode)}, not a file")
            if st.st_size == 0:
                return IngestFailure(path, "empty file")
            with _pydicom_warnings(path):
                header, part10 = _read_header(fh)
                if _is_dicomdir(header):
                    if item.explicit:
                        follow.extend(_dicomdir_files(path, fh))
                        return None
                    return IngestSkip(path, "DICOMDIR (a media directory, not an instance)")
                _check_structure(fh, st.st_size, header, 132 if part10 else 0)
                inp = instance_input(header, peer_id=self.peer_id, session_id=self.session_id)
            fh.seek(0)
            source: Any = _SourceReader(fh)
            if not part10:
                # a bare dataset without the Part 10 header: store it as a Part 10 file
                with _pydicom_warnings(path):
                    source, ts = _encode(dcmread(fh, force=True))
                inp = _replace_ts(inp, ts)
                logger.info(
                    "%s has no DICOM file header; storing it as a Part 10 file (%s)", path, ts
                )
        except (_Reject, DicomInputError) as exc:
            return IngestFailure(path, str(exc))
        except OSError as exc:
            return IngestFailure(path, f"read error: {exc.strerror or exc}")
        except Exception as exc:  # pydicom errors on a damaged file: reported, not raised
            return IngestFailure(path, f"unreadable DICOM ({type(exc).__name__}: {exc})")
        # Errors of the store (disk full, database down) are not about this file: they
        # propagate. Only failures to read the source are reported for the file.
        try:
            record = self.store.put_instance(inp, cast(BinaryIO, source))
        except _SourceReadError as exc:
            return IngestFailure(path, f"read error: {exc}")
        except PatientConflictError as exc:
            return IngestConflict(path, str(exc))
        if part10 and int(record["Size"]) != st.st_size:
            logger.warning(
                "%s changed while it was ingested (%d -> %d bytes)",
                path,
                st.st_size,
                record["Size"],
            )
        return self._stored(path, record)


def _replace_ts(inp: InstanceInput, ts: str) -> InstanceInput:
    return dataclasses.replace(inp, transfer_syntax_uid=ts)


def _check_id(value: str | None, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise InvalidInputError(
            f"invalid '{what}' value {value!r} - must be a non-empty str or None"
        )
    return value


def iter_ingest(
    source: IngestSource,
    *,
    store: Store | None = None,
    peer_id: str | None = None,
    session_id: str | None = None,
) -> Iterator[IngestOutcome]:
    """Ingest ``source`` lazily, yielding one outcome per entry: a
    :class:`StoredInstance`, an :class:`IngestFailure` or an :class:`IngestSkip`.

    Same arguments and rules as :func:`ingest` (the arguments are checked at once, the
    files as the iterator is consumed); use it to show progress, or to ingest millions of
    files without keeping a report.
    """
    _check_id(peer_id, "peer_id")
    _check_id(session_id, "session_id")
    if isinstance(source, (str, os.PathLike)):
        if not os.path.lexists(source):
            raise InvalidInputError(f"cannot ingest {os.fspath(source)!r}: no such file or folder")
    elif not isinstance(source, (Dataset, FileSet, Iterable)) or isinstance(
        source, (bytes, bytearray)
    ):
        raise InvalidInputError(
            f"invalid ingest source {source!r:.80} - give a folder, a file, a DICOMDIR, a pydicom "
            "Dataset or FileSet, or a list of those"
        )
    return _run(source, store if store is not None else store_for(), peer_id, session_id)


def _run(
    source: Any, store: Store, peer_id: str | None, session_id: str | None
) -> Iterator[IngestOutcome]:
    worker = _Ingestor(store, peer_id, session_id)
    for item in _expand(source, set()):
        if isinstance(item, (IngestFailure, IngestSkip)):
            outcomes: Iterable[IngestOutcome] = (item,)
        elif isinstance(item, Dataset):
            outcomes = (worker.dataset(item),)
        else:
            outcomes = worker.file(item)
        for outcome in outcomes:
            if isinstance(outcome, IngestFailure):
                logger.warning("not ingested: %s: %s", outcome.path, outcome.reason)
            yield outcome


def ingest(
    source: IngestSource,
    *,
    store: Store | None = None,
    peer_id: str | None = None,
    session_id: str | None = None,
) -> IngestReport:
    """File DICOM instances into the store's index and return an :class:`IngestReport`.

    ``source``: a folder (recursive), a file, a DICOMDIR (its referenced files are
    followed), a pydicom ``Dataset`` or ``FileSet``, or an iterable of those.
    ``store``: default the job's store from the runtime context
    (:func:`~dcm_processor_service.store_for`). ``peer_id``: the peer the data came from
    (the records' ``PeerUID``). ``session_id``: the session the instances belong to —
    :meth:`Store.delete_session_instances` removes them again (the post-services hook).

    Per-file problems are reported, never raised (see the module docs); a source path
    that does not exist raises :class:`InvalidInputError`, and store errors propagate.
    The same file reached twice in one call (e.g. a DICOMDIR and its folder) is ingested
    once.
    """
    started = time.perf_counter()
    report = IngestReport()
    for outcome in iter_ingest(source, store=store, peer_id=peer_id, session_id=session_id):
        report.add(outcome)
    report.elapsed_s = time.perf_counter() - started
    logger.info("ingest: %s in %.2f s", report.summary(), report.elapsed_s)
    return report
