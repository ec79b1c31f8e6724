"""The original ``dcm_processor_service.dicom_conversion``: DICOM -> NIfTI with
dcm2niix, and a DICOM header as simplified JSON.

Thin, lazy re-exports (numpy, nibabel and pydicom load on first use).
"""

from __future__ import annotations

from ._lazy import lazy_attributes

_LAZY = {"dicom_series_to_nifti": "imaging.nifti_read", "get_simplified_json": "index.metadata"}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes("dcm_processor_service", _LAZY, globals(), owner=__name__)
