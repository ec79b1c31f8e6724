"""Reading DICOM files, and "a path or a Dataset", by one rule.

**What counts as a DICOM file** (:func:`read_header`): a DICOM Part 10 file (128-byte
preamble, ``DICM``), or a bare dataset without that header - accepted only when it
starts like one (a group 0002 or 0008 element, either byte order) and holds a
SOPInstanceUID, since ``force=True`` alone would "read" almost any file. Anything else
raises :class:`~dcm_processor_service.DicomInputError` with the reason (``empty file``,
``not a DICOM file (...)``, ``truncated or corrupt DICOM (...)``); a real I/O error
(``OSError`` with an ``errno``) propagates, so callers can tell a bad file from a bad
disk.

pydicom's warnings about a file become DEBUG log lines naming the file
(:func:`pydicom_warnings`): whether a file is usable is judged from its content, and a
folder of odd files must not flood a service's output.

:func:`read_dataset` is the one "path or Dataset" reader of the writers (reference
images, SEG/SR sources, ``get_simplified_json``): a dataset is used as it is, a path is
read by the rule above, and anything else raises naming the parameter.

pydicom is imported when a file is read, not with this module: :func:`is_dataset` tells
a pydicom ``Dataset`` without importing pydicom, so that the sender can take files
without paying pydicom's start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, Final, TypeGuard

from .._errors import DicomInputError, InvalidInputError

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.fileset import FileSet

__all__ = [
    "MEDIA_STORAGE_DIRECTORY",
    "is_dataset",
    "is_dicomdir",
    "is_fileset",
    "pydicom_warnings",
    "read_dataset",
    "read_file",
    "read_header",
]

logger = logging.getLogger(__name__)

#: SOP class of a DICOMDIR (Media Storage Directory Storage): a file-set directory,
#: never an instance.
MEDIA_STORAGE_DIRECTORY: Final = "1.2.840.10008.1.3.10"


def _loaded_instance(obj: object, module: str, name: str) -> bool:
    """Whether ``obj`` is an instance of class ``name`` of ``module`` - False at once when
    that module was never imported (then no such object can exist)."""
    loaded = sys.modules.get(module)
    cls = getattr(loaded, name, None) if loaded is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)


def is_dataset(obj: object) -> TypeGuard[Dataset]:
    """Whether ``obj`` is a pydicom ``Dataset`` (without importing pydicom)."""
    return _loaded_instance(obj, "pydicom.dataset", "Dataset")


def is_fileset(obj: object) -> TypeGuard[FileSet]:
    """Whether ``obj`` is a pydicom ``FileSet`` (without importing pydicom)."""
    return _loaded_instance(obj, "pydicom.fileset", "FileSet")


@contextlib.contextmanager
def pydicom_warnings(what: str | os.PathLike[str]) -> Iterator[None]:
    """pydicom's warnings inside the block become DEBUG log lines naming ``what``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        logger.debug("%s: %s", os.fspath(what), warning.message)


def is_dicomdir(ds: Dataset) -> bool:
    """Whether ``ds`` (a header) is a DICOMDIR rather than an instance."""
    meta = getattr(ds, "file_meta", None)
    sop_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds


def _starts_like_dataset(head: bytes) -> bool:
    """Whether bytes without the Part 10 header start like a DICOM dataset."""
    if len(head) < 8:
        return False
    for order in ("<", ">"):
        group, elem = struct.unpack(order + "HH", head[:4])
        if group in (0x0002, 0x0008) and elem < 0x1000:
            return True
    return False


def _unreadable(exc: Exception, what: str) -> DicomInputError:
    """pydicom's error about a file as a :class:`DicomInputError` giving the reason -
    except a real I/O error (an ``OSError`` with an ``errno``), which is re-raised here
    as it is: it is about the disk, not the file's content."""
    if isinstance(exc, OSError) and exc.errno is not None:
        raise exc
    if isinstance(exc, OSError):  # pydicom raises a bare OSError when data ends early
        return DicomInputError(f"truncated or corrupt DICOM ({exc})")
    return DicomInputError(f"{what} ({type(exc).__name__}: {exc})")


def read_header(fh: BinaryIO, tags: Sequence[str] | None = None) -> tuple[Dataset, bool]:
    """``(header, is_part10)`` of the file open as ``fh`` (from its start): everything
    before the pixel data, or only ``tags`` (keywords) when given.

    Raises :class:`DicomInputError` with the reason when the file is not DICOM by the
    module's rule; ``OSError`` for an I/O error.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    specific = None if tags is None else list(dict.fromkeys([*tags, "SOPInstanceUID"]))
    fh.seek(0)
    head = fh.read(8)
    if not head:
        raise DicomInputError("empty file")
    fh.seek(0)
    try:
        return dcmread(fh, stop_before_pixels=True, specific_tags=specific), True
    except InvalidDicomError:
        pass
    except Exception as exc:
        raise _unreadable(exc, "unreadable DICOM header") from exc
    if not _starts_like_dataset(head):
        raise DicomInputError(
            "not a DICOM file (no 'DICM' prefix and no DICOM data elements at the start)"
        )
    fh.seek(0)
    try:
        ds = dcmread(fh, force=True, stop_before_pixels=True, specific_tags=specific)
    except Exception as exc:
        raise _unreadable(exc, "not a DICOM file") from exc
    if not str(ds.get("SOPInstanceUID") or "").strip():
        raise DicomInputError("not a DICOM file (no 'DICM' prefix and no SOPInstanceUID)")
    return ds, False


def read_file(
    path: str | os.PathLike[str], *, pixels: bool = False, tags: Sequence[str] | None = None
) -> Dataset:
    """The DICOM file at ``path``: its header (or only ``tags``), or with ``pixels``
    the whole dataset. Same rule and errors as :func:`read_header`."""
    with open(path, "rb") as fh, pydicom_warnings(path):
        header, part10 = read_header(fh, tags)
        if not pixels:
            return header
        from pydicom import dcmread

        fh.seek(0)
        try:
            return dcmread(fh, force=not part10)
        except Exception as exc:
            raise _unreadable(exc, "unreadable DICOM") from exc


def read_dataset(item: Any, what: str, *, pixels: bool = False) -> Dataset:
    """``item`` as a dataset: a pydicom ``Dataset`` as it is, a path read by
    :func:`read_file` (header only unless ``pixels``).

    Raises :class:`DicomInputError` naming ``what`` and the path when the file is not a
    readable DICOM file, :class:`InvalidInputError` for an ``item`` of another type.
    """
    if is_dataset(item):
        return item
    if isinstance(item, (str, os.PathLike)):
        where = os.fspath(item)
        try:
            return read_file(where, pixels=pixels)
        except DicomInputError as exc:
            raise DicomInputError(
                f"'{what}' {where!r} is not a readable DICOM file: {exc}"
            ) from exc
        except OSError as exc:
            raise DicomInputError(
                f"'{what}' {where!r} cannot be read: {exc.strerror or exc}"
            ) from exc
    raise InvalidInputError(
        f"invalid '{what}' value of type {type(item).__name__} - must be a pydicom Dataset "
        "or the path of a DICOM file"
    )
