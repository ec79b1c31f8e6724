"""DICOM Upper Layer PDUs (PS3.8 9.3): what the requestor sends and reads, as bytes.

* A-ASSOCIATE-RQ is encoded and A-ASSOCIATE-AC decoded with pynetdicom's PDU classes
  (:mod:`pynetdicom.pdu`), so the negotiation is pynetdicom's, byte for byte;
* A-ASSOCIATE-RJ and A-ABORT are decoded here, their reasons put into words;
* the fixed-size PDUs (A-RELEASE-RQ/-RP, A-ABORT) are constants;
* P-DATA-TF: :data:`P_DATA_HEADER` frames one PDV per PDU (see :mod:`.dimse`), and
  :func:`iter_pdvs` reads the PDVs of a received one.

Pure functions over bytes: no socket here (that is :mod:`.transport`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context

__all__ = [
    "APPLICATION_CONTEXT",
    "A_ABORT_PDU",
    "A_RELEASE_RP_PDU",
    "A_RELEASE_RQ_PDU",
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


@dataclass(frozen=True)
class ProposedContext:
    """One presentation context of an A-ASSOCIATE-RQ."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class NegotiatedContext:
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


def encode_associate_rq(
    calling: str, called: str, contexts: Sequence[ProposedContext], max_pdu: int
) -> bytes:
    """The A-ASSOCIATE-RQ proposing ``contexts``, announcing ``max_pdu`` (0: unlimited)
    as the largest PDU we accept."""
    prim = A_ASSOCIATE()
    prim.application_context_name = UID(APPLICATION_CONTEXT)
    prim.calling_ae_title = calling
    prim.called_ae_title = called
    items = []
    for proposed in contexts:
        cx = build_context(proposed.abstract_syntax, list(proposed.transfer_syntaxes))
        cx.context_id = proposed.context_id
        items.append(cx)
    prim.presentation_context_definition_list = items
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    impl_uid = ImplementationClassUIDNotification()
    impl_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    impl_name = ImplementationVersionNameNotification()
    impl_name.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    prim.user_information = [max_length, impl_uid, impl_name]
    return bytes(A_ASSOCIATE_RQ(prim).encode())


def decode_associate_ac(
    data: bytes, proposed: Sequence[ProposedContext]
) -> tuple[dict[int, NegotiatedContext], int]:
    """The peer's answer to each of our ``proposed`` contexts (by context id), and the
    largest PDU it accepts (0: unlimited). A context the AC does not mention counts as
    rejected; one accepted in a transfer syntax we never proposed is unusable."""
    ac = A_ASSOCIATE_AC()
    ac.decode(data)
    prim = ac.to_primitive()
    by_id = {p.context_id: p for p in proposed}
    negotiated: dict[int, NegotiatedContext] = {}
    for cx in prim.presentation_context_definition_results_list:
        ours = by_id.get(cx.context_id or -1)
        if ours is None:
            continue
        ts = cx.transfer_syntax[0] if cx.transfer_syntax else None
        result = int(cx.result) if cx.result is not None else 2
        if result == 0 and ts is not None and ts not in ours.transfer_syntaxes:
            result = 4  # accepted a syntax we never proposed: unusable
        negotiated[ours.context_id] = NegotiatedContext(
            ours.context_id, ours.abstract_syntax, str(ts) if ts else None, result
        )
    for ours in proposed:  # contexts the AC does not mention count as rejected
        negotiated.setdefault(
            ours.context_id, NegotiatedContext(ours.context_id, ours.abstract_syntax, None, 2)
        )
    return negotiated, int(prim.maximum_length_received or 0)


@dataclass(frozen=True)
class Rejection:
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
