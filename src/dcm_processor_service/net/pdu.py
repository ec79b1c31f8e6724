"""DICOM Upper Layer PDUs (PS3.8 9.3): what the requestor sends and reads, as bytes.

* A-ASSOCIATE-RQ is encoded (:func:`encode_associate_rq`) and A-ASSOCIATE-AC decoded
  (:func:`decode_associate_ac`) here, from PS3.8 9.3.2-9.3.3 and Annex D.1: the bytes
  are the ones pynetdicom's encoder writes for the same request (the tests compare
  them), without importing pynetdicom and pydicom (~1 s of start-up);
* A-ASSOCIATE-RJ and A-ABORT are decoded here, their reasons put into words;
* the fixed-size PDUs (A-RELEASE-RQ/-RP, A-ABORT) are constants;
* P-DATA-TF: :data:`P_DATA_HEADER` frames one PDV per PDU (see :mod:`.dimse`), and
  :func:`iter_pdvs` reads the PDVs of a received one.

Pure functions over bytes: no socket here (that is :mod:`.transport`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from enum import IntEnum
from typing import Final, NamedTuple

__all__ = [
    "APPLICATION_CONTEXT",
    "A_ABORT_PDU",
    "A_RELEASE_RP_PDU",
    "A_RELEASE_RQ_PDU",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "PDU_HEADER",
    "P_DATA_HEADER",
    "NegotiatedContext",
    "PduType",
    "ProposedContext",
    "ProtocolError",
    "Rejection",
    "abort_reason",
    "check_pdu_length",
    "decode_associate_ac",
    "decode_associate_rj",
    "encode_associate_rq",
    "iter_pdvs",
]

APPLICATION_CONTEXT: Final = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_VERSION_NAME: Final = "DCMPROC_SERVICE"
#: The Implementation Class UID we announce: the one our requests always carried
#: (pynetdicom's, as of pynetdicom 3.0.4), kept so that peers see the same bytes.
IMPLEMENTATION_CLASS_UID: Final = "1.2.826.0.1.3680043.9.3811.3.0.4"


class PduType(IntEnum):
    """The PDU type byte (PS3.8 Table 9-11)."""

    A_ASSOCIATE_RQ = 0x01
    A_ASSOCIATE_AC = 0x02
    A_ASSOCIATE_RJ = 0x03
    P_DATA_TF = 0x04
    A_RELEASE_RQ = 0x05
    A_RELEASE_RP = 0x06
    A_ABORT = 0x07


#: Every PDU starts with: type, reserved, length of what follows (big endian).
PDU_HEADER: Final = struct.Struct(">BBI")
#: A P-DATA-TF PDU holding one PDV: PDU header, PDV item length, context id, message
#: control header (bit 0: command, bit 1: last fragment).
P_DATA_HEADER: Final = struct.Struct(">BBIIBB")
A_RELEASE_RQ_PDU: Final = b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
A_RELEASE_RP_PDU: Final = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"
A_ABORT_PDU: Final = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"  # source 0 = service user
#: The largest PDU we read even when we announced "unlimited" (maximum length 0).
_UNLIMITED_PDU_CAP: Final = 256 * 1024 * 1024

# A-ASSOCIATE-RJ and A-ABORT fields in words (PS3.8 9.3.4, 9.3.8).
_RJ_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
_RJ_SOURCE = {
    1: "DICOM UL service-user",
    2: "DICOM UL service-provider (ACSE)",
    3: "DICOM UL service-provider (presentation)",
}
_RJ_REASON = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized",
    (1, 7): "called AE title not recognized",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}
_ABORT_SOURCE = {
    0: "the peer (service user)",
    1: "reserved source",
    2: "the peer's DICOM UL provider",
}
_ABORT_REASON = {
    0: "no reason given",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}
_CONTEXT_RESULT = {
    0: "accepted",
    1: "user rejection",
    2: "no reason (provider rejection)",
    3: "abstract syntax (SOP class) not supported",
    4: "transfer syntaxes not supported",
}


class ProtocolError(ValueError):
    """The peer sent bytes that are not valid DICOM UL."""


class ProposedContext(NamedTuple):
    """One presentation context of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


class NegotiatedContext(NamedTuple):
    """The peer's answer to one proposed context."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str | None
    result: int

    @property
    def accepted(self) -> bool:
        """True when the peer accepted the context."""
        return self.result == 0 and self.transfer_syntax is not None

    @property
    def result_text(self) -> str:
        """The result in words."""
        return _CONTEXT_RESULT.get(self.result, f"result code {self.result}")


# Item types of the variable part of A-ASSOCIATE-RQ/AC (PS3.8 Tables 9-12 .. 9-18, D.1).
_APPLICATION_CONTEXT_ITEM: Final = 0x10
_CONTEXT_RQ_ITEM: Final = 0x20
_CONTEXT_AC_ITEM: Final = 0x21
_ABSTRACT_SYNTAX_ITEM: Final = 0x30
_TRANSFER_SYNTAX_ITEM: Final = 0x40
_USER_INFORMATION_ITEM: Final = 0x50
_MAXIMUM_LENGTH_ITEM: Final = 0x51
_IMPLEMENTATION_CLASS_ITEM: Final = 0x52
_IMPLEMENTATION_VERSION_ITEM: Final = 0x55
#: Item header: type, reserved, length of what follows (big endian).
_ITEM_HEADER: Final = struct.Struct(">BBH")
#: Fixed part of A-ASSOCIATE-RQ/AC after the PDU header: protocol version, reserved,
#: called AE title, calling AE title, 32 reserved bytes (PS3.8 Table 9-11).
_FIXED_PART: Final = 68
_PROTOCOL_VERSION: Final = 0x0001


def _item(item_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError(f"PDU item 0x{item_type:02X} of {len(value)} bytes exceeds 65535")
    return _ITEM_HEADER.pack(item_type, 0, len(value)) + value


def _ae_title(title: str, which: str) -> bytes:
    """An AE title as the 16-byte field of A-ASSOCIATE-RQ (space padded)."""
    encoded = title.encode("ascii")
    if not 0 < len(encoded) <= 16:
        raise ValueError(f"invalid {which} AE title {title!r} - must be 1 to 16 characters")
    return encoded.ljust(16)


def encode_associate_rq(
    calling: str, called: str, contexts: Sequence[ProposedContext], max_pdu: int
) -> bytes:
    """The A-ASSOCIATE-RQ proposing ``contexts``, announcing ``max_pdu`` (0: unlimited)
    as the largest PDU we accept (PS3.8 9.3.2): the application context, one
    presentation context item per context (abstract syntax, then its transfer syntaxes),
    then the user information (maximum length, implementation class UID and version
    name). UIDs are written without padding, AE titles padded to 16 bytes."""
    items = [_item(_APPLICATION_CONTEXT_ITEM, APPLICATION_CONTEXT.encode("ascii"))]
    for proposed in contexts:
        sub_items = _item(_ABSTRACT_SYNTAX_ITEM, proposed.abstract_syntax.encode("ascii"))
        sub_items += b"".join(
            _item(_TRANSFER_SYNTAX_ITEM, ts.encode("ascii")) for ts in proposed.transfer_syntaxes
        )
        items.append(_item(_CONTEXT_RQ_ITEM, bytes((proposed.context_id, 0, 0, 0)) + sub_items))
    user_information = (
        _item(_MAXIMUM_LENGTH_ITEM, struct.pack(">I", max_pdu))
        + _item(_IMPLEMENTATION_CLASS_ITEM, IMPLEMENTATION_CLASS_UID.encode("ascii"))
        + _item(_IMPLEMENTATION_VERSION_ITEM, IMPLEMENTATION_VERSION_NAME.encode("ascii"))
    )
    items.append(_item(_USER_INFORMATION_ITEM, user_information))
    body = (
        struct.pack(">HH", _PROTOCOL_VERSION, 0)
        + _ae_title(called, "called")
        + _ae_title(calling, "calling")
        + bytes(32)
        + b"".join(items)
    )
    return PDU_HEADER.pack(PduType.A_ASSOCIATE_RQ, 0, len(body)) + body


def _iter_items(data: bytes | memoryview, where: str) -> Iterator[tuple[int, memoryview]]:
    """Yield (item type, value) of the items that fill ``data``; :class:`ProtocolError`
    when one runs past its end."""
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise ProtocolError(f"truncated item header in {where}")
        item_type, _reserved, length = _ITEM_HEADER.unpack_from(view, pos)
        if pos + 4 + length > len(view):
            raise ProtocolError(f"item 0x{item_type:02X} runs past the end of {where}")
        yield item_type, view[pos + 4 : pos + 4 + length]
        pos += 4 + length


def _uid(value: memoryview) -> str:
    return bytes(value).decode("ascii", "replace").rstrip("\x00 ")


def decode_associate_ac(
    data: bytes, proposed: Sequence[ProposedContext]
) -> tuple[dict[int, NegotiatedContext], int]:
    """The peer's answer to each of our ``proposed`` contexts (by context id), and the
    largest PDU it accepts (0: unlimited), from an A-ASSOCIATE-AC PDU with its header
    (PS3.8 9.3.3). A context the AC does not mention counts as rejected; one accepted in
    a transfer syntax we never proposed is unusable. :class:`ProtocolError` when the
    PDU is malformed."""
    if len(data) < 6 + _FIXED_PART or data[0] != PduType.A_ASSOCIATE_AC:
        raise ProtocolError("A-ASSOCIATE-AC shorter than its fixed part")
    (length,) = struct.unpack_from(">I", data, 2)
    if length + 6 > len(data) or length < _FIXED_PART:
        raise ProtocolError("A-ASSOCIATE-AC length does not match its bytes")
    by_id = {p.context_id: p for p in proposed}
    negotiated: dict[int, NegotiatedContext] = {}
    peer_max = 0
    items = memoryview(data)[6 + _FIXED_PART : 6 + length]
    for item_type, value in _iter_items(items, "A-ASSOCIATE-AC"):
        if item_type == _CONTEXT_AC_ITEM:
            if len(value) < 4:
                raise ProtocolError("presentation context item shorter than 4 bytes")
            ours = by_id.get(value[0])
            if ours is None:
                continue
            result = value[2]
            ts = None
            for sub_type, sub_value in _iter_items(value[4:], "presentation context item"):
                if sub_type == _TRANSFER_SYNTAX_ITEM and ts is None:
                    ts = _uid(sub_value) or None
            if result == 0 and ts is not None and ts not in ours.transfer_syntaxes:
                result = 4  # accepted a syntax we never proposed: unusable
            negotiated[ours.context_id] = NegotiatedContext(
                ours.context_id, ours.abstract_syntax, ts, result
            )
        elif item_type == _USER_INFORMATION_ITEM:
            for sub_type, sub_value in _iter_items(value, "user information item"):
                if sub_type == _MAXIMUM_LENGTH_ITEM:
                    if len(sub_value) != 4:
                        raise ProtocolError("maximum length sub-item is not 4 bytes")
                    (peer_max,) = struct.unpack(">I", sub_value)
    for ours in proposed:  # contexts the AC does not mention count as rejected
        negotiated.setdefault(
            ours.context_id, NegotiatedContext(ours.context_id, ours.abstract_syntax, None, 2)
        )
    return negotiated, peer_max


class Rejection(NamedTuple):
    """An A-ASSOCIATE-RJ: result, source and reason codes, with their words."""

    result: int
    source: int
    reason: int

    @property
    def transient(self) -> bool:
        """True for "rejected-transient": the peer may accept a later request."""
        return self.result == 2

    @property
    def result_text(self) -> str:
        """The result in words."""
        return _RJ_RESULT.get(self.result, f"result code {self.result}")

    @property
    def source_text(self) -> str:
        """Who rejected, in words."""
        return _RJ_SOURCE.get(self.source, f"source code {self.source}")

    @property
    def reason_text(self) -> str:
        """Why, in words."""
        return _RJ_REASON.get((self.source, self.reason), f"reason code {self.reason}")


def decode_associate_rj(data: bytes) -> Rejection | None:
    """The codes of an A-ASSOCIATE-RJ PDU (with its header); None when it is too short."""
    if len(data) < 10:
        return None
    return Rejection(data[7], data[8], data[9])


def abort_reason(data: bytes) -> str:
    """The reason and source of an A-ABORT PDU (with its header), in words."""
    if len(data) < 10:
        return "no reason given"
    source, reason = data[8], data[9]
    src = _ABORT_SOURCE.get(source, f"source code {source}")
    why = _ABORT_REASON.get(reason, f"reason code {reason}") if source == 2 else "no reason given"
    return f"{why} (abort source: {src})"


def check_pdu_length(length: int, max_pdu: int) -> None:
    """Raise :class:`ProtocolError` when a PDU announces more than we accept: our
    ``max_pdu`` (0: unlimited, then up to 256 MiB), never less than 64 KiB for the PDUs
    of negotiation and release."""
    limit = _UNLIMITED_PDU_CAP if max_pdu == 0 else max(max_pdu, 64 * 1024) + 6
    if length > limit:
        raise ProtocolError(f"PDU of {length} bytes exceeds the negotiated maximum")


def iter_pdvs(body: memoryview) -> Iterator[tuple[int, int, memoryview]]:
    """Yield (context id, message control header, data) of each PDV in the body of a
    P-DATA-TF PDU (what follows its 6-byte header)."""
    pos = 0
    while pos + 6 <= len(body):
        (length,) = struct.unpack_from(">I", body, pos)
        if length < 2 or pos + 4 + length > len(body):
            raise ProtocolError("malformed PDV item in P-DATA-TF")
        yield body[pos + 4], body[pos + 5], body[pos + 6 : pos + 4 + length]
        pos += 4 + length
