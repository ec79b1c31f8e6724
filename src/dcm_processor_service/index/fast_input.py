"""The ingest's fast path: a file's :class:`InstanceInput` without pydicom's reader.

:func:`fast_instance_input` walks the header (:mod:`.header_scan`), decodes the raw
values of the record tags (:mod:`.raw_values`) and applies the same record rules as
:func:`~dcm_processor_service.index.metadata.instance_input` (shared functions of
:mod:`.metadata`), so the result is the one pydicom's path gives - checked value by
value over every DICOM file of the test suite (``tests/test_fast_ingest.py``). It
answers ``None`` whenever the file or one of its values is not the common case, and the
ingest then reads the file with pydicom as before. Measured: ~0.4 ms a file, against
~5 ms for pydicom's read and value conversion.

The file's structure is verified here too (the check of :mod:`.verify`): a file whose
pixel data ends exactly at the end of the file is whole by the walk itself; any other
file is walked by :func:`~dcm_processor_service.index.verify.check_walk`.
"""

from __future__ import annotations

from typing import Any, BinaryIO, Final, cast

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from ..sources import MEDIA_STORAGE_DIRECTORY
from ..store.records import InstanceInput
from .header_scan import ScannedHeader, scan_header
from .metadata import (
    HEADER_KEYWORDS,
    INSTANCE_KEYWORDS,
    OMIT,
    UID_KEYWORDS,
    build_instance_input,
    checked_uids,
    instance_value,
    record_value,
)
from .raw_values import UnusualValue, decode_value, pydicom_defaults, text_codec
from .verify import check_walk

__all__ = ["fast_instance_input"]

_CHARSET: Final = 0x00080005
#: What pydicom's header read for the ingest holds: the header keywords, the
#: SOPInstanceUID and (always added by pydicom) the Specific Character Set.
_HEADER_TAGS: Final = {
    _CHARSET,
    *(t for k in (*HEADER_KEYWORDS, "SOPInstanceUID") if (t := tag_for_keyword(k))),
}
WANTED: Final = {tag: dictionary_VR(tag) for tag in sorted(_HEADER_TAGS)}
_KEYWORDS: Final = {tag: keyword_for_tag(tag) for tag in WANTED}


def _tag(keyword: str) -> int:
    return cast(int, tag_for_keyword(keyword))  # a keyword of the dictionary


_INSTANCE_TAGS: Final = tuple((_tag(k), k) for k in INSTANCE_KEYWORDS)
_UID_TAGS: Final = tuple((k, _tag(k)) for k in UID_KEYWORDS)
_ROWS, _COLUMNS = _tag("Rows"), _tag("Columns")


def _decoded(scanned: ScannedHeader) -> dict[int, tuple[str, Any]]:
    """tag -> (VR, value as pydicom decodes it); :class:`UnusualValue` when unsure."""
    charset = scanned.elements.get(_CHARSET)
    codec = text_codec(None if charset is None else decode_value("CS", charset[1], ""))
    return {tag: (vr, decode_value(vr, raw, codec)) for tag, (vr, raw) in scanned.elements.items()}


def _input(
    scanned: ScannedHeader,
    values: dict[int, tuple[str, Any]],
    peer_id: str | None,
    session_id: str | None,
) -> InstanceInput:
    texts = {}
    for keyword, tag in _UID_TAGS:
        found = values.get(tag)
        texts[keyword] = "" if found is None else str(found[1]).strip()
    uids = checked_uids(texts, lambda: scanned.media_sop_class.strip())
    header: dict[str, Any] = {}
    for tag, (vr, value) in values.items():
        keyword = _KEYWORDS[tag]
        item = record_value(keyword, vr, value)
        if item is not OMIT:
            header[keyword] = item
    instance_meta = {
        keyword: instance_value(values[tag][0], values[tag][1], keyword)
        for tag, keyword in _INSTANCE_TAGS
        if tag in values
    }
    return build_instance_input(
        uids,
        header,
        instance_meta,
        scanned.transfer_syntax,
        peer_id=peer_id,
        session_id=session_id,
    )


def fast_instance_input(
    fh: BinaryIO, size: int, *, peer_id: str | None, session_id: str | None
) -> InstanceInput | None:
    """The :class:`InstanceInput` of the Part 10 file open as ``fh`` (``size`` bytes),
    its structure verified - or ``None``: read this file with pydicom (see the module
    docs).

    Raises :class:`~dcm_processor_service.DicomInputError` for a truncated file (the
    reason of :func:`~dcm_processor_service.index.verify.check_structure`) or a
    missing or invalid UID (that of
    :func:`~dcm_processor_service.index.metadata.instance_input`), in that order, as
    the pydicom path does; ``OSError`` for a read error.
    """
    if not pydicom_defaults():
        return None
    scanned = scan_header(fh, size, WANTED)
    if scanned is None or scanned.media_sop_class == MEDIA_STORAGE_DIRECTORY:
        return None
    try:
        values = _decoded(scanned)
    except UnusualValue:
        return None
    if scanned.pixel_end != size:
        check_walk(
            fh,
            size,
            132,
            implicit=scanned.implicit_vr,
            little=True,
            deflated=False,
            image=_ROWS in values and _COLUMNS in values,
        )
    return _input(scanned, values, peer_id, session_id)
