"""The DICOM index: ingest, metadata schema, file verification, series access, selection,
and the slice order."""
