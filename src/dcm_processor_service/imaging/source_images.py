"""The source images of a segmentation or a structured report, and highdicom.

:func:`sorted_source_images` reads the source series (datasets or paths, through
:func:`~dcm_processor_service.sources.read_dataset`), checks that it is one series and
one volume, and puts the images in slice order - the one rule of
:mod:`dcm_processor_service.index.order`, so a SEG's frames follow the same order as
``get_series_dicom`` and ``headers["Instances"]`` whatever order the images are given
in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from .._errors import DicomInputError, InvalidInputError, MissingDependencyError
from ..index.order import sort_datasets
from ..sources import read_dataset
from .geometry import check_stack

__all__ = ["import_highdicom", "read_source_images", "sorted_source_images"]


def import_highdicom(what: str) -> Any:
    """The ``highdicom`` module; :class:`MissingDependencyError` naming ``what`` needs it."""
    try:
        import highdicom
    except ImportError as exc:  # pragma: no cover - highdicom is a core dependency
        raise MissingDependencyError(f"{what} needs highdicom - pip install highdicom") from exc
    return highdicom


def read_source_images(
    source_images: Sequence[Any] | Dataset | str | os.PathLike[str],
) -> list[Dataset]:
    """The source images as datasets (headers of paths), checked to be one series.

    Raises :class:`InvalidInputError` for an empty list or an item that is neither a
    dataset nor a path, :class:`DicomInputError` for an unreadable file or images of
    several series.
    """
    if isinstance(source_images, (Dataset, str, os.PathLike)):
        source_images = [source_images]
    datasets = [
        read_dataset(item, f"source_images[{index}]") for index, item in enumerate(source_images)
    ]
    if not datasets:
        raise InvalidInputError("invalid 'source_images' value [] - need the source series")
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) != 1:
        raise DicomInputError(
            f"'source_images' come from {len(series)} series ({', '.join(sorted(series))}) - "
            "a segmentation references the images of one series"
        )
    return datasets


def sorted_source_images(source_images: Sequence[Any]) -> list[Dataset]:
    """The source images in the order of a label array's first axis.

    Single-frame images must form one volume (each with position and orientation, all
    parallel) and come in slice order; a single multi-frame image is returned as is
    (its frames are the slices).
    """
    datasets = read_source_images(source_images)
    if len(datasets) == 1 and int(datasets[0].get("NumberOfFrames", 1) or 1) > 1:
        return datasets
    check_stack(datasets)
    return sort_datasets(datasets)
