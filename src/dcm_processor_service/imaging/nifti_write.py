"""NIfTI -> DICOM: :func:`nifti_to_dicom`, exact geometry and values.

One single-frame CT, MR or Secondary Capture image per slice along the NIfTI's third
axis, with the geometry of the affine (any orientation, oblique included; NIfTI RAS
becomes DICOM LPS, see :mod:`.geometry`) and the values preserved (see :mod:`.pixels`
for how values map onto 16-bit pixels). With a reference image the series joins the
reference's patient and study (:func:`~dcm_processor_service.make_series_dicom`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import nibabel as nib
import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
)

from .._errors import InvalidInputError
from ..dicom_values import (
    check_lo,
    check_series_number,
    da,
    format_ds,
    new_uid,
    now,
    package_version,
    tm,
)
from .derived import ensure_file_meta, make_series_dicom
from .geometry import FLIP_XY, choose_display_mapping, plane_of_orientation, volume_shape
from .pixels import PixelEncoding, choose_encoding
from .provenance import AlgorithmInfo
from .reference import derived_series_number, reference_dataset

__all__ = ["nifti_to_dicom"]

logger = logging.getLogger(__name__)

_SOP_CLASS_KIND: Final = {
    str(CTImageStorage): "CT",
    str(MRImageStorage): "MR",
    str(SecondaryCaptureImageStorage): "SC",
}
_KIND_SOP_CLASS: Final = {kind: uid for uid, kind in _SOP_CLASS_KIND.items()}
_SOP_CLASS_NAMES: Final = {
    "CT": "CT Image Storage",
    "MR": "MR Image Storage",
    "SC": "Secondary Capture Image Storage",
}


def _resolve_sop_class(modality: Any, sop_class_uid: Any) -> tuple[str, str, str]:
    """Return (modality, SOP class UID, kind CT/MR/SC)."""
    if not isinstance(modality, str) or not modality.strip():
        raise InvalidInputError(
            f"invalid 'modality' value {modality!r} - must be a DICOM modality such as 'CT', "
            "'MR' or 'OT'"
        )
    mod = modality.strip().upper()
    if len(mod) > 16 or not all(c.isalnum() or c == "_" for c in mod):
        raise InvalidInputError(
            f"invalid 'modality' value {modality!r} - must be at most 16 letters, digits or '_'"
        )
    if sop_class_uid is None:
        kind = mod if mod in ("CT", "MR") else "SC"
        return mod, _KIND_SOP_CLASS[kind], kind
    uid = str(sop_class_uid).strip()
    found = _SOP_CLASS_KIND.get(uid)
    if found is None:
        known = ", ".join(f"{u} ({_SOP_CLASS_NAMES[k]})" for u, k in _SOP_CLASS_KIND.items())
        raise InvalidInputError(
            f"invalid 'sop_class_uid' value {uid!r} - nifti_to_dicom writes one of: {known}"
        )
    if found in ("CT", "MR") and mod != found:
        raise InvalidInputError(
            f"'sop_class_uid' {uid} ({_SOP_CLASS_NAMES[found]}) needs modality {found!r}, "
            f"got {modality!r}"
        )
    return mod, uid, found


def _load_volume(img_nib: Any) -> tuple[np.ndarray, float, float, np.ndarray]:
    """(raw 3-D array, scl_slope, scl_inter, affine) without scaling the data."""
    if isinstance(img_nib, (str, os.PathLike)):
        try:
            img_nib = nib.load(img_nib)
        except Exception as exc:
            raise InvalidInputError(
                f"cannot read NIfTI file {os.fspath(img_nib)!r}: {exc}"
            ) from exc
    if not hasattr(img_nib, "affine") or not hasattr(img_nib, "dataobj"):
        raise InvalidInputError(
            f"invalid 'img_nib' value of type {type(img_nib).__name__} - must be a nibabel "
            "image (e.g. nibabel.Nifti1Image) or the path of a NIfTI file"
        )
    shape = volume_shape(img_nib)
    if len(shape) != 3:
        raise InvalidInputError(
            f"invalid 'img_nib' shape {tuple(img_nib.shape)} - a 3-D volume (x, y, slices) is "
            "needed; split a 4-D series with nibabel.funcs.four_to_three or add a slice "
            "axis to a 2-D image"
        )
    if min(shape) < 1:
        raise InvalidInputError(f"invalid 'img_nib' shape {shape} - the volume is empty")
    affine = img_nib.affine
    if affine is None:
        raise InvalidInputError("invalid 'img_nib' - it has no affine (voxel to world mapping)")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise InvalidInputError(f"invalid 'img_nib' affine {affine.tolist()} - must be finite 4x4")
    dataobj = img_nib.dataobj
    if nib.is_proxy(dataobj) and hasattr(dataobj, "get_unscaled"):
        raw = np.asanyarray(dataobj.get_unscaled())
        slope = float(getattr(dataobj, "slope", 1.0) or 1.0)
        inter = float(getattr(dataobj, "inter", 0.0) or 0.0)
        if not math.isfinite(slope) or slope == 0.0:
            slope = 1.0
        if not math.isfinite(inter):
            inter = 0.0
    else:
        raw = np.asanyarray(dataobj)
        slope, inter = 1.0, 0.0
    if raw.ndim == 4:
        raw = raw[..., 0]
    if raw.dtype.kind not in "biuf" or raw.dtype.fields is not None:
        raise InvalidInputError(
            f"invalid 'img_nib' data type {raw.dtype} - only real scalar voxels (integer, "
            "float or bool) can become DICOM pixels"
        )
    return raw, slope, inter, affine


@dataclass(frozen=True)
class _Geometry:
    column_axis: int
    rows: int
    columns: int
    orientation: list[str]
    pixel_spacing: list[str]
    thickness: str
    origin: np.ndarray
    step: np.ndarray
    normal: np.ndarray
    plane: str
    patient_orientation: list[str]


def _direction_letters(vector: np.ndarray) -> str:
    letters = []
    for axis in np.argsort(-np.abs(vector)):
        value = vector[axis]
        if abs(value) < 1e-3:
            continue
        letters.append(("L", "P", "H")[axis] if value > 0 else ("R", "A", "F")[axis])
    return "".join(letters[:3])


def _geometry(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[_Geometry, Any]:
    lps = FLIP_XY @ affine
    mapping = choose_display_mapping(lps, shape)
    index = lps @ mapping.index_to_voxel
    row_vec, col_vec, step, origin = index[:3, 0], index[:3, 1], index[:3, 2], index[:3, 3]
    d_col, d_row = float(np.linalg.norm(row_vec)), float(np.linalg.norm(col_vec))
    if d_col == 0.0 or d_row == 0.0 or float(np.linalg.norm(step)) == 0.0:
        raise InvalidInputError(
            f"invalid 'img_nib' affine {affine.tolist()} - an axis has zero length"
        )
    row_dir, col_dir = row_vec / d_col, col_vec / d_row
    cosine = float(row_dir @ col_dir)
    if abs(cosine) > 1e-4:
        raise InvalidInputError(
            f"invalid 'img_nib' affine - the in-plane axes are not perpendicular (angle "
            f"{math.degrees(math.acos(max(-1.0, min(1.0, cosine)))):.3f} degrees); DICOM pixels "
            "form a rectangular grid, so resample the volume first"
        )
    normal = np.cross(row_dir, col_dir)
    spacing = float(step @ normal)
    if abs(spacing) < 1e-6:
        raise InvalidInputError(
            f"invalid 'img_nib' affine {affine.tolist()} - the slice axis lies in the image plane"
        )
    shear = float(np.linalg.norm(step - spacing * normal))
    if shear > 1e-4 * abs(spacing):
        logger.info(
            "slices are sheared (e.g. gantry tilt, %.2f mm per slice): each position is exact, "
            "SliceThickness is the perpendicular spacing",
            shear,
        )

    def clean(v: np.ndarray) -> list[str]:
        return [format_ds(0.0 if abs(x) < 1e-12 else float(x)) for x in v]

    orientation = clean(row_dir) + clean(col_dir)
    geometry = _Geometry(
        column_axis=mapping.column_axis,
        rows=int(shape[1 - mapping.column_axis]),
        columns=int(shape[mapping.column_axis]),
        orientation=orientation,
        pixel_spacing=[format_ds(d_row), format_ds(d_col)],
        thickness=format_ds(abs(spacing)),
        origin=origin,
        step=step,
        normal=normal,
        plane=plane_of_orientation([float(v) for v in orientation]),
        patient_orientation=[_direction_letters(row_dir), _direction_letters(col_dir)],
    )
    return geometry, mapping


def _keyword_element(keyword: str, value: Any) -> DataElement:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise InvalidInputError(f"unknown DICOM keyword {keyword!r}")
    return DataElement(tag, dictionary_VR(tag), value)


def _template(
    *,
    kind: str,
    modality: str,
    sop_class: str,
    geometry: _Geometry,
    encoding: PixelEncoding,
    description: str,
    series_number: int,
    study_uid: str,
    series_uid: str,
    frame_uid: str,
    patient: Mapping[str, Any] | None,
    algorithm: AlgorithmInfo | None,
    moment: Any,
) -> list[DataElement]:
    """Elements shared by every slice of the series."""
    date, time = da(moment), tm(moment)
    values: dict[str, Any] = {
        "ImageType": ["DERIVED", "SECONDARY", geometry.plane],
        "InstanceCreationDate": date,
        "InstanceCreationTime": time,
        "SOPClassUID": sop_class,
        "StudyDate": date,
        "SeriesDate": date,
        "ContentDate": date,
        "StudyTime": time,
        "SeriesTime": time,
        "ContentTime": time,
        "AccessionNumber": "",
        "Modality": modality,
        "Manufacturer": algorithm.manufacturer if algorithm else "dcm-processor-service",
        "ReferringPhysicianName": "",
        "ManufacturerModelName": algorithm.name if algorithm else "dcm-processor-service",
        "SoftwareVersions": algorithm.version if algorithm else package_version(),
        "PatientName": "ANONYMOUS^",
        "PatientID": "ANON" + new_uid().replace(".", "")[-12:],
        "PatientBirthDate": "",
        "PatientSex": "",
        "StudyInstanceUID": study_uid,
        "SeriesInstanceUID": series_uid,
        "StudyID": "1",
        "Laterality": "",
        "SeriesNumber": series_number,
        "PatientOrientation": geometry.patient_orientation,
        "ImageOrientationPatient": geometry.orientation,
        "FrameOfReferenceUID": frame_uid,
        "PositionReferenceIndicator": "",
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": geometry.rows,
        "Columns": geometry.columns,
        "PixelSpacing": geometry.pixel_spacing,
        "BitsAllocated": encoding.bits_allocated,
        "BitsStored": encoding.bits_allocated,
        "HighBit": encoding.bits_allocated - 1,
        "PixelRepresentation": encoding.pixel_representation,
        "RescaleIntercept": encoding.rescale_intercept,
        "RescaleSlope": encoding.rescale_slope,
        "SliceThickness": geometry.thickness,
        "BurnedInAnnotation": "NO",
        "DerivationDescription": (
            f"Converted from NIfTI by dcm-processor-service {package_version()}"
            + (f"; {algorithm.name} {algorithm.version}" if algorithm else "")
        )[:1024],
    }
    if description:
        values["SeriesDescription"] = description
    if not encoding.exact:
        values["LossyImageCompression"] = "01"  # values were quantised to 16 bits
    width = encoding.value_max - encoding.value_min
    if width > 0:
        values["WindowCenter"] = format_ds((encoding.value_max + encoding.value_min) / 2)
        values["WindowWidth"] = format_ds(width + (1 if encoding.exact else 0))
        if width < 1:
            values["VOILUTFunction"] = "LINEAR_EXACT"
    if kind in ("CT", "MR"):
        values["PatientPosition"] = ""
    if kind == "CT":
        values.update({"KVP": "", "AcquisitionNumber": ""})
    elif kind == "MR":
        values.update(
            {
                "ScanningSequence": "RM",
                "SequenceVariant": "NONE",
                "ScanOptions": "",
                "MRAcquisitionType": "",
                "RepetitionTime": "",
                "EchoTime": "",
                "EchoTrainLength": "",
                "SpacingBetweenSlices": geometry.thickness,
            }
        )
    else:
        values.update({"ConversionType": "WSD", "RescaleType": "US"})
    elements = [_keyword_element(k, v) for k, v in values.items()]
    for keyword, value in (patient or {}).items():
        elements = [e for e in elements if e.keyword != keyword]
        elements.append(_keyword_element(keyword, value))
    if algorithm is not None:
        elements.append(
            DataElement(0x0018A001, "SQ", DicomSequence([algorithm.contributing_equipment(moment)]))
        )
    return elements


def nifti_to_dicom(
    img_nib: Any,
    modality: str,
    series_description: str = "",
    study_instance_uid: str | None = None,
    sop_class_uid: str | None = None,
    ref_dcm: Dataset | str | os.PathLike[str] | None = None,
    *,
    series_number: int | None = None,
    patient: Mapping[str, Any] | None = None,
    algorithm: AlgorithmInfo | None = None,
    frame_of_reference_uid: str | None = None,
) -> list[Dataset]:
    """Turn a 3-D NIfTI volume into a DICOM series, one image per slice (third axis).

    Geometry comes from ``img_nib.affine`` for any orientation, oblique included
    (RAS -> LPS): ImageOrientationPatient, ImagePositionPatient per slice,
    PixelSpacing, SliceThickness (and SpacingBetweenSlices for MR). The in-plane axes
    are ordered and flipped so viewers show the radiological convention; the geometry
    is exact either way. Values are preserved: integers that fit 16 bits exactly
    (signed when negative, unsigned otherwise, with RescaleIntercept when only an offset
    makes them fit); anything else through RescaleSlope/RescaleIntercept with rounding
    error at most slope/2 (marked ``LossyImageCompression=01``). NIfTI scaling on
    integer data becomes the rescale as is. The volume is converted slice by slice
    (no float64 copy of it).

    The SOP class follows ``sop_class_uid`` (CT, MR or Secondary Capture Image Storage)
    or the modality (CT, MR, anything else Secondary Capture). Without ``ref_dcm`` the
    header is complete on its own: new Study, Series and Frame of Reference UIDs (or
    ``study_instance_uid``), patient "ANONYMOUS" with a generated ID unless ``patient``
    (keyword -> value) says otherwise. With ``ref_dcm`` the series joins the
    reference's patient and study through
    :func:`~dcm_processor_service.make_series_dicom` (and takes its frame
    of reference). ``algorithm`` records AI provenance.

    Raises :class:`InvalidInputError` for a volume that is not 3-D, a degenerate or
    sheared affine, or bad arguments; :class:`DicomInputError` for an unusable
    reference.
    """
    mod, sop_class, kind = _resolve_sop_class(modality, sop_class_uid)
    description = check_lo(series_description)
    number = None if series_number is None else check_series_number(series_number)
    ref = reference_dataset(ref_dcm, "ref_dcm") if ref_dcm is not None else None
    if ref is not None and study_instance_uid and str(study_instance_uid) != ref.StudyInstanceUID:
        raise InvalidInputError(
            f"'study_instance_uid' {study_instance_uid!r} differs from the reference's "
            f"StudyInstanceUID {ref.StudyInstanceUID!r} - a series with 'ref_dcm' joins the "
            "reference's study; pass only one of them"
        )
    if patient is not None and not isinstance(patient, Mapping):
        raise InvalidInputError(
            f"invalid 'patient' value of type {type(patient).__name__} - must be a mapping "
            "of DICOM keyword to value"
        )
    raw, slope, inter, affine = _load_volume(img_nib)
    shape = tuple(int(n) for n in raw.shape)
    geometry, mapping = _geometry(affine, shape)
    n_slices = shape[2]

    def slices() -> Iterator[np.ndarray]:
        for k in range(n_slices):
            yield raw[:, :, k]

    encoding = choose_encoding(slices, raw.dtype, slope, inter, allow_8bit=kind == "SC")
    logger.debug(
        "nifti_to_dicom: %s %s slices, %s encoding, slope %s, intercept %s",
        shape,
        geometry.plane,
        encoding.mode,
        encoding.rescale_slope,
        encoding.rescale_intercept,
    )
    moment = now()
    template = _template(
        kind=kind,
        modality=mod,
        sop_class=sop_class,
        geometry=geometry,
        encoding=encoding,
        description=description,
        series_number=derived_series_number(None, "image", number),
        study_uid=str(study_instance_uid) if study_instance_uid else new_uid(),
        series_uid=new_uid(),
        frame_uid=frame_of_reference_uid or new_uid(),
        patient=patient,
        algorithm=algorithm if ref is None else None,
        moment=moment,
    )
    pixel_vr = "OB" if encoding.bits_allocated == 8 else "OW"
    datasets: list[Dataset] = []
    for k in range(n_slices):
        ds = Dataset()
        for elem in template:
            value = elem.value
            if elem.VR == "SQ":
                value = DicomSequence([Dataset(item) for item in value])
            ds.add(DataElement(elem.tag, elem.VR, value))
        position = geometry.origin + k * geometry.step
        ds.SOPInstanceUID = new_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [format_ds(float(x)) for x in position]
        ds.SliceLocation = format_ds(float(position @ geometry.normal))
        pixels = mapping.slice_pixels(raw[:, :, k])
        stored = encoding.encode(pixels)
        data = stored.astype(stored.dtype.newbyteorder("<"), copy=False).tobytes()
        ds.add(DataElement(0x7FE00010, pixel_vr, data))
        ensure_file_meta(ds, ExplicitVRLittleEndian)
        datasets.append(ds)
    if ref is not None:
        make_series_dicom(
            ref,
            datasets,
            description,
            series_number=number,
            algorithm=algorithm,
            same_frame_of_reference=frame_of_reference_uid is None,
        )
    return datasets
