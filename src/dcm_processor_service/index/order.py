"""Slice geometry from DICOM headers: the slice order, the slice normal, the image plane.

**The slice order** is one rule, :func:`order_slices` (defined with the store, which
orders a series record's ``Instances`` by it: see
:mod:`dcm_processor_service.store.slice_order` for the rule itself). Here it is applied
to what the index and imaging hold:

- :func:`sort_instances` - instance records (what :func:`~dcm_processor_service.list_instances`
  and :func:`~dcm_processor_service.get_series_dicom` return);
- :func:`sort_datasets` - pydicom datasets (the SEG and SR source images, the NIfTI
  conversion's first header).

In short: parallel slices by position along the slice normal (ascending), then
InstanceNumber, then SOPInstanceUID; instances without geometry after them; a series
whose slices are not parallel by InstanceNumber, then SOPInstanceUID. The same stack in
any input order gives the same order.

**Geometry** - pure functions over *ImageOrientationPatient* (IOP, 6 direction cosines:
row vector then column vector, in the patient's LPS frame) and *ImagePositionPatient*
(IPP, the centre of the first voxel); they accept pydicom ``MultiValue`` / ``DSfloat``
values directly:

- :func:`slice_normal` — ``row x column`` (cross product), normalised.
- :func:`slice_position` — the position of a slice along its normal (``normal · IPP``).
- :func:`image_plane` — ``"axial"``, ``"coronal"``, ``"sagittal"`` or ``"oblique"``:
  the patient axis closest to the slice normal, or oblique when the normal is more
  than ``tolerance`` degrees away from every axis.

Example::

    >>> image_plane([1, 0, 0, 0, 1, 0])
    'axial'
    >>> image_plane([0, 1, 0, 0, 0, -1])
    'sagittal'
    >>> image_plane([1, 0, 0, 0, 0.94, -0.34])   # 20 degrees off axial
    'oblique'
    >>> image_plane([1, 0, 0, 0, 0.94, -0.34], tolerance=25)
    'axial'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final, TypeVar

from .._errors import InvalidInputError
from ..store.slice_order import (
    SAME_ORIENTATION_DEGREES,
    order_slices,
    slice_normal,
    slice_position,
    sort_instances,
)

__all__ = [
    "DEFAULT_PLANE_TOLERANCE",
    "PLANES",
    "SAME_ORIENTATION_DEGREES",
    "image_plane",
    "order_slices",
    "slice_normal",
    "slice_position",
    "sort_datasets",
    "sort_instances",
]

#: The values :func:`image_plane` returns.
PLANES: Final = ("axial", "coronal", "sagittal", "oblique")

#: Default largest angle (degrees) between the slice normal and a patient axis for a
#: slice still to count as axial/coronal/sagittal. 15 degrees keeps a typical CT gantry
#: tilt (<= 15) axial and calls deliberately angulated acquisitions oblique.
DEFAULT_PLANE_TOLERANCE: Final = 15.0

_AXIS_PLANE: Final = ("sagittal", "coronal", "axial")  # normal along x (L-R), y (A-P), z (F-H)

T = TypeVar("T")


def image_plane(iop: Sequence[Any], tolerance: float = DEFAULT_PLANE_TOLERANCE) -> str:
    """The image plane of ImageOrientationPatient ``iop``: ``"axial"``, ``"coronal"``,
    ``"sagittal"``, or ``"oblique"`` when the slice normal is more than ``tolerance``
    degrees (default :data:`DEFAULT_PLANE_TOLERANCE`) away from the nearest patient axis.

    Raises :class:`InvalidInputError` for a malformed ``iop`` or a ``tolerance`` outside
    0-90.
    """
    if not isinstance(tolerance, (int, float)) or not 0 <= tolerance <= 90:
        raise InvalidInputError(
            f"invalid 'tolerance' value {tolerance!r} - must be degrees in 0-90"
        )
    normal = slice_normal(iop)
    axis = max(range(3), key=lambda i: abs(normal[i]))
    angle = math.degrees(math.acos(min(1.0, abs(normal[axis]))))
    return _AXIS_PLANE[axis] if angle <= tolerance else "oblique"


def sort_datasets(datasets: Sequence[T]) -> list[T]:
    """pydicom datasets (headers) in slice order."""
    return [datasets[i] for i in order_slices(datasets)]
