"""File verification: is a DICOM file whole, or was it cut short?

pydicom silently returns a partial dataset for a truncated file, and a header read with
``stop_before_pixels`` never looks at the pixel data - so a file cut in its pixel data
(an interrupted copy, a full disk) would be filed as if it were whole.
:func:`check_structure` walks every data element of a file by its header alone,
seeking over values, and proves that no element runs past the end of the file. Cost: a
few small reads per element and one seek over the pixel data (~0.15 ms a file).

A file whose structure the walk does not model (a deflated body, an invalid VR, an
unexpected item) is not judged: the check is skipped for it and logged at DEBUG.
"""

from __future__ import annotations

import logging
from typing import BinaryIO, Final

from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .._errors import DicomInputError
from ..dicom_values import transfer_syntax_of
from ..sources.file_meta import UNDEFINED_LENGTH, element_header

__all__ = ["check_structure", "check_walk"]

logger = logging.getLogger(__name__)

_PIXEL_TAGS: Final = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class _Unverifiable(Exception):
    """The walker met something it does not model; the check is skipped."""


class _StructureWalker:
    """Walks the data elements of an open file, raising :class:`DicomInputError` at the
    first element that runs past the end of the file."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size
        self.pixel_data = False

    def _header(self, implicit: bool, little: bool) -> tuple[int, bytes | None, int]:
        pos = self.fh.tell()
        buf = self.fh.read(12)
        group = int.from_bytes(buf[:2], "little" if little else "big")
        if not implicit and group != 0xFFFE and len(buf) >= 6:
            vr = buf[4:6]
            if not (vr.isalpha() and vr.isupper()):  # e.g. trailing padding: not judged
                raise _Unverifiable(f"no valid VR at byte {pos}")
        header = element_header(buf, 0, implicit, little)
        if header is None:
            raise DicomInputError(
                f"truncated: the file ends inside an element header at byte {pos}"
            )
        tag, vr_found, length, start = header
        self.fh.seek(pos + start)
        return tag, vr_found, length

    def _skip(self, tag: int, length: int) -> None:
        here = self.fh.tell()
        if here + length > self.size:
            raise DicomInputError(
                f"truncated: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {here} declares "
                f"{length} bytes but only {self.size - here} remain"
            )
        self.fh.seek(here + length)

    def meta(self, start: int) -> int:
        """Walk the group 0002 elements from ``start``; return where the dataset begins."""
        self.fh.seek(start)
        while self.fh.tell() + 8 <= self.size:
            pos = self.fh.tell()
            peek = self.fh.read(2)
            self.fh.seek(pos)
            if int.from_bytes(peek, "little") != 0x0002:
                break
            try:
                tag, _vr, length = self._header(False, True)
            except _Unverifiable:
                self.fh.seek(pos)
                tag, _vr, length = self._header(True, True)
            if length == UNDEFINED_LENGTH:
                raise _Unverifiable("undefined length in the file meta")
            self._skip(tag, length)
        return self.fh.tell()

    def dataset(self, implicit: bool, little: bool, *, nested: bool = False) -> None:
        """Walk elements to the end of the file (top level) or to an item delimiter."""
        while True:
            if self.fh.tell() >= self.size:
                if nested:
                    raise DicomInputError("truncated: the file ends inside a sequence item")
                return
            tag, vr, length = self._header(implicit, little)
            if tag == _ITEM_END and nested:
                return
            if tag in (_ITEM, _ITEM_END, _SEQ_END):
                raise _Unverifiable(f"unexpected item tag at byte {self.fh.tell()}")
            if not nested and tag in _PIXEL_TAGS:
                self.pixel_data = True
            if length == UNDEFINED_LENGTH:
                self._sequence(implicit or vr == b"UN", little if vr != b"UN" else True)
            else:
                self._skip(tag, length)

    def _sequence(self, implicit: bool, little: bool) -> None:
        while True:
            if self.fh.tell() >= self.size:
                raise DicomInputError(
                    "truncated: the file ends inside a sequence or encapsulated pixel data"
                )
            tag, _vr, length = self._header(implicit, little)
            if tag == _SEQ_END:
                return
            if tag != _ITEM:
                raise _Unverifiable(f"expected an item at byte {self.fh.tell()}")
            if length == UNDEFINED_LENGTH:
                self.dataset(implicit, little, nested=True)
            else:
                self._skip(tag, length)


def check_structure(fh: BinaryIO, size: int, ds: Dataset, start: int) -> None:
    """Raise :class:`DicomInputError` (``truncated: ...``) when the file open as ``fh``
    (``size`` bytes; its File Meta Information, if any, starts at ``start``; ``ds`` is
    its header) is cut short: an element runs past its end, or the header describes an
    image (Rows, Columns) but the pixel data is missing."""
    implicit, little = ds.original_encoding
    check_walk(
        fh,
        size,
        start,
        implicit=implicit,
        little=little,
        deflated=transfer_syntax_of(ds) == DeflatedExplicitVRLittleEndian,
        image="Rows" in ds and "Columns" in ds,
    )


def check_walk(
    fh: BinaryIO,
    size: int,
    start: int,
    *,
    implicit: bool | None,
    little: bool | None,
    deflated: bool,
    image: bool,
) -> None:
    """:func:`check_structure` of a file whose body is encoded ``implicit`` VR,
    ``little`` endian (``None``: not known), ``deflated`` or not, and whose header
    describes an ``image`` (has Rows and Columns)."""
    walker = _StructureWalker(fh, size)
    try:
        body = walker.meta(start)
    except _Unverifiable as exc:
        logger.debug("structure of %s not verified: %s", getattr(fh, "name", "?"), exc)
        return
    if deflated or implicit is None:
        return  # a deflated body cannot be walked without inflating it
    # Some writers encode the body in the other VR mode than their transfer syntax says
    # (pydicom reads them anyway): try the declared mode, then the other one.
    for mode in (bool(implicit), not implicit):
        walker.pixel_data = False
        fh.seek(body)
        try:
            walker.dataset(mode, little is not False)
            break
        except _Unverifiable as exc:
            logger.debug(
                "structure of %s not verified as %s VR: %s",
                getattr(fh, "name", "?"),
                "implicit" if mode else "explicit",
                exc,
            )
    else:
        return
    if not walker.pixel_data and image:
        # An image header without its pixel data: the file stops between two elements.
        # (A SOP class alone is no proof: header-only files exist, e.g. in test sets.)
        raise DicomInputError(
            "truncated: the header describes an image (Rows, Columns) but there is no Pixel Data"
        )
