"""What a Part 10 file is, from its first bytes: SOP class, SOP instance, transfer
syntax, and where its dataset starts.

The sender needs exactly this to negotiate and to send a file's dataset as stored
(from the byte after its File Meta Information, never decoded). :func:`read_identity`
reads the first 8 KiB and decodes the File Meta Information (group 0002, Explicit VR
Little Endian) and the dataset's first elements up to SOPInstanceUID itself; only an
unusual file (meta longer than 8 KiB, undefined lengths, a deflated body) is handed to
pydicom's reader (``read_dataset`` / ``dcmread`` with ``specific_tags``).

Why not pydicom's reader for every file: measured on 300 CT files of 512 x 512 (see
``docs/networking.md``), this scan takes ~20 ms and pydicom's ~115-160 ms - most of a
send to a fast peer. The element header layout (:func:`element_header`) is shared with
the ingest's truncation check (:mod:`dcm_processor_service.index.verify`).

When the File Meta Information and the dataset disagree on the SOP Class or Instance
UID, the dataset wins (peers such as Orthanc check the C-STORE against it) and a
warning names the file.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
from collections.abc import Collection, Sequence
from typing import Any, Final, NamedTuple

from .._uids import syntax_encoding

__all__ = [
    "LONG_VRS",
    "UNDEFINED_LENGTH",
    "FileIdentity",
    "element_header",
    "read_identity",
    "read_leading_values",
]

logger = logging.getLogger(__name__)

#: VRs whose element header has a 4-byte length (after 2 reserved bytes).
LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
#: Length of an element of undefined length (sequences, encapsulated pixel data).
UNDEFINED_LENGTH: Final = 0xFFFFFFFF

_PROBE: Final = 8192  # bytes read to find the File Meta Information
_META_ELEMENTS: Final = {0x0002: 1, 0x0003: 2, 0x0010: 3}  # class, instance, syntax
_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


class FileIdentity(NamedTuple):
    """A Part 10 file's SOP Class and Instance UIDs (the dataset's), transfer syntax,
    and the offset of its dataset (the byte after the File Meta Information)."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    offset: int


_TAG = {True: struct.Struct("<HH"), False: struct.Struct(">HH")}
_U32 = {True: struct.Struct("<I"), False: struct.Struct(">I")}
_U16 = {True: struct.Struct("<H"), False: struct.Struct(">H")}


def element_header(
    buf: bytes, pos: int, implicit: bool, little: bool
) -> tuple[int, bytes | None, int, int] | None:
    """``(tag, VR, value length, value offset)`` of the data element whose header starts
    at ``buf[pos]`` (``VR`` is ``None`` for implicit VR and item tags), or ``None`` when
    ``buf`` ends inside the header."""
    if pos + 8 > len(buf):
        return None
    group, elem = _TAG[little].unpack_from(buf, pos)
    if group == 0xFFFE or implicit:
        return group << 16 | elem, None, _U32[little].unpack_from(buf, pos + 4)[0], pos + 8
    vr = buf[pos + 4 : pos + 6]
    if vr in LONG_VRS:
        if pos + 12 > len(buf):
            return None
        return group << 16 | elem, vr, _U32[little].unpack_from(buf, pos + 8)[0], pos + 12
    return group << 16 | elem, vr, _U16[little].unpack_from(buf, pos + 6)[0], pos + 8


def _uid_text(value: bytes) -> str:
    return value.decode("ascii", "replace").strip("\x00 ")


def _meta(buf: bytes) -> tuple[str, str, str, int] | None:
    """(SOP class, SOP instance, transfer syntax, dataset offset) from the File Meta
    Information in ``buf``, or None when it is unusual."""
    pos = 132
    found: dict[int, str] = {}
    while (header := element_header(buf, pos, False, True)) is not None:
        tag, _vr, length, start = header
        if tag >> 16 != 2:
            break
        if length == UNDEFINED_LENGTH or start + length > len(buf):
            return None
        if (tag & 0xFFFF) in _META_ELEMENTS:
            found[_META_ELEMENTS[tag & 0xFFFF]] = _uid_text(buf[start : start + length])
        pos = start + length
    else:
        if len(buf) >= _PROBE:  # the meta may go on beyond what was read
            return None
    if len(found) != 3 or not all(found.values()):
        return None
    return found[1], found[2], found[3], pos


def _skip_sequence(buf: bytes, pos: int, implicit: bool, little: bool) -> int | None:
    """Where the undefined-length sequence whose items start at ``buf[pos]`` ends (after
    its delimiter), or None when the buffer ends first."""
    while (item := element_header(buf, pos, True, little)) is not None:
        tag, _vr, length, start = item
        if tag == _SEQ_END:
            return start
        if tag != _ITEM:
            return None
        if length != UNDEFINED_LENGTH:
            pos = start + length
            continue
        pos = start  # an item of undefined length: its elements, then the item delimiter
        while (element := element_header(buf, pos, implicit, little)) is not None:
            tag, vr, length, start = element
            if tag == _ITEM_END:
                pos = start
                break
            if length == UNDEFINED_LENGTH:
                end = _skip_sequence(buf, start, implicit or vr == b"UN", little)
                if end is None:
                    return None
                pos = end
            else:
                pos = start + length
        else:
            return None
    return None


def _dataset_texts(buf: bytes, pos: int, ts: str, tags: Collection[int]) -> dict[int, str] | None:
    """The text of top-level elements ``tags`` from the dataset at ``buf[pos:]`` (those
    absent are missing from the result), or None when the buffer ends before the last
    of them was passed, or the data is unusual."""
    syntax = syntax_encoding(ts)  # None: deflated, private or unknown - pydicom reads it
    if syntax is None:
        return None
    implicit, little = syntax
    last = max(tags)
    found: dict[int, str] = {}
    while (header := element_header(buf, pos, implicit, little)) is not None:
        tag, vr, length, start = header
        if vr is not None and not (vr.isalpha() and vr.isupper()):
            return None  # not the encoding the transfer syntax says: pydicom reads it
        if tag > last:
            return found
        if length == UNDEFINED_LENGTH:
            end = _skip_sequence(buf, start, implicit or vr == b"UN", little)
            if end is None:
                return None
            pos = end
            continue
        if start + length > len(buf):
            return None
        if tag in tags:
            found[tag] = _uid_text(buf[start : start + length])
        pos = start + length
    return None  # the buffer ended before the last tag was passed


def _not_group_2(tag: Any, vr: Any, length: Any) -> bool:
    return bool(tag.group != 2)


def _meta_by_pydicom(path: str) -> tuple[str, str, str, int] | None:
    from pydicom.filereader import read_dataset

    try:
        with open(path, "rb") as fp:
            fp.seek(132)
            meta = read_dataset(
                fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_group_2
            )
            offset = fp.tell()
        values = [
            meta.get(k)
            for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")
        ]
    except Exception:  # malformed: the caller reads the header instead
        return None
    if not all(values):
        return None
    sop_class, sop_instance, ts = (str(v).strip("\x00 ") for v in values)
    return sop_class, sop_instance, ts, offset


def _ids_by_pydicom(path: str) -> tuple[str | None, str | None] | None:
    from pydicom import dcmread

    try:
        with warnings.catch_warnings():  # odd files: the File Meta's UIDs are used
            warnings.simplefilter("ignore")
            ds = dcmread(
                path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
            )
    except Exception:  # the meta was readable: keep its UIDs
        return None
    values = (ds.get("SOPClassUID"), ds.get("SOPInstanceUID"))
    return tuple(str(v) if v else None for v in values)  # type: ignore[return-value]


def read_identity(path: str | os.PathLike[str]) -> FileIdentity | None:
    """The :class:`FileIdentity` of the Part 10 file at ``path``, or ``None`` when it has
    no usable File Meta Information (no ``DICM`` prefix, or the meta lacks a UID): then
    read its header instead (:func:`~dcm_processor_service.sources.read.read_file`).

    Raises ``OSError`` when the file cannot be read.
    """
    where = os.fspath(path)
    with open(where, "rb") as fp:
        head = fp.read(_PROBE)
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    found = _meta(head) or _meta_by_pydicom(where)
    if found is None:
        return None
    sop_class, sop_instance, ts, offset = found
    texts = _dataset_texts(head, offset, ts, (_SOP_CLASS, _SOP_INSTANCE))
    ids = (
        (texts.get(_SOP_CLASS), texts.get(_SOP_INSTANCE))
        if texts is not None
        else _ids_by_pydicom(where)
    )
    if ids is not None:
        for label, meta_value, value in (
            ("SOP Class UID", sop_class, ids[0]),
            ("SOP Instance UID", sop_instance, ids[1]),
        ):
            if value and value != meta_value:
                logger.warning(
                    "%s: File Meta Information %s %s differs from the dataset's %s - "
                    "using the dataset's",
                    where,
                    label,
                    meta_value,
                    value,
                )
        sop_class, sop_instance = ids[0] or sop_class, ids[1] or sop_instance
    return FileIdentity(sop_class, sop_instance, ts, offset)


def read_leading_values(
    path: str | os.PathLike[str], keywords: Sequence[str]
) -> dict[str, str | list[str]] | None:
    """The values of a few top-level text elements (UI, IS, DS, CS...) of the Part 10
    file at ``path``, read from its first 8 KiB: ``{keyword: text}``, a list of texts for
    several values; an absent element is missing. ``None`` when the file is not a
    plain Part 10 file or its header goes beyond what was read: then read it with
    pydicom (:func:`~dcm_processor_service.sources.read.read_file`).

    Raises ``OSError`` when the file cannot be read.
    """
    from pydicom.datadict import tag_for_keyword

    tags = {t: kw for kw in keywords if (t := tag_for_keyword(kw)) is not None}
    with open(path, "rb") as fp:
        head = fp.read(_PROBE)
    if len(head) < 132 or head[128:132] != b"DICM" or not tags:
        return None
    meta = _meta(head)
    texts = None if meta is None else _dataset_texts(head, meta[3], meta[2], tags)
    if texts is None:
        return None
    return {tags[tag]: (text.split("\\") if "\\" in text else text) for tag, text in texts.items()}
