"""The one reader of DICOM input: folders, files, DICOMDIRs, datasets.

Every entry point that takes DICOM from a caller - :func:`~dcm_processor_service.ingest`,
:class:`~dcm_processor_service.DicomSender`, the runner (``dcm-service run``), the CLI,
NIfTI conversion and the SEG/SR writers - reads it through this package, so they agree
on what the input is:

* :mod:`.walk` - what a caller names becomes entries: folders walked (a folder's files,
  then its subfolders, in name order), **hidden entries** (``.name``, found in a walk)
  skipped *and reported as skipped*, never a failure; FIFOs, sockets, devices and broken
  links reported as failures, never opened; each file once per call; a DICOMDIR the
  caller named followed, one met in a folder skipped.
* :mod:`.dicomdir` - a DICOMDIR's references, contained in its folder (media are
  untrusted input).
* :mod:`.read` - what counts as a DICOM file (Part 10, or a bare dataset that starts
  like one and has a SOPInstanceUID), pydicom's warnings as debug lines, and the "path
  or Dataset" reader.
* :mod:`.file_meta` - a Part 10 file's identity (SOP class, instance, transfer syntax,
  dataset offset) and a few leading values from its first bytes, for the sender and
  the NIfTI conversion's slice order (pydicom's reader measured several times slower).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from .file_meta import FileIdentity, read_identity, read_leading_values
from .read import (
    MEDIA_STORAGE_DIRECTORY,
    is_dataset,
    is_dicomdir,
    is_fileset,
    pydicom_warnings,
    read_dataset,
    read_file,
    read_header,
)
from .walk import (
    DICOMDIR_SKIPPED,
    HIDDEN,
    DicomdirFile,
    Entry,
    Failed,
    InputFile,
    InputFiles,
    Inputs,
    Skipped,
    SourceLike,
    collect_files,
    is_hidden,
)

#: The DICOMDIR reader's names, imported on first use (only DICOMDIRs need it).
_LAZY = {
    "DicomdirReference": "dicomdir",
    "dicomdir_references": "dicomdir",
    "resolve_file_id": "dicomdir",
}
if TYPE_CHECKING:
    from .dicomdir import DicomdirReference, dicomdir_references, resolve_file_id

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

__all__ = [
    "DICOMDIR_SKIPPED",
    "HIDDEN",
    "MEDIA_STORAGE_DIRECTORY",
    "DicomdirFile",
    "DicomdirReference",
    "Entry",
    "Failed",
    "FileIdentity",
    "InputFile",
    "InputFiles",
    "Inputs",
    "Skipped",
    "SourceLike",
    "collect_files",
    "dicomdir_references",
    "is_dataset",
    "is_dicomdir",
    "is_fileset",
    "is_hidden",
    "pydicom_warnings",
    "read_dataset",
    "read_file",
    "read_header",
    "read_identity",
    "read_leading_values",
    "resolve_file_id",
]
