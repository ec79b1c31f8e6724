"""Image geometry shared by the NIfTI and derived-object writers: affines, display
orientation, and whether images form one volume.

Conventions used throughout:

* NIfTI affines map voxel indices ``(i, j, k)`` to **RAS+** millimetres; DICOM uses
  **LPS+**. The two differ by the sign of x and y: ``LPS = diag(-1, -1, 1) @ RAS``.
* A DICOM slice stack is described by an "index affine" mapping ``(c, r, s)`` - column,
  row, slice (0-based) - to LPS:  ``P = IPP_0 + c * Δc * row_dir + r * Δr * col_dir +
  s * slice_step``. ``ImageOrientationPatient = row_dir + col_dir`` (the direction in
  which the column index grows, then the row index); ``PixelSpacing = [Δr, Δc]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from pydicom.dataset import Dataset

from .._errors import DicomInputError, InvalidInputError
from ..index.order import SAME_ORIENTATION_DEGREES, image_plane, slice_normal

__all__ = [
    "FLIP_XY",
    "DisplayMapping",
    "check_stack",
    "choose_display_mapping",
    "max_position_error",
    "plane_of_orientation",
    "series_index_affine",
    "volume_shape",
]

#: Multiply a 4x4 affine by this (from the left) to go RAS <-> LPS.
FLIP_XY: Final = np.diag([-1.0, -1.0, 1.0, 1.0])

_PLANES: Final = ("SAGITTAL", "CORONAL", "AXIAL")  # by dominant normal axis (x, y, z)

# Preferred on-screen directions (LPS) for each plane: (row direction, column direction).
# Radiological convention: patient's right on the screen's left, anterior/superior up.
_DISPLAY: Final = {
    "AXIAL": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "CORONAL": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "SAGITTAL": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}


def plane_of_orientation(orientation: Sequence[float], tolerance_deg: float | None = None) -> str:
    """Classify an ``ImageOrientationPatient`` as AXIAL, CORONAL, SAGITTAL or OBLIQUE.

    The package-wide rule of :func:`dcm_processor_service.index.order.image_plane`
    (the patient axis nearest the slice normal, OBLIQUE beyond its tolerance), upper-cased
    for ``ImageType``.
    """
    if tolerance_deg is None:
        return image_plane(orientation).upper()
    return image_plane(orientation, tolerance_deg).upper()


@dataclass(frozen=True)
class DisplayMapping:
    """How the in-plane NIfTI axes (i, j) map to DICOM columns and rows.

    ``column_axis`` is the NIfTI axis (0 or 1) that the DICOM column index runs along;
    the other in-plane axis is the row index. ``flip_columns`` / ``flip_rows`` reverse
    the respective DICOM index. ``index_to_voxel`` maps homogeneous ``(c, r, s, 1)`` to
    NIfTI ``(i, j, k, 1)``.
    """

    column_axis: int
    flip_columns: bool
    flip_rows: bool
    index_to_voxel: np.ndarray

    def slice_pixels(self, voxel_slice: np.ndarray) -> np.ndarray:
        """Turn a NIfTI slice ``data[:, :, k]`` (i, j) into a DICOM (rows, cols) view."""
        pixels = voxel_slice.T if self.column_axis == 0 else voxel_slice
        if self.flip_rows:
            pixels = pixels[::-1, :]
        if self.flip_columns:
            pixels = pixels[:, ::-1]
        return pixels


def choose_display_mapping(affine_lps: np.ndarray, shape: Sequence[int]) -> DisplayMapping:
    """Pick the in-plane axis order and flips that display the slices conventionally.

    The geometry is exact whatever is chosen (positions come from the affine); this
    only decides which way up a viewer shows the pixels, aiming for the radiological
    convention of the slice's plane (see ``_DISPLAY``).
    """
    u, v = affine_lps[:3, 0], affine_lps[:3, 1]
    normal = np.cross(u, v)
    plane = _PLANES[int(np.argmax(np.abs(normal)))]
    want_row, want_col = (np.asarray(d) for d in _DISPLAY[plane])
    units = [u / np.linalg.norm(u), v / np.linalg.norm(v)]
    best: tuple[float, int, bool, bool] | None = None
    for column_axis in (0, 1):
        row_axis = 1 - column_axis
        for flip_c in (False, True):
            for flip_r in (False, True):
                row_dir = units[column_axis] * (-1 if flip_c else 1)
                col_dir = units[row_axis] * (-1 if flip_r else 1)
                score = float(row_dir @ want_row + col_dir @ want_col)
                # strictly better wins: ties keep the earlier (unchanged) layout
                if best is None or score > best[0] + 1e-9:
                    best = (score, column_axis, flip_c, flip_r)
    assert best is not None
    _, column_axis, flip_c, flip_r = best
    row_axis = 1 - column_axis
    index_to_voxel = np.zeros((4, 4))
    index_to_voxel[column_axis, 0] = -1.0 if flip_c else 1.0
    index_to_voxel[row_axis, 1] = -1.0 if flip_r else 1.0
    index_to_voxel[2, 2] = 1.0
    index_to_voxel[3, 3] = 1.0
    if flip_c:
        index_to_voxel[column_axis, 3] = shape[column_axis] - 1
    if flip_r:
        index_to_voxel[row_axis, 3] = shape[row_axis] - 1
    return DisplayMapping(column_axis, flip_c, flip_r, index_to_voxel)


def volume_shape(image: Any) -> tuple[int, ...]:
    """The shape of a nibabel image as a volume: a 4-D image holding one volume counts
    as 3-D (``(x, y, z, 1)`` -> ``(x, y, z)``); callers check for 3 axes."""
    shape = tuple(int(n) for n in image.shape)
    return shape[:3] if len(shape) == 4 and shape[3] == 1 else shape


def check_stack(datasets: Sequence[Dataset]) -> None:
    """Check that single-frame images form one volume: each has ImagePositionPatient,
    ImageOrientationPatient, Rows and Columns, and all are parallel (normals within
    :data:`~dcm_processor_service.index.order.SAME_ORIENTATION_DEGREES`, the slice-order
    rule's tolerance). Raises :class:`DicomInputError` naming the first image that is
    not."""
    if not datasets:
        raise InvalidInputError("no source images given - need at least one DICOM image")
    for index, ds in enumerate(datasets):
        missing = [
            kw
            for kw in ("ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns")
            if kw not in ds or ds[kw].value in (None, "")
        ]
        if missing:
            raise DicomInputError(
                f"source image {index} ({ds.get('SOPInstanceUID', '?')}) lacks "
                f"{', '.join(missing)} - cannot place it in a volume"
            )
    normal = np.asarray(slice_normal(datasets[0].ImageOrientationPatient))
    limit = math.cos(math.radians(SAME_ORIENTATION_DEGREES))
    for index, ds in enumerate(datasets[1:], start=1):
        if abs(float(np.asarray(slice_normal(ds.ImageOrientationPatient)) @ normal)) < limit:
            raise DicomInputError(
                f"source image {index} ({ds.get('SOPInstanceUID', '?')}) is not parallel to "
                "the first one - the images do not form one volume"
            )


def series_index_affine(sorted_datasets: Sequence[Dataset]) -> np.ndarray:
    """Return the 4x4 LPS index affine ``(c, r, s, 1) -> (x, y, z, 1)`` of a sorted stack.

    The slice step is the mean step between first and last position; callers that need
    a regular grid should check :func:`max_position_error`.
    """
    first = sorted_datasets[0]
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    spacing = [float(v) for v in first.get("PixelSpacing", [1.0, 1.0])]
    origin = np.asarray([float(v) for v in first.ImagePositionPatient])
    n = len(sorted_datasets)
    if n > 1:
        last = np.asarray([float(v) for v in sorted_datasets[-1].ImagePositionPatient])
        step = (last - origin) / (n - 1)
    else:
        thickness = first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0
        step = np.cross(row_dir, col_dir) * float(thickness)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = origin
    return affine


def max_position_error(sorted_datasets: Sequence[Dataset], affine: np.ndarray) -> float:
    """Largest distance (mm) between an image's position and the regular grid's."""
    worst = 0.0
    for s, ds in enumerate(sorted_datasets):
        position = np.asarray([float(v) for v in ds.ImagePositionPatient])
        expected = affine[:3, 3] + s * affine[:3, 2]
        worst = max(worst, float(np.linalg.norm(position - expected)))
    return worst
