"""The original ``dcm_processor_service.converters``: a stored series as DICOM or NIfTI.

Thin, lazy re-exports (numpy, nibabel and pydicom load on first use).
"""

from __future__ import annotations

from ._lazy import lazy_attributes
from .db_manager import get_mgr

_LAZY = {
    "get_series_dicom": "dicom.series",
    "get_series_nifti": "dicom.series_nifti",
    "dicom_series_to_nifti": "dicom.nifti",
    "get_simplified_json": "dicom.simplified_json",
}

__all__ = [*sorted(_LAZY), "get_mgr"]

__getattr__, __dir__ = lazy_attributes("dcm_processor_service", _LAZY, globals(), owner=__name__)
