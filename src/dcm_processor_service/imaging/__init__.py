"""Imaging: DICOM <-> NIfTI, derived DICOM objects (series, PDF, SEG, SR), pixel and
geometry helpers."""
