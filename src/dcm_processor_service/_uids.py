"""Transfer syntax UIDs as plain strings, and what their encoding is (PS3.5 10, A).

The send path and the File Meta scan need only this much about a transfer syntax, and
importing :mod:`pydicom.uid` (which imports all of pydicom, its pixel handlers and numpy)
costs about half a second of start-up. :func:`syntax_encoding` answers for the standard
transfer syntaxes of PS3.6 Table A-1; anything else (a private syntax, one newer than
this table) is left to pydicom by the caller. The tests check every answer against
pydicom's.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "ENCAPSULATED_SYNTAXES",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "JPEG2000_LOSSLESS",
    "JPEG_LS_LOSSLESS",
    "NATIVE_SYNTAXES",
    "RLE_LOSSLESS",
    "UNCOMPRESSED_LE",
    "is_compressed",
    "syntax_encoding",
]

IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN: Final = "1.2.840.10008.1.2.2"
RLE_LOSSLESS: Final = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS: Final = "1.2.840.10008.1.2.4.80"
JPEG2000_LOSSLESS: Final = "1.2.840.10008.1.2.4.90"

#: The uncompressed little-endian syntaxes, in the order we propose them.
UNCOMPRESSED_LE: Final = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
#: The syntaxes whose pixel data is not encapsulated (PS3.5 A.1-A.5).
NATIVE_SYNTAXES: Final = frozenset(
    {
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
    }
)
#: Every other standard transfer syntax (encapsulated pixel data, or an MPEG / RFC 2557 /
#: SMPTE reference): its dataset is in Explicit VR Little Endian (PS3.5 A.4, 10).
ENCAPSULATED_SYNTAXES: Final = frozenset(
    {
        "1.2.840.10008.1.2.1.98",  # Encapsulated Uncompressed Explicit VR Little Endian
        "1.2.840.10008.1.2.5",  # RLE Lossless
        "1.2.840.10008.1.2.6.1",  # RFC 2557 MIME encapsulation (retired)
        "1.2.840.10008.1.2.6.2",  # XML encoding (retired)
        "1.2.840.10008.1.2.7.1",  # SMPTE ST 2110-20 uncompressed progressive
        "1.2.840.10008.1.2.7.2",  # SMPTE ST 2110-20 uncompressed interlaced
        "1.2.840.10008.1.2.7.3",  # SMPTE ST 2110-30 PCM audio
        # JPEG (baseline, extended, lossless and the retired processes 2..29)
        *(f"1.2.840.10008.1.2.4.{n}" for n in range(50, 67)),
        "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        *(f"1.2.840.10008.1.2.4.{n}" for n in range(90, 96)),  # JPEG 2000, JPIP
        *(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)),  # MPEG-2/-4, HEVC
        *(f"1.2.840.10008.1.2.4.{n}.1" for n in range(100, 107)),  # ... fragmentable
        *(f"1.2.840.10008.1.2.4.{n}" for n in range(110, 113)),  # JPEG XL
        *(f"1.2.840.10008.1.2.4.{n}" for n in range(201, 206)),  # HTJ2K, JPIP HTJ2K
        "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression (frames, not the dataset)
    }
)


def syntax_encoding(ts: str) -> tuple[bool, bool] | None:
    """``(implicit VR, little endian)`` of the dataset encoding of the standard transfer
    syntax ``ts``; None for a deflated, private or unknown syntax (ask pydicom)."""
    if ts == IMPLICIT_VR_LITTLE_ENDIAN:
        return True, True
    if ts == EXPLICIT_VR_BIG_ENDIAN:
        return False, False
    if ts == EXPLICIT_VR_LITTLE_ENDIAN or ts in ENCAPSULATED_SYNTAXES:
        return False, True
    return None


def is_compressed(ts: str) -> bool | None:
    """True when the standard transfer syntax ``ts`` encapsulates its pixel data, False
    for the native ones; None when this table does not know ``ts`` (ask pydicom)."""
    if ts in NATIVE_SYNTAXES:
        return False
    return True if ts in ENCAPSULATED_SYNTAXES else None
