"""The original ``dcm_processor_service.dicom_network.utils``: derived DICOM objects
and the helpers the original exposed with them.

Thin, lazy re-exports. ``get_slope_and_intercept_pydicom`` and ``write_dicom_slice``,
internal steps of the original ``nifti_to_dicom`` (int16 rescaling, a hard-coded slice
geometry), are not provided: ``nifti_to_dicom`` keeps the voxel values exactly and
takes the geometry from the NIfTI affine (see ``docs/migrating.md``).
"""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {
    "COPY_TAGS": "_original",
    "format_patient_age": "_original",
    "generate_dicom_from_pdf": "_original",
    "get_orientation": "_original",
    "get_patient_orientation": "_original",
    "post_process_all_ds": "_original",
    "make_pdf_dicom": "imaging.derived",
    "make_series_dicom": "imaging.derived",
    "nifti_to_dicom": "imaging.nifti_write",
}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes("dcm_processor_service", _LAZY, globals(), owner=__name__)
