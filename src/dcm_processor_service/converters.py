"""The original ``dcm_processor_service.converters``: a stored series as DICOM or NIfTI.

Thin, lazy re-exports (numpy, nibabel and pydicom load on first use).
"""

from __future__ import annotations

from ._lazy import lazy_attributes
from .db_manager import get_mgr

_LAZY = {
    "get_series_dicom": "index.series",
    "get_series_nifti": "imaging.series_nifti",
    "dicom_series_to_nifti": "imaging.nifti_read",
    "get_simplified_json": "index.metadata",
}

__all__ = [*sorted(_LAZY), "get_mgr"]

__getattr__, __dir__ = lazy_attributes("dcm_processor_service", _LAZY, globals(), owner=__name__)
