"""The original ``dcm_processor_service.dicom_network``: derived DICOM objects and the
DICOM sender (submodules ``dicom_sender`` and ``utils``).

Thin, lazy re-exports (pydicom, numpy and pynetdicom load on first use).
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "DicomSender": "net.sender",
    "generate_dicom_from_pdf": "_original",
    "make_pdf_dicom": "imaging.derived",
    "make_series_dicom": "imaging.derived",
    "nifti_to_dicom": "imaging.nifti_write",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes("dcm_processor_service", _LAZY, globals(), owner=__name__)
