"""Image-plane geometry from DICOM headers: slice normal, plane, anatomical order.

Pure functions over *ImageOrientationPatient* (IOP, 6 direction cosines: row vector
then column vector, in the patient's LPS frame) and *ImagePositionPatient* (IPP, the
centre of the first voxel). No numpy needed; every function also accepts pydicom
``MultiValue`` / ``DSfloat`` values directly.

- :func:`slice_normal` — ``row x column`` (cross product), normalised.
- :func:`image_plane` — ``"axial"``, ``"coronal"``, ``"sagittal"`` or ``"oblique"``:
  the patient axis closest to the slice normal, or oblique when the normal is more
  than ``tolerance`` degrees away from every axis.
- :func:`slice_position` — the position of a slice along its normal (``normal · IPP``).
- :func:`order_slices` — the anatomical order of a series' instances (what
  :func:`~dcm_processor_service.dicom.series.get_series_dicom` returns).

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
from collections.abc import Mapping, Sequence
from typing import Any, Final

from .._errors import InvalidInputError

__all__ = [
    "DEFAULT_PLANE_TOLERANCE",
    "PLANES",
    "SAME_ORIENTATION_DEGREES",
    "image_plane",
    "order_slices",
    "slice_normal",
    "slice_position",
]

#: The values :func:`image_plane` returns.
PLANES: Final = ("axial", "coronal", "sagittal", "oblique")

#: Default largest angle (degrees) between the slice normal and a patient axis for a
#: slice still to count as axial/coronal/sagittal. 15 degrees keeps a typical CT gantry
#: tilt (<= 15) axial and calls deliberately angulated acquisitions oblique.
DEFAULT_PLANE_TOLERANCE: Final = 15.0

#: Slices whose normals differ by less than this (degrees) are treated as parallel,
#: i.e. one stack that can be ordered along a common normal.
SAME_ORIENTATION_DEGREES: Final = 1.0

_AXIS_PLANE: Final = ("sagittal", "coronal", "axial")  # normal along x (L-R), y (A-P), z (F-H)

Vector = tuple[float, float, float]


def _floats(value: Any, count: int, what: str) -> tuple[float, ...]:
    if value is None or isinstance(value, (str, bytes)):
        raise InvalidInputError(f"invalid {what} {value!r} - must be {count} numbers")
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"invalid {what} {value!r} - must be {count} numbers") from None
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        raise InvalidInputError(f"invalid {what} {value!r} - must be {count} finite numbers")
    return numbers


def slice_normal(iop: Sequence[Any]) -> Vector:
    """The unit normal ``row x column`` (cross product) of a slice with ImageOrientationPatient ``iop``.

    Raises :class:`InvalidInputError` when ``iop`` is not 6 finite numbers or its row and
    column vectors are (anti)parallel or zero.
    """
    r0, r1, r2, c0, c1, c2 = _floats(iop, 6, "ImageOrientationPatient")
    n = (r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0)
    length = math.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
    if length < 1e-6:
        raise InvalidInputError(
            f"invalid ImageOrientationPatient {list(iop)!r} - row and column vectors are "
            "zero or parallel, so the slice has no normal"
        )
    return (n[0] / length, n[1] / length, n[2] / length)


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


def slice_position(iop: Sequence[Any], ipp: Sequence[Any]) -> float:
    """Position (mm) of a slice along its normal: ``slice_normal(iop) · ipp``."""
    normal = slice_normal(iop)
    x, y, z = _floats(ipp, 3, "ImagePositionPatient")
    return normal[0] * x + normal[1] * y + normal[2] * z


def _geometry(item: Mapping[str, Any] | Any) -> tuple[Vector, tuple[float, ...]] | None:
    """(normal, IPP) of an instance, or ``None`` when it has no usable geometry."""
    try:
        iop = item.get("ImageOrientationPatient")
        ipp = item.get("ImagePositionPatient")
        if iop is None or ipp is None:
            return None
        return slice_normal(iop), _floats(ipp, 3, "ImagePositionPatient")
    except InvalidInputError:
        return None


def _instance_number(item: Mapping[str, Any] | Any) -> float:
    value = item.get("InstanceNumber")
    try:
        number = float(value) if value not in (None, "") else math.inf
    except (TypeError, ValueError):
        return math.inf
    return number if math.isfinite(number) else math.inf


def order_slices(
    items: Sequence[Mapping[str, Any] | Any], tie_break: Sequence[Any] | None = None
) -> list[int]:
    """Indices of ``items`` in anatomical order.

    ``items`` are per-instance mappings (the ``Metadata`` of instance records) or pydicom
    datasets — anything with ``.get(keyword)``. The rule:

    1. When the instances that have geometry (IOP and IPP) are all parallel (normals
       within :data:`SAME_ORIENTATION_DEGREES`), they come first, sorted by their
       position along the first one's normal (ascending: for an axial stack with the usual
       orientation that is inferior → superior), then by InstanceNumber.
    2. Instances without geometry follow, by InstanceNumber.
    3. When the stack is not parallel (localizers, multi-plane scouts), every instance is
       ordered by InstanceNumber — a position along differing normals means nothing.

    Ties are broken by ``tie_break[i]`` (e.g. SOPInstanceUID), then by the input order.
    """
    geometry = [_geometry(item) for item in items]
    numbers = [_instance_number(item) for item in items]
    ties = list(tie_break) if tie_break is not None else [""] * len(items)
    if len(ties) != len(items):
        raise InvalidInputError(f"tie_break has {len(ties)} values for {len(items)} items")
    tie_keys = [str(t) for t in ties]

    reference = next((g[0] for g in geometry if g is not None), None)
    parallel = reference is not None
    cos_limit = math.cos(math.radians(SAME_ORIENTATION_DEGREES))
    if reference is not None:
        for g in geometry:
            if (
                g is not None
                and abs(sum(a * b for a, b in zip(g[0], reference, strict=True))) < cos_limit
            ):
                parallel = False
                break

    def key(i: int) -> tuple[Any, ...]:
        g = geometry[i]
        if parallel and reference is not None and g is not None:
            position = sum(a * b for a, b in zip(reference, g[1], strict=True))
            return (0, round(position, 4), numbers[i], tie_keys[i], i)
        return (1, 0.0, numbers[i], tie_keys[i], i)

    return sorted(range(len(items)), key=key)
