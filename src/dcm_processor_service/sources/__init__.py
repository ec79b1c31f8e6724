"""The one reader of DICOM input."""
