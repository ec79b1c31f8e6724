"""Derived DICOM in a reference's study: an image series, a PDF, and writing them out.

* :func:`make_series_dicom` - turn datasets (e.g. from
  :func:`~dcm_processor_service.nifti_to_dicom`) into a new derived series of the
  reference's patient and study.
* :func:`make_pdf_dicom` - wrap a PDF in an Encapsulated PDF Storage object.
* :func:`write_datasets` - write datasets as Part 10 files, atomically and in parallel.

How an object joins the reference's study (identity check, copied tags, character set,
series numbers) is :mod:`.reference`; AI provenance is :class:`~.provenance.AlgorithmInfo`.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

from .._atomic_file import atomic_write
from .._errors import InvalidInputError
from ..dicom_values import (
    check_lo,
    da,
    dt,
    has_transfer_syntax,
    new_uid,
    now,
    package_version,
    tm,
)
from .geometry import plane_of_orientation
from .provenance import AlgorithmInfo
from .reference import (
    ReferenceTags,
    apply_charset,
    copy_item,
    derived_series_number,
    is_present,
    reference_dataset,
)

__all__ = [
    "ENCAPSULATED_PDF_STORAGE",
    "ensure_file_meta",
    "make_pdf_dicom",
    "make_series_dicom",
    "write_datasets",
]

logger = logging.getLogger(__name__)

#: SOP class of an Encapsulated PDF.
ENCAPSULATED_PDF_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.104.1"


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
    description = check_lo(series_description)
    number = derived_series_number(ref, "image", series_number)
    tags = ReferenceTags(ref, equipment=True, series=True)
    series_uid = new_uid()
    moment = now()
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
        ds.SeriesDate = da(moment)
        ds.SeriesTime = tm(moment)
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
        if "Laterality" not in ref and is_present(ref, "BodyPartExamined") and "Laterality" in ds:
            del ds.Laterality  # the reference names a body part without laterality: mirror it
        if provenance is not None:
            ds.ContributingEquipmentSequence = DicomSequence([copy_item(provenance)])
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
    description = check_lo(series_description)
    title = check_lo(document_title, "document_title") or description or "Report"
    number = derived_series_number(ref, "pdf", series_number)
    moment = now()
    ds = Dataset()
    ReferenceTags(ref, equipment=False, series=False).stamp(ds)
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = new_uid()
    ds.InstanceCreationDate = da(moment)
    ds.InstanceCreationTime = tm(moment)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = new_uid()
    ds.SeriesNumber = number
    if description:
        ds.SeriesDescription = description
    ds.SeriesDate = da(moment)
    ds.SeriesTime = tm(moment)
    ds.Manufacturer = algorithm.manufacturer if algorithm else "dcm-processor-service"
    ds.ManufacturerModelName = algorithm.name if algorithm else "dcm-processor-service"
    ds.SoftwareVersions = algorithm.version if algorithm else package_version()
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate = da(moment)
    ds.ContentTime = tm(moment)
    ds.AcquisitionDateTime = dt(moment)
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
