"""A byte-level walk of a Part 10 file's header: the raw values of a few tags, and
where the pixel data is - without pydicom's reader.

The ingest reads ~40 tags of every file. pydicom's ``dcmread(..., specific_tags=...)``
plus its value conversion cost ~5 ms a file, most of an ingest's time; this walk reads
the first bytes of the file once and takes ~0.1 ms. It handles the common case only and
answers ``None`` for everything else, so the caller reads that file with pydicom as
before (:func:`~dcm_processor_service.sources.read.read_header`) and the result never
differs:

* a Part 10 file (``DICM``) whose File Meta Information is plain Explicit VR Little
  Endian, with a transfer syntax that is Implicit or Explicit VR Little Endian or an
  encapsulated (compressed) one - not big endian, not deflated, not a private or
  unknown syntax;
* a body in the encoding the transfer syntax says, every explicit VR a known one, tags
  strictly ascending, no group below 0008 (command set, DICOMDIR records), no item tag
  out of place;
* every wanted tag with a defined length, the dictionary's VR and its value inside the
  file (sequences of undefined length are walked item by item and skipped).

The walk ends at the pixel data (``7FE0,0010`` / float / double float pixel data) or
at the end of the file, exactly where pydicom's ``stop_before_pixels`` stops.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import BinaryIO, Final, NamedTuple

from .._uids import syntax_encoding
from ..sources.file_meta import LONG_VRS, UNDEFINED_LENGTH

__all__ = ["ScannedHeader", "scan_header"]

#: Bytes read first; the buffer doubles while the header goes on (up to MAX_HEADER).
FIRST_READ: Final = 16 * 1024
#: A header longer than this is left to pydicom.
MAX_HEADER: Final = 8 * 1024 * 1024

_PIXEL_TAGS: Final = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_TS_TAG, _MEDIA_CLASS_TAG = 0x00020010, 0x00020002
_KNOWN_VRS: Final = LONG_VRS | frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip
_HHL: Final = struct.Struct("<HHL")
_HH2sH: Final = struct.Struct("<HH2sH")
_L: Final = struct.Struct("<L")


class _Unusual(Exception):
    """Something the walk does not model: pydicom reads this file."""


class ScannedHeader(NamedTuple):
    """What :func:`scan_header` found."""

    transfer_syntax: str
    media_sop_class: str
    """The File Meta Information's MediaStorageSOPClassUID (``""`` when absent)."""
    implicit_vr: bool
    body_start: int
    """Offset of the dataset (the byte after the File Meta Information)."""
    elements: dict[int, tuple[str, bytes]]
    """Wanted tag -> (VR, raw value), in file order."""
    pixel_tag: int | None
    """The pixel data element the walk stopped at (``None``: the file ended first)."""
    pixel_end: int | None
    """Where that element's value ends (``None``: undefined length, i.e. encapsulated)."""


class _Reader:
    """The file's first bytes, read on demand (the buffer always starts at byte 0)."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self.fh = fh
        self.size = size
        fh.seek(0)
        self.buf = fh.read(min(size, FIRST_READ))

    def need(self, end: int) -> bytes:
        """The buffer, holding at least the bytes before ``end``."""
        if end <= len(self.buf):
            return self.buf
        if end > self.size or end > MAX_HEADER:
            raise _Unusual("the header goes beyond the file or the scan's limit")
        want = min(self.size, MAX_HEADER, max(end, 2 * len(self.buf))) - len(self.buf)
        self.fh.seek(len(self.buf))
        more = self.fh.read(want)
        if len(more) != want:
            raise _Unusual("the file changed size while it was read")
        self.buf += more
        return self.buf


def _element(reader: _Reader, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, explicit VR or None, length, value offset) of the element at ``pos``."""
    buf = reader.need(pos + 8)
    if implicit:
        group, elem, length = _HHL.unpack_from(buf, pos)
        return group << 16 | elem, None, length, pos + 8
    group, elem, vr, length = _HH2sH.unpack_from(buf, pos)
    if group == 0xFFFE:  # item tags have no VR in either encoding
        return group << 16 | elem, None, _HHL.unpack_from(buf, pos)[2], pos + 8
    if vr not in _KNOWN_VRS:
        raise _Unusual(f"unknown VR {vr!r} at byte {pos}")
    if vr in LONG_VRS:
        buf = reader.need(pos + 12)
        return group << 16 | elem, vr, _L.unpack_from(buf, pos + 8)[0], pos + 12
    return group << 16 | elem, vr, length, pos + 8


#: Sequences nested deeper than this are left to pydicom (a hostile file could nest them
#: until the walk's recursion overflows).
MAX_NESTING: Final = 64


def _skip_sequence(reader: _Reader, pos: int, implicit: bool, depth: int = 1) -> int:
    """Where the undefined-length sequence whose items start at ``pos`` ends."""
    if depth > MAX_NESTING:
        raise _Unusual(f"sequences nested deeper than {MAX_NESTING} at byte {pos}")
    while True:
        tag, _vr, length, start = _element(reader, pos, True)
        if tag == _SEQ_END:
            return start
        if tag != _ITEM:
            raise _Unusual(f"expected an item at byte {pos}")
        if length != UNDEFINED_LENGTH:
            pos = start + length
            reader.need(pos)
            continue
        pos = start
        while True:  # an item of undefined length: its elements, then the delimiter
            tag, vr, length, start = _element(reader, pos, implicit)
            if tag == _ITEM_END:
                pos = start
                break
            if tag in (_ITEM, _SEQ_END):
                raise _Unusual(f"unexpected item tag at byte {pos}")
            if length == UNDEFINED_LENGTH:
                if not implicit and vr not in (b"SQ", b"UN"):
                    raise _Unusual(f"undefined length with VR {vr!r} at byte {pos}")
                pos = _skip_sequence(reader, start, implicit or vr == b"UN", depth + 1)
            else:
                pos = start + length
                reader.need(pos)


def _uid(raw: bytes) -> str:
    """A UID value as pydicom reads it."""
    return raw.decode("latin-1").rstrip("\x00 ").strip()


def _meta(reader: _Reader) -> tuple[str, str, int]:
    """(transfer syntax, media storage SOP class, dataset offset) of a Part 10 file."""
    buf = reader.need(132)
    if buf[128:132] != b"DICM":
        raise _Unusual("no DICM prefix")
    pos = 132
    found: dict[int, str] = {}
    while pos < reader.size:
        buf = reader.need(pos + 8)
        if buf[pos : pos + 2] != b"\x02\x00":
            break
        tag, _vr, length, start = _element(reader, pos, False)
        if length == UNDEFINED_LENGTH:
            raise _Unusual("undefined length in the File Meta Information")
        pos = start + length
        if tag in (_TS_TAG, _MEDIA_CLASS_TAG):
            found[tag] = _uid(reader.need(pos)[start:pos])
            if "\\" in found[tag]:
                raise _Unusual("several values in a File Meta Information UID")
    return found.get(_TS_TAG, ""), found.get(_MEDIA_CLASS_TAG, ""), pos


def _body_encoding(ts: str) -> bool:
    """Whether the body of a file in transfer syntax ``ts`` is implicit VR (little
    endian either way); :class:`_Unusual` for a syntax pydicom reads another way (big
    endian, deflated, private or unknown: :func:`~dcm_processor_service._uids.syntax_encoding`
    does not know it)."""
    encoding = syntax_encoding(ts)
    if encoding is None or not encoding[1]:
        raise _Unusual(f"transfer syntax {ts!r}")
    return encoding[0]


def _scan(fh: BinaryIO, size: int, wanted: Mapping[int, str]) -> ScannedHeader:
    reader = _Reader(fh, size)
    ts, media_class, pos = _meta(reader)
    if not ts:
        raise _Unusual("no transfer syntax")
    implicit = _body_encoding(ts)
    if pos + 6 > size:
        raise _Unusual("no dataset")
    first_vr = reader.need(pos + 6)[pos + 4 : pos + 6]
    if (not (0x40 < first_vr[0] < 0x5B and 0x40 < first_vr[1] < 0x5B)) != implicit:
        raise _Unusual("the body is not encoded as its transfer syntax says")
    body, previous = pos, 0
    elements: dict[int, tuple[str, bytes]] = {}
    while pos < size:
        tag, vr, length, start = _element(reader, pos, implicit)
        if tag <= previous or tag >> 16 < 0x0008 or tag >> 16 == 0xFFFE:
            raise _Unusual(f"unexpected tag {tag:08X} at byte {pos}")
        previous = tag
        if tag in _PIXEL_TAGS:
            end = None if length == UNDEFINED_LENGTH else start + length
            return ScannedHeader(ts, media_class, implicit, body, elements, tag, end)
        if length == UNDEFINED_LENGTH:
            if tag in wanted or (vr is not None and vr not in (b"SQ", b"UN")):
                raise _Unusual(f"undefined length of {tag:08X}")
            pos = _skip_sequence(reader, start, implicit or vr == b"UN")
            continue
        pos = start + length
        if pos > size:
            raise _Unusual(f"element {tag:08X} runs past the end of the file")
        known = wanted.get(tag)
        if known is not None:
            if vr is not None and vr.decode() != known:
                raise _Unusual(f"element {tag:08X} has VR {vr!r}, not {known}")
            elements[tag] = (known, reader.need(pos)[start:pos])
    if pos != size:
        raise _Unusual("the last element runs past the end of the file")
    return ScannedHeader(ts, media_class, implicit, body, elements, None, None)


def scan_header(fh: BinaryIO, size: int, wanted: Mapping[int, str]) -> ScannedHeader | None:
    """Walk the header of the Part 10 file open as ``fh`` (``size`` bytes) and return the
    raw values of the ``wanted`` top-level tags (tag -> the dictionary's VR, which the
    file's explicit VR must match), or ``None`` when the file is not the
    common case the walk models (see the module docs): read it with pydicom then.

    ``OSError`` (a read error) propagates.
    """
    try:
        return _scan(fh, size, wanted)
    except (_Unusual, struct.error, KeyError, ValueError):
        return None
