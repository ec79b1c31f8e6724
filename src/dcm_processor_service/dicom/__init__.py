"""DICOM: index and series access, NIfTI conversion, derived objects, sending."""
