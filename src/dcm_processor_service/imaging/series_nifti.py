"""``get_series_nifti``: a stored series straight to NIfTI.

Joins series access (the store's bytes, written as files in anatomical order) with the
dcm2niix conversion of :func:`~dcm_processor_service.series_files_to_nifti`.
The DICOM files live in a private temporary folder that is removed afterwards.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from ..index.series import get_series_dicom
from ..store.base import Store
from .nifti_read import series_files_to_nifti

__all__ = ["get_series_nifti"]


def get_series_nifti(
    series_id: str,
    filename: str | os.PathLike[str] | None = None,
    *,
    store: Store | None = None,
    compress: bool | None = None,
) -> tuple[Any, Any, Any]:
    """Convert stored series ``series_id`` (record ``_id`` or SeriesInstanceUID).

    With ``filename`` (``.nii`` or ``.nii.gz``): writes the NIfTI and a JSON sidecar
    beside it and returns ``(nifti_path, json_path, None)``. Without: returns
    ``(nibabel_image, sidecar_dict, float32_array)`` with nothing left on disk. The
    sidecar is dcm2niix's BIDS sidecar merged with ``get_simplified_json`` of the series.
    Raises :class:`NotFoundError` for an unknown series and :class:`ConversionError`
    when dcm2niix fails.
    """
    with tempfile.TemporaryDirectory(prefix="dcm-series-") as tmp:
        get_series_dicom(series_id, tmp, store=store)
        return series_files_to_nifti(tmp, filename, compress=compress)
