"""Talking DICOM to a peer (PACS): sending instances with C-STORE, checking with C-ECHO."""
