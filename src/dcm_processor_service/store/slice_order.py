"""THE slice order: the one rule that orders the instances of a series.

Every place that puts a series' instances in a row uses :func:`order_slices`: the
series record's ``Instances`` and :meth:`Store.list_instances
<dcm_processor_service.store.Store.list_instances>` of every provider,
:func:`~dcm_processor_service.get_series_dicom` (datasets and files), the NIfTI
conversion's choice of the "first" header, and the source images of SEG and SR
(:func:`~dcm_processor_service.index.order.sort_datasets`). So a job's
``headers["Instances"]``, the files it gets and the slices a segmentation references
are in the same order, whatever order the instances arrived in.

The rule (over each instance's ImageOrientationPatient, ImagePositionPatient,
InstanceNumber and SOPInstanceUID):

1. The **reference normal** is the slice normal (row x column of
   ImageOrientationPatient) of the instance with the smallest (InstanceNumber,
   SOPInstanceUID) among those with geometry - chosen by content, not by arrival, so
   the order never depends on the input order.
2. When every instance with geometry is **parallel** to it (normals within
   :data:`SAME_ORIENTATION_DEGREES`, either direction), those instances come first,
   by their position along the reference normal (``normal · ImagePositionPatient``,
   ascending, to 0.1 µm: for an axial stack in the usual orientation that is inferior
   → superior), then by InstanceNumber, then by SOPInstanceUID. Instances without
   geometry follow, by InstanceNumber, then SOPInstanceUID.
3. When they are **not parallel** (localizers in several planes), every instance is
   ordered by InstanceNumber, then SOPInstanceUID - a position along differing normals
   means nothing.

A missing or non-numeric InstanceNumber sorts after every number.

It lives in the store package because the store orders ``Instances`` by it and the
store imports nothing above it; :mod:`dcm_processor_service.index.order` is where the
index and imaging use it (and where the image plane is classified).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeVar

from .._errors import InvalidInputError

__all__ = [
    "SAME_ORIENTATION_DEGREES",
    "order_slices",
    "slice_normal",
    "slice_position",
    "sort_instances",
]

#: Slices whose normals differ by less than this (degrees) are parallel: one stack that
#: can be ordered along a common normal.
SAME_ORIENTATION_DEGREES: Final = 1.0

Vector = tuple[float, float, float]
R = TypeVar("R", bound=Mapping[str, Any])


def _numbers(value: Any, count: int, what: str) -> tuple[float, ...]:
    """``value`` (a list, a pydicom MultiValue of DSfloat, ...) as ``count`` finite
    floats; :class:`InvalidInputError` naming ``what`` otherwise."""
    if value is None or isinstance(value, (str, bytes)):
        raise InvalidInputError(f"invalid {what} {value!r} - must be {count} numbers")
    try:
        found = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"invalid {what} {value!r} - must be {count} numbers") from None
    if len(found) != count or not all(math.isfinite(n) for n in found):
        raise InvalidInputError(f"invalid {what} {value!r} - must be {count} finite numbers")
    return found


def slice_normal(iop: Sequence[Any]) -> Vector:
    """The unit normal ``row x column`` (cross product) of a slice with
    ImageOrientationPatient ``iop``.

    Raises :class:`InvalidInputError` when ``iop`` is not 6 finite numbers or its row and
    column vectors are (anti)parallel or zero.
    """
    r0, r1, r2, c0, c1, c2 = _numbers(iop, 6, "ImageOrientationPatient")
    n = (r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0)
    length = math.sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2])
    if length < 1e-6:
        raise InvalidInputError(
            f"invalid ImageOrientationPatient {list(iop)!r} - row and column vectors are "
            "zero or parallel, so the slice has no normal"
        )
    return (n[0] / length, n[1] / length, n[2] / length)


def slice_position(iop: Sequence[Any], ipp: Sequence[Any]) -> float:
    """Position (mm) of a slice along its normal: ``slice_normal(iop) · ipp``."""
    normal = slice_normal(iop)
    x, y, z = _numbers(ipp, 3, "ImagePositionPatient")
    return normal[0] * x + normal[1] * y + normal[2] * z


def _geometry(item: Mapping[str, Any] | Any) -> tuple[Vector, tuple[float, ...]] | None:
    """(normal, IPP) of an instance, or ``None`` when it has no usable geometry."""
    try:
        iop = item.get("ImageOrientationPatient")
        ipp = item.get("ImagePositionPatient")
        if iop is None or ipp is None:
            return None
        return slice_normal(iop), _numbers(ipp, 3, "ImagePositionPatient")
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
    """Indices of ``items`` in slice order (the rule of the module docs).

    ``items`` are per-instance mappings (the ``Metadata`` of instance records) or pydicom
    datasets - anything with ``.get(keyword)``. ``tie_break[i]`` is item ``i``'s
    SOPInstanceUID (default: the item's own ``SOPInstanceUID``); items equal in every key
    keep their input order.
    """
    if tie_break is None:
        ties = [str(item.get("SOPInstanceUID") or "") for item in items]
    else:
        ties = [str(t) for t in tie_break]
        if len(ties) != len(items):
            raise InvalidInputError(f"tie_break has {len(ties)} values for {len(items)} items")
    geometry = [_geometry(item) for item in items]
    instance_numbers = [_instance_number(item) for item in items]
    with_geometry = [i for i, g in enumerate(geometry) if g is not None]
    reference: Vector | None = None
    if with_geometry:
        first = min(with_geometry, key=lambda i: (instance_numbers[i], ties[i], i))
        reference = geometry[first][0]  # type: ignore[index]
        cos_limit = math.cos(math.radians(SAME_ORIENTATION_DEGREES))
        for i in with_geometry:
            normal = geometry[i][0]  # type: ignore[index]
            if abs(sum(a * b for a, b in zip(normal, reference, strict=True))) < cos_limit:
                reference = None  # not one stack
                break

    def key(i: int) -> tuple[Any, ...]:
        g = geometry[i]
        if reference is not None and g is not None:
            position = sum(a * b for a, b in zip(reference, g[1], strict=True))
            return (0, round(position, 4), instance_numbers[i], ties[i], i)
        return (1, 0.0, instance_numbers[i], ties[i], i)

    return sorted(range(len(items)), key=key)


def sort_instances(records: Sequence[R]) -> list[R]:
    """Instance records (``Metadata`` and ``SOPInstanceUID``) in slice order."""
    order = order_slices(
        [r.get("Metadata") or {} for r in records],
        tie_break=[r.get("SOPInstanceUID") or "" for r in records],
    )
    return [records[i] for i in order]
