"""DICOM Segmentation (SEG) from a label volume and its source series, with highdicom.

Array layout
------------
:func:`make_segmentation` takes the labels either as

* a **nibabel image** (e.g. a model's NIfTI output on the grid of
  ``get_series_nifti``): its affine is matched to the source series' geometry, so any
  axis order or flip that dcm2niix (or the model) applied is undone exactly. The grid
  must be the source's (same voxels, possibly permuted/flipped), else
  :class:`~dcm_processor_service.InvalidInputError` says how they differ; or
* a **numpy array in DICOM layout** ``(slices, rows, columns)``: ``labels[s, r, c]`` is
  the pixel at row ``r``, column ``c`` of the ``s``-th source image **in slice order**
  (by position along the slice normal, ascending, then InstanceNumber, then
  SOPInstanceUID - the package's one rule; :func:`sorted_source_images` gives that
  order, whatever order the images are given in).
  To pass a NIfTI-layout array ``data[i, j, k]``, pass the nibabel image instead.

Values: 0 is background; every other integer value becomes one segment (segment
numbers 1..n in increasing label order). Names and coded categories/types come from
``segments`` (defaults: "Segment <value>", category and type SCT "Tissue").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .._errors import ConversionError, DicomInputError, InvalidInputError
from ..dicom_values import check_lo, new_uid
from .geometry import FLIP_XY, max_position_error, series_index_affine, volume_shape
from .provenance import AlgorithmInfo
from .reference import copy_reference_tags, derived_series_number
from .source_images import import_highdicom, sorted_source_images

__all__ = ["SegmentInfo", "make_segmentation", "sorted_source_images"]

logger = logging.getLogger(__name__)

_GRID_TOLERANCE = 1e-2  # voxels


@dataclass(frozen=True)
class SegmentInfo:
    """How one label value is described in the SEG.

    ``category`` / ``property_type`` are codes (``pydicom.sr.codedict.codes`` or
    ``pydicom.sr.coding.Code``), e.g. ``codes.SCT.Organ`` / ``codes.SCT.Liver``;
    ``color`` is an RGB triple (0-255) for the viewer's display colour.
    """

    label: str
    category: Code = codes.SCT.Tissue
    property_type: Code = codes.SCT.Tissue
    anatomic_region: Code | None = None
    tracking_id: str | None = None
    color: tuple[int, int, int] | None = None


def _source_shape(sources: Sequence[Dataset]) -> tuple[int, int, int]:
    first = sources[0]
    n = int(first.get("NumberOfFrames", 1) or 1) if len(sources) == 1 else len(sources)
    for ds in sources:
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DicomInputError(
                f"source images differ in size ({first.Rows}x{first.Columns} and "
                f"{ds.Rows}x{ds.Columns}) - they do not form one volume"
            )
    return n, int(first.Rows), int(first.Columns)


def _labels_from_image(image: Any, sources: Sequence[Dataset]) -> np.ndarray:
    """Reorder a nibabel label image onto the sorted source grid (slices, rows, cols)."""
    shape = volume_shape(image)
    if len(shape) != 3:
        raise InvalidInputError(
            f"invalid label image shape {tuple(image.shape)} - a 3-D label volume is needed"
        )
    n, rows, cols = _source_shape(sources)
    if len(sources) == 1 and n > 1:
        raise InvalidInputError(
            "a NIfTI label image can only be matched to a series of single-frame images; for a "
            "multi-frame source pass a numpy array (frames, rows, columns)"
        )
    source_affine = series_index_affine(sources)
    step = float(np.linalg.norm(source_affine[:3, 2]))
    if len(sources) > 2 and max_position_error(sources, source_affine) > 0.05 * step:
        raise InvalidInputError(
            "the source slices are not evenly spaced, so no NIfTI grid matches them - pass the "
            "labels as a numpy array (slices, rows, columns) in sorted source order"
        )
    label_lps = FLIP_XY @ np.asarray(image.affine, dtype=np.float64)
    try:
        index_map = np.linalg.inv(label_lps) @ source_affine  # (c, r, s) -> (i, j, k)
    except np.linalg.LinAlgError as exc:
        raise InvalidInputError("the label image's affine is singular") from exc
    source_shape = (cols, rows, n)  # along c, r, s
    axes: list[int] = []
    signs: list[int] = []
    problems: list[str] = []
    for a in range(3):
        column = index_map[:3, a]
        p = int(np.argmax(np.abs(column)))
        sign = 1 if column[p] > 0 else -1
        unit = np.zeros(3)
        unit[p] = sign
        if np.abs(column - unit).max() > _GRID_TOLERANCE:
            problems.append(
                f"source axis {'crs'[a]} maps to label voxel step {np.round(column, 4).tolist()}"
            )
        start = index_map[p, 3]
        expected = 0 if sign > 0 else shape[p] - 1
        if abs(start - expected) > _GRID_TOLERANCE:
            problems.append(
                f"source axis {'crs'[a]} starts at label index {start:.3f} instead of {expected}"
            )
        if shape[p] != source_shape[a]:
            problems.append(
                f"label axis {p} has {shape[p]} voxels, source axis {'crs'[a]} has "
                f"{source_shape[a]}"
            )
        axes.append(p)
        signs.append(sign)
    if problems or len(set(axes)) != 3:
        raise InvalidInputError(
            f"label image shape {shape} does not match the source series geometry "
            f"(slices, rows, columns) = {(n, rows, cols)}: {'; '.join(problems) or 'axes collide'}"
            " - the labels must be on the source's voxel grid (e.g. the NIfTI from "
            "get_series_nifti of the same series)"
        )
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4:
        data = data[..., 0]
    # (s, r, c) order, then undo flips
    labels = np.transpose(data, (axes[2], axes[1], axes[0]))
    flips = [k for k, a in enumerate((2, 1, 0)) if signs[a] < 0]
    if flips:
        labels = np.flip(labels, axis=tuple(flips))
    return labels


def _as_label_array(labels: Any, sources: Sequence[Dataset]) -> np.ndarray:
    if hasattr(labels, "affine") and hasattr(labels, "dataobj"):
        array = _labels_from_image(labels, sources)
    else:
        array = np.asanyarray(labels)
        expected = _source_shape(sources)
        if array.ndim != 3:
            raise InvalidInputError(
                f"invalid label array shape {array.shape} - a 3-D (slices, rows, columns) "
                f"array matching the source series {expected} is needed"
            )
        if array.shape != expected:
            hint = ""
            if sorted(array.shape) == sorted(expected):
                hint = (
                    " - the axes look permuted: a numpy array must be (slices, rows, columns) "
                    "in sorted source order; pass a nibabel image to have the affine decide"
                )
            raise InvalidInputError(
                f"label array shape {array.shape} does not match the source series shape "
                f"{expected} (slices, rows, columns){hint}"
            )
    if array.dtype.kind == "b":
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all() or not np.array_equal(array, np.rint(array)):
            raise InvalidInputError(
                "the label volume has non-integer values - a segmentation needs integer labels "
                "(threshold probabilities first, e.g. (prob >= 0.5).astype(np.uint8))"
            )
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise InvalidInputError(f"invalid label volume data type {array.dtype} - must be integer")
    if array.size and int(array.min()) < 0:
        raise InvalidInputError(
            f"the label volume has negative values (min {int(array.min())}) - labels must be >= 0"
        )
    return array


def _segment_table(
    present: list[int], segments: Mapping[int, str | SegmentInfo] | None
) -> list[tuple[int, SegmentInfo]]:
    if segments is None:
        return [(value, SegmentInfo(label=f"Segment {value}")) for value in present]
    if not isinstance(segments, Mapping):
        raise InvalidInputError(
            f"invalid 'segments' value of type {type(segments).__name__} - must map label value "
            "to a name or SegmentInfo"
        )
    table: list[tuple[int, SegmentInfo]] = []
    for value, info in segments.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise InvalidInputError(
                f"invalid 'segments' key {value!r} - label values must be integers > 0"
            )
        if isinstance(info, str):
            info = SegmentInfo(label=info)
        if not isinstance(info, SegmentInfo) or not info.label.strip():
            raise InvalidInputError(
                f"invalid 'segments' value for label {value}: {info!r} - must be a non-empty "
                "name or a SegmentInfo"
            )
        table.append((int(value), info))
    unlisted = sorted(set(present) - {value for value, _ in table})
    if unlisted:
        raise InvalidInputError(
            f"label values {unlisted} occur in the volume but are not in 'segments' - list them "
            "or set those voxels to 0"
        )
    return sorted(table)


def make_segmentation(
    source_images: Sequence[Dataset | str | os.PathLike[str]],
    labels: Any,
    segments: Mapping[int, str | SegmentInfo] | None = None,
    *,
    series_description: str = "Segmentation",
    series_number: int | None = None,
    algorithm: AlgorithmInfo | None = None,
    omit_empty_frames: bool = True,
    content_label: str = "SEGMENTATION",
) -> Dataset:
    """Build a binary DICOM Segmentation of ``labels`` over ``source_images``.

    ``labels`` is a nibabel image on the source grid or a ``(slices, rows, columns)``
    array in sorted source order (see the module documentation). ``segments`` maps label
    values to names or :class:`SegmentInfo` (default: every non-zero value present, named
    "Segment <value>"). ``omit_empty_frames`` leaves out frames where a segment has no
    pixel (smaller objects); ``False`` keeps one frame per source slice and segment.
    ``algorithm`` names the algorithm (default: this package) as segment algorithm
    identification and contributing equipment. The SEG joins the source's patient and
    study; its SeriesNumber is ``series_number`` or the source's + 2000.

    Returns a :class:`highdicom.seg.Segmentation` (a pydicom Dataset; ``save_as`` it).
    Raises :class:`InvalidInputError` when the labels do not match the source geometry
    (both shapes are named) or are not integers; :class:`DicomInputError` for source
    images without geometry or from several series.
    """
    hd = import_highdicom("DICOM Segmentation")
    description = check_lo(series_description)
    label_text = check_lo(content_label, "content_label")
    sources = sorted_source_images(source_images)
    array = _as_label_array(labels, sources)
    present = [int(v) for v in np.unique(array) if v != 0]
    table = _segment_table(present, segments)
    if not table:
        raise InvalidInputError(
            "the label volume has no non-zero voxel and no 'segments' were listed - nothing to "
            "segment"
        )
    alg = algorithm or AlgorithmInfo.default()
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=alg.name,
        family=alg.family,
        version=alg.version,
        source=alg.source,
        parameters=dict(alg.parameters) if alg.parameters else None,
    )
    descriptions = []
    lut = np.zeros(max(max(v for v, _ in table), int(array.max(initial=0))) + 1, dtype=np.uint16)
    for number, (value, info) in enumerate(table, start=1):
        lut[value] = number
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=info.label[:64],
                segmented_property_category=info.category,
                segmented_property_type=info.property_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_id,
                tracking_uid=new_uid(),
                tracking_id=info.tracking_id or info.label[:64],
                anatomic_regions=[info.anatomic_region] if info.anatomic_region else None,
                display_color=hd.color.CIELabColor.from_rgb(*info.color) if info.color else None,
            )
        )
    mapped = lut[array]
    mapped = mapped.astype(np.uint8) if len(table) < 256 else mapped
    number = derived_series_number(sources[0], "seg", series_number)
    try:
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=mapped,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=new_uid(),
            series_number=number,
            sop_instance_uid=new_uid(),
            instance_number=1,
            manufacturer=alg.manufacturer,
            manufacturer_model_name=alg.name,
            software_versions=alg.version,
            device_serial_number=alg.device_serial_number,
            omit_empty_frames=omit_empty_frames,
            content_label=label_text.upper().replace(" ", "_")[:16] or "SEGMENTATION",
            content_description=description or None,
            series_description=description or None,
            contributing_equipment=[alg.contributing_equipment()],
        )
    except (ValueError, TypeError) as exc:
        raise ConversionError(f"highdicom could not build the segmentation: {exc}") from exc
    copy_reference_tags(sources[0], seg)
    logger.debug(
        "made SEG %s: %d segments, %d frames", seg.SOPInstanceUID, len(table), seg.NumberOfFrames
    )
    return seg
